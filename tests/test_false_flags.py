"""Issue 13: no correct implementation is flagged by the plugin's Hypothesis-drawn cases.

Two correct implementations of the pytorch profile, judged exactly as a plugin item judges a
drawn case (bnspec.conformance.plugin.judge_drawn): a NumPy clone of
torch.nn.functional.batch_norm written as a port project would (tests/fixtures/torch_clone.py),
and torch itself. benchmarks/false_flags.py runs the same at 1,000 cases per seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed

from bnspec.case import Case
from bnspec.conformance.plugin import judge_drawn
from bnspec.conformance.strategies import cases
from bnspec.discovery import load_adapter_ref
from bnspec.known import load as load_known
from bnspec.observe import observe
from bnspec.profiles import resolve

ROOT = Path(__file__).parents[1]
CLONE = f"{ROOT}/tests/fixtures/torch_clone.py:ADAPTER"
N = 300


def _drawn(capabilities: Any, n: int = N, seed: int = 0) -> list[Case]:
    """The first ``n`` cases the plugin's strategy draws for these capabilities (tests/conftest.py
    pins Hypothesis's pool of local constants: the draws depend on the seed only)."""
    out: list[Case] = []

    @hseed(seed)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases(capabilities))
    def collect(case: Case) -> None:
        out.append(case)

    collect()
    return out[:n]


def _flagged(ref: str, registry: Path | None) -> tuple[list[tuple[Case, str]], int]:
    adapter = load_adapter_ref(ref)
    profile, known = resolve("pytorch"), load_known(registry)
    flagged, judged = [], 0
    for case in _drawn(adapter.capabilities):
        outcome = judge_drawn(adapter, profile, case, known)
        judged += outcome.status != "not_applicable"
        if outcome.status == "flagged":
            flagged.append((case, outcome.note))
    return flagged, judged


def test_the_numpy_clone_of_torch_is_flagged_by_no_drawn_case():
    flagged, judged = _flagged(CLONE, ROOT / "tests/fixtures/torch_clone_known.toml")
    assert judged >= N * 0.9
    assert not flagged, "\n".join(f"{c.label}: {note}" for c, note in flagged[:5])


def test_torch_is_flagged_only_where_its_strided_half_precision_paths_round_in_half_precision():
    """torch's batch_norm takes its TensorIterator paths for an input that is neither contiguous
    nor channels-last (rank 3 with channels-last strides), or whose gradient's memory format
    differs from the input's: there it sums in the half dtype (dbeta is the bfloat16-rounded
    sum, the variance is taken around the float16-rounded mean), against the pytorch profile's
    float32 reductions. Nothing else is flagged."""
    flagged, judged = _flagged("bnspec.adapters.torch:TORCH_MODULE", None)
    assert judged >= N * 0.9
    for case, note in flagged:
        assert case.layout == "channels_last" and case.dtype in ("float16", "bfloat16"), f"{case.label}: {note}"


def test_the_clone_is_faithful_to_torch_in_float64():
    """y and the running statistics of every drawn float64 case that both run agree to 5e-15 of
    their largest magnitude (torch.nn.functional.batch_norm, CPU), NaN and Inf in place."""
    clone = load_adapter_ref(CLONE)
    torch_functional = load_adapter_ref("bnspec.adapters.torch:TORCH_FUNCTIONAL")
    compared = 0
    for case in _drawn(clone.capabilities):
        if case.dtype != "float64":
            continue
        ours, theirs = observe(clone, case), observe(torch_functional, case)
        assert (ours.raised is None) == (theirs.raised is None), f"{case.label}: {ours.raised} / {theirs.raised}"
        if ours.result is None or theirs.result is None:
            continue
        compared += 1
        for i, (a_step, b_step) in enumerate(zip(ours.result.steps, theirs.result.steps, strict=True)):
            for q in ("y", "running_mean", "running_var"):
                a, b = getattr(a_step, q), getattr(b_step, q)
                if a is None:
                    assert b is None
                    continue
                fin = np.isfinite(b)
                assert np.array_equal(np.isfinite(a), fin) and np.array_equal(a[~fin], b[~fin], equal_nan=True)
                if fin.any():
                    scale = max(float(np.abs(b[fin]).max()), 1e-300)
                    assert float(np.abs(a[fin] - b[fin]).max()) <= 5e-15 * scale, f"{case.label} step {i} {q}"
    assert compared >= 30


def test_a_gradient_that_cancels_keeps_the_error_of_r_rounded_into_the_normalize_dtype():
    """dy = xhat: dx = gamma r (dy - mean(dy) - xhat mean(dy xhat)) cancels to 0 exactly. With r
    rounded into bfloat16 (the parameters', and so the normalize dtype, as torch and the clone
    hold invstd) the two xhat factors no longer cancel: dx is off by 2 u_n r |xhat| mean|dy xhat|,
    which is not proportional to dx (a drawn case flagged both torch and the clone)."""
    from bnspec.case import make_case
    from bnspec.judging import judge

    x = np.array([1.0, -1.25, -0.5, -1.125, 0.125, 0.75, 2.0, -0.875]).reshape(8, 1) * 1e17
    mean, std = x.mean(), x.std()
    case = make_case(x, modes="train", grad_outputs=[(x - mean) / std], gamma=None, beta=None,
                     dtype="bfloat16", track_running_stats=False, eps=1e-2)
    clone = load_adapter_ref(CLONE)
    obs = observe(clone, case)
    assert obs.result is not None and np.abs(obs.result.steps[0].dx).max() > 0  # not 0: r was rounded
    assert judge(case, resolve("pytorch").semantics, obs).ok
