"""False flags: how many of the pytest plugin's Hypothesis-drawn cases flag a correct implementation.

Two correct implementations of the ``pytorch`` profile are checked on N cases drawn (seeded) from
the plugin's own strategy (``bnspec.conformance.strategies.cases`` of each adapter's
capabilities), judged exactly as a plugin item judges one (``bnspec.conformance.plugin.judge_drawn``):

- ``torch_clone``: a NumPy clone of ``torch.nn.functional.batch_norm`` written as a port project
  would (tests/fixtures/torch_clone.py), no torch involved;
- ``torch``: bnspec's own adapter of ``torch.nn.BatchNorm*d`` (adapters/torch.py), when torch is
  installed.

Every case is one of: conforms; not applicable (the adapter cannot express it); known (a
registered divergence: torch rejects eps=0 in training); flagged, counted per regime (the
corner of the case: largest values, subnormals, NaN/Inf, a tiny eps, channels-last strides) and
the quantity that mismatched; ``--show`` prints each with its finding. A flagged case is a false
flag unless the implementation really departs from the profile there: torch's strided
half-precision paths, which sum in float16/bfloat16 (tests/test_false_flags.py).

    .venv/bin/python benchmarks/false_flags.py [--cases 1000] [--seed 0] [--adapters torch_clone,torch]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

import numpy as np  # noqa: E402

from bnspec.case import Case  # noqa: E402
from bnspec.conformance.plugin import Outcome, judge_drawn  # noqa: E402
from bnspec.discovery import load_adapter_ref  # noqa: E402
from bnspec.known import load as load_known  # noqa: E402
from bnspec.profiles import resolve  # noqa: E402

ROOT = Path(__file__).parents[1]
ADAPTERS = {
    "torch_clone": f"{ROOT}/tests/fixtures/torch_clone.py:ADAPTER",
    "torch": f"{ROOT}/adapters/torch.py:TORCH_MODULE",
}
# Each adapter's known-divergence registry: the clone's is a port project's own (it keeps torch's
# eps=0 rejection); torch's is bnspec's.
REGISTRIES = {"torch_clone": ROOT / "tests/fixtures/torch_clone_known.toml", "torch": None}


def drawn_cases(capabilities: Any, n: int, seed: int) -> list[Case]:
    """The first ``n`` cases the plugin's strategy draws for these capabilities from ``seed``.

    Hypothesis mixes literals of the loaded modules into its draws (tests/conftest.py says why
    the tests pin that pool): pinned empty here too, so the draws depend on the seed only."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis.internal.conjecture import providers

    from bnspec.conformance.strategies import cases

    if hasattr(providers, "_get_local_constants"):
        empty = providers.Constants()
        providers._get_local_constants = lambda: empty
    out: list[Case] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases(capabilities))
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:n]


def regime(case: Case) -> str:
    """A tag for the corner a case is in (for reading a false flag, not for judging)."""
    import ml_dtypes

    from bnspec.dtypes import np_dtype

    info = ml_dtypes.finfo(np_dtype(case.dtype))
    xs = np.concatenate([s.x.ravel() for s in case.steps])
    finite = xs[np.isfinite(xs)]
    tags = []
    if finite.size and np.max(np.abs(finite)) > float(info.max) / 64:
        tags.append("largest")
    if np.any((finite != 0) & (np.abs(finite) < float(info.smallest_normal))):
        tags.append("subnormal")
    if finite.size < xs.size:
        tags.append("nan/inf")
    if 0 < case.eps < 1e-30:
        tags.append("tiny eps")
    if case.layout != "channels_first":
        tags.append(case.layout)
    return "+".join(tags) or "ordinary"


def run(name: str, ref: str, n: int, seed: int, profile: str, known: list[Any], show: bool) -> dict[str, Any]:
    adapter = load_adapter_ref(ref)
    prof = resolve(profile)
    t0 = time.perf_counter()
    counts: collections.Counter[str] = collections.Counter()
    classes: collections.Counter[str] = collections.Counter()
    for i, case in enumerate(drawn_cases(adapter.capabilities, n, seed)):
        outcome: Outcome = judge_drawn(adapter, prof, case, known)
        counts[outcome.status] += 1
        if outcome.status == "flagged":
            tag = f"{regime(case)}: {outcome.kind}"
            classes[tag] += 1
            if show:
                print(f"  {name} #{i} [{tag}] {case.label}: {outcome.note.splitlines()[0][:200]}", flush=True)
    row = {"adapter": name, "profile": profile, "cases": n, "seed": seed, **{k: counts.get(k, 0) for k in (
        "conforms", "not_applicable", "known", "flagged")}, "flagged_by_regime": dict(sorted(classes.items())),
        "seconds": round(time.perf_counter() - t0, 1)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", default="pytorch")
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--known", type=Path, help="known-divergence registry (default: REGISTRIES)")
    ap.add_argument("--show", action="store_true", help="print every flagged case")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for name in args.adapters.split(","):
        if name == "torch":
            try:
                import torch  # noqa: F401
            except ImportError:
                print(json.dumps({"adapter": name, "skipped": "torch is not installed"}))
                continue
        known = load_known(args.known or REGISTRIES.get(name))
        rows.append(run(name, ADAPTERS.get(name, name), args.cases, args.seed, args.profile, known, args.show))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    if any(r["flagged"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
