"""What a data-parallel case costs against its replica count (issue 15), for one adapter per
framework: torch DDP (one gloo process per rank), flax.linen under jax.pmap (one forced CPU host
device per replica) and Keras 3 synchronized BatchNorm under MirroredStrategy (one logical CPU
device per replica).

Each adapter's real worker starts once (the timing of `bnspec run`); then, for every replica
count R, one case like ``bnspec.replicas.replica_case(rng, 0, replicas=R)`` (an even split,
float64, train-train-eval with gradients) but with a fixed shard of ``--shard`` samples, so the
work per replica stays the same and only R grows. The first call is timed on its own (tracing,
compilation, a new strategy or process group); then ``--repeat`` more calls, their median.
Reported: the round trip as the engine sees it (pickling both ways included), the worker's own
seconds in ``adapter.run``, the peak resident memory of the worker and its descendants (the DDP
ranks, the forkserver; sampled every 0.1 s while a call runs) over that R's calls, and whether
every result conforms to the adapter's declared profile (a timing of wrong runs is no timing).

    .venv/bin/python benchmarks/replica_scaling.py [--replicas 2 4 8] [--repeat 5] [--json out.json]

No target: this records how the cost grows, on a machine with 2 cores for 8 replicas.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from bnspec.case import Case, make_case  # noqa: E402
from bnspec.discovery import load_adapter_ref  # noqa: E402
from bnspec.tolerance import compare  # noqa: E402
from bnspec.worker import Worker, tree_rss_mb  # noqa: E402

ADAPTERS = {
    "torch_ddp": "bnspec.adapters.torch_ddp:TORCH_DDP",
    "flax_linen_pmap": "bnspec.adapters.jax_data_parallel:FLAX_LINEN_PMAP",
    "keras_tf_mirrored_sync": "bnspec.adapters.tf_data_parallel:KERAS_TF_MIRRORED_SYNC",
}


def scaling_case(rng: np.random.Generator, replicas: int, shard: int, channels: int, spatial: tuple[int, ...]) -> Case:
    """replica_case(rng, 0, replicas=R)'s trajectory and draws, with a fixed shape: R shards of
    ``shard`` samples each (replica_case draws 1-3 samples a shard, C and the spatial shape)."""
    shape = (replicas * shard, channels, *spatial)
    scale = (1, channels) + (1,) * len(spatial)
    xs = [rng.normal(0.0, 1.0, size=shape) * rng.uniform(0.5, 2.0, size=scale) for _ in range(3)]
    return make_case(
        xs, modes=["train", "train", "eval"], grad_outputs=[rng.normal(size=shape) for _ in range(3)],
        gamma=rng.normal(1.0, 0.5, channels), beta=rng.normal(0.0, 1.0, channels),
        running_mean=rng.normal(0.0, 1.0, channels), running_var=rng.uniform(0.5, 2.0, channels),
        eps=1e-3, momentum=0.25, dtype="float64", replicas=(shard,) * replicas,
        label=f"replica_scaling[R={replicas}]",
    )


def timed(worker: Worker, case: Case, semantics: Any) -> tuple[float, float, bool, str]:
    """One call: round-trip seconds, the worker's own seconds, conforms, the first mismatch."""
    t0 = time.perf_counter()
    result = worker.run(case, timeout=300.0)
    wall = time.perf_counter() - t0
    comparison = compare(case, semantics, result)
    note = "" if comparison.ok else comparison.describe().splitlines()[0][:300]
    return wall, float(result.meta.get("seconds", wall)), comparison.ok, note


def measure(name: str, ref: str, counts: list[int], repeat: int, shard: int, channels: int,
            spatial: tuple[int, ...], seed: int) -> list[dict[str, Any]]:
    adapter = load_adapter_ref(ref)
    semantics = adapter.declared_profile().semantics
    worker = Worker(adapter)
    rows: list[dict[str, Any]] = []
    try:
        worker.start()
        assert worker.proc is not None
        base = {"adapter": name, "profile": adapter.profile, "framework": adapter.framework,
                "version": adapter.framework_version(), "startup_s": round(worker.startup_seconds, 2),
                "idle_rss_mb": round(tree_rss_mb(worker.proc.pid))}
        for r in counts:
            case = scaling_case(np.random.default_rng([seed, r]), r, shard, channels, spatial)
            worker.peak_rss_mb = 0.0  # this R's peak only (Worker samples it while a call waits)
            first = timed(worker, case, semantics)
            rest = [timed(worker, case, semantics) for _ in range(repeat)]
            calls = [first, *rest]
            bad = [note for _, _, ok, note in calls if not ok]
            rows.append({**base, "replicas": r, "shape": list(case.steps[0].x.shape),
                         "first_s": round(first[0], 3), "first_worker_s": round(first[1], 3),
                         "median_s": round(statistics.median(w for w, _, _, _ in rest), 3) if rest else None,
                         "median_worker_s": round(statistics.median(s for _, s, _, _ in rest), 3) if rest else None,
                         "min_s": round(min(w for w, _, _, _ in rest), 3) if rest else None,
                         "repeat": repeat, "peak_rss_mb": round(worker.peak_rss_mb),
                         "conforms": f"{len(calls) - len(bad)}/{len(calls)}", "mismatch": bad[0] if bad else None})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        worker.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| adapter | R | global batch | start-up s | first call s | median s (worker's own) | min s "
             "| peak RSS MiB | conforms |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        med = "-" if row["median_s"] is None else f"{row['median_s']:.3f} ({row['median_worker_s']:.3f})"
        mins = "-" if row["min_s"] is None else f"{row['min_s']:.3f}"
        lines.append(f"| {row['adapter']} | {row['replicas']} | {'x'.join(map(str, row['shape']))} | "
                     f"{row['startup_s']:.1f} | {row['first_s']:.2f} | {med} | {mins} | "
                     f"{row['peak_rss_mb']:,} | {row['conforms']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapters", default=",".join(ADAPTERS))
    ap.add_argument("--replicas", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--repeat", type=int, default=5, help="calls after the first, per replica count")
    ap.add_argument("--shard", type=int, default=4, help="samples per replica")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--spatial", type=int, nargs="*", default=[2], help="spatial shape after (N, C)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for name in args.adapters.split(","):
        rows += measure(name, ADAPTERS[name], args.replicas, args.repeat, args.shard, args.channels,
                        tuple(args.spatial), args.seed)
    print()
    print(table(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(row["conforms"].split("/")[0] == row["conforms"].split("/")[1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
