"""Hypothesis strategies for BatchNorm cases, named after what they produce.

Each strategy takes the adapter's :class:`~bnspec.adapter.Capabilities` (or what it needs of
them), so :func:`cases` only draws what the adapter can run: ``Adapter.check_supported``
accepts every case it produces. Every draw is labelled, so a failing example reads as a list of
named choices. Examples stay small (at most 64 values per batch, 12 steps) and every choice
shrinks toward the plain case: one training step, one channel, one value, eps 1e-5, momentum
0.1, unit scale, no offset, finite values.

The draws reach the corners that separate the knobs: one value per channel (N·spatial = 1),
large offsets relative to the spread (|mean|/std of 1e4 and beyond, where a one-pass variance
cancels), constant channels, tiny and huge scales, values at the edge of the range the spec
defines and subnormal ones, NaN and ±Inf, eps = 0 and eps below the fused kernels' 1.001e-5
floor, momentum 0 and 1 and None (cumulative), zero and negative gamma, affine off, frozen and
eval steps mixed with training.

They stay where the spec defines a result beyond "the exact value, or NaN/Inf"
(bnspec.bounds): the largest magnitudes are those whose batch sums and sums of squares still
fit the dtype the statistics are computed in (the wider of the input's and float32:
:func:`largest_defined`), not the dtype's own largest value, where a sum overflows in one order
of operations and not in another; a continuous eps or momentum is a normal number of the
dtypes that hold it (eps >= float32's smallest normal, momentum and 1 - momentum >= float16's),
not a value that rounds to 0 there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bnspec.adapter import Capabilities
from bnspec.case import Case, Layout, Mode, make_case
from bnspec.dtypes import DTYPES, more_precise, np_dtype, round_to

MAX_VALUES = 64  # per batch
MAX_STEPS = 12
MAX_CHANNELS = 4

# Ratios |mean| / spread; standardized values lie in [-4, 4], so 1e5 and 1e8 give |mean|/std
# well past 1e4 (float64's one-pass variance loses every digit near 1e8).
_OFFSET_RATIOS = (0.0, 1.0, 1e2, 1e4, 1e5, 1e8)
# Scale exponents (powers of two) of ordinary data per dtype: tiny and huge, but leaving room
# below largest_defined for the offset and the spread.
_SCALE_EXPONENTS = {"float16": 10, "bfloat16": 56, "float32": 56, "float64": 400}
_SPECIAL_VALUES = (float("nan"), float("inf"), float("-inf"))


@dataclass(frozen=True)
class PlannedStep:
    """One call in a step plan: its mode, whether the layer is frozen, whether dy is given."""

    mode: Mode = "train"
    frozen: bool = False
    gradient: bool = False


_cached = functools.lru_cache(maxsize=None)  # strategies are immutable: build each once


@_cached
def _fixed_lists(element: st.SearchStrategy[Any], size: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(element, min_size=size, max_size=size)


_FLAGS = st.booleans()
_RATIOS = st.sampled_from(_OFFSET_RATIOS)
_SIGNS = st.sampled_from((1.0, -1.0))
_REGIMES = st.sampled_from(("ordinary", "largest", "smallest"))
_GAMMAS = st.one_of(st.sampled_from((1.0, 0.0, -1.0, 0.5, -2.5)), st.floats(-8.0, 8.0, allow_nan=False))
_BETAS = st.one_of(st.sampled_from((0.0, 1.0, -3.0)), st.floats(-8.0, 8.0, allow_nan=False))
_RUNNING_MEANS = st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_nan=False))
_RUNNING_VARS = st.one_of(st.sampled_from((1.0, 0.0, 1e-3, 1e4)), st.floats(0.0, 1e3, allow_nan=False))
# Continuous eps and momentum: normal numbers of the dtypes that hold them (eps is added in the
# compute dtype, float32 at the narrowest; the momentum blends in the state dtype, float16 at the
# narrowest), where a value that rounds to 0 leaves the result defined only up to NaN.
_EPS_MIN = 2.0**-126  # float32's smallest normal
_MOMENTUM_MIN = 2.0**-14  # float16's smallest normal
_EPS = st.one_of(st.sampled_from((1e-5, 0.0, 1e-3, 1.001e-5, 1e-6, 1e-10)), st.floats(_EPS_MIN, 0.1))
_MOMENTA = (st.sampled_from((0.1, 0.0, 1.0, 0.01, 0.5, 0.99)), st.floats(_MOMENTUM_MIN, 1.0 - _MOMENTUM_MIN))


@_cached
def _finfo(dtype: str) -> Any:
    import ml_dtypes

    return ml_dtypes.finfo(np_dtype(dtype))


@_cached
def largest_defined(dtype: str) -> float:
    """The largest |x| a batch of ``dtype`` is drawn with: up to MAX_VALUES values per channel
    whose sum and sum of squared deviations (at most (2|x|)^2 each) stay below a quarter of the
    largest value of the dtype the statistics are computed in (the wider of ``dtype`` and
    float32), far from where rounding could carry them to inf; the dtype's own largest value
    where that is smaller (float16: its whole range)."""
    compute = more_precise(dtype, "float32")
    room = float(_finfo(compute).max) / 4 / MAX_VALUES
    return min(float(_finfo(dtype).max), math.sqrt(room) / 2, room)


def momentum_choices(caps: Capabilities) -> tuple[float | None, ...] | None:
    """The momentum values an adapter takes: None for any, else the one fixed value
    (``momentum_values="fixed:<value>"`` for ops that have no momentum)."""
    if not caps.momentum_values.startswith("fixed:"):
        return None
    text = caps.momentum_values.split(":", 1)[1].strip()
    return (None,) if text.lower() == "none" else (float(text),)


@_cached
def dtypes(caps: Capabilities) -> st.SearchStrategy[str]:
    """The input dtypes the adapter takes, most precise first (the shrink target)."""
    allowed = [d for d in DTYPES if d in caps.dtypes]
    if not allowed:
        raise ValueError(f"capabilities allow no dtype; available: {', '.join(DTYPES)}")
    return st.sampled_from(allowed)


@_cached
def layouts(caps: Capabilities) -> st.SearchStrategy[Layout]:
    return st.sampled_from(tuple(caps.layouts))  # type: ignore[arg-type]


@_cached
def shapes(caps: Capabilities) -> st.SearchStrategy[tuple[int, ...]]:
    """(N, C, *spatial) of a rank the adapter takes, at most 64 values. Shrinks to one value
    per channel (N·spatial = 1), which training with the unbiased estimator must reject."""
    ranks = sorted(r for r in caps.ranks if 2 <= r <= 5)
    if not ranks:
        raise ValueError(f"capabilities allow no rank in 2-5: {caps.ranks}")
    return _shapes(tuple(ranks))


@_cached
def _extents(top: int) -> st.SearchStrategy[int]:
    return st.integers(1, max(1, top))


@st.composite
def _shapes(draw: Any, ranks: tuple[int, ...]) -> tuple[int, ...]:
    rank = draw(_sampled(ranks), label="rank")
    c = draw(_extents(MAX_CHANNELS), label="channels")
    budget = MAX_VALUES // c
    n = draw(_extents(min(8, budget)), label="batch size")
    spatial: list[int] = []
    for _ in range(rank - 2):
        room = budget // (n * math.prod(spatial))
        spatial.append(draw(_extents(min(4, room)), label="spatial extent"))
    return (n, c, *spatial)


@_cached
def _sampled(options: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    return st.sampled_from(options)


@functools.cache
def _standardized(shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    """Values in [-4, 4]: either a few chosen elements over a fill value (each a choice of its
    own, so shrinking zeroes them one by one: a constant channel with outliers), or Gaussian
    noise from a drawn seed (one choice for the whole array: ordinary data, cheap to replay)."""
    chosen = hnp.arrays(np.float64, shape, elements=st.floats(-4.0, 4.0, allow_nan=False, allow_subnormal=False))
    noise = st.integers(0, 2**32 - 1).map(
        lambda seed: np.clip(np.random.default_rng(seed).standard_normal(shape), -4.0, 4.0))
    return st.one_of(chosen, noise)


def _per_channel(shape: tuple[int, ...], values: list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(1, shape[1], *([1] * (len(shape) - 2)))


@_cached
def batches(shape: tuple[int, ...], dtype: str, *, nonfinite: bool = True) -> st.SearchStrategy[np.ndarray]:
    """One batch of ``shape``, exactly representable in ``dtype`` (as float64).

    Regimes: ordinary data (a per-channel offset of up to 1e8 spreads, a spread from tiny to
    huge, some channels constant), data at the largest magnitudes the spec defines a result for
    (:func:`largest_defined`), data at the dtype's smallest normal and subnormal values; with
    ``nonfinite``, a few elements set to NaN or ±Inf."""
    return _batches(tuple(shape), dtype, nonfinite)


@_cached
def _exponents(top: int) -> st.SearchStrategy[int]:
    return st.integers(-top, top)


@_cached
def _specials(size: int) -> st.SearchStrategy[list[tuple[int, float]]]:
    return st.lists(st.tuples(st.integers(0, size - 1), st.sampled_from(_SPECIAL_VALUES)), max_size=2)


@st.composite
def _batches(draw: Any, shape: tuple[int, ...], dtype: str, nonfinite: bool) -> np.ndarray:
    c = shape[1]
    info = _finfo(dtype)
    z = draw(_standardized(shape), label="standardized values")
    constant = draw(_fixed_lists(_FLAGS, c), label="constant channels")
    z = np.where(_per_channel(shape, [float(k) for k in constant]) > 0, 0.0, z)
    regime = draw(_REGIMES, label="regime")
    if regime == "ordinary":
        top = _SCALE_EXPONENTS[dtype]
        exponent = draw(_exponents(top), label="spread exponent (base 2)")
        spread = 2.0**exponent
        ratios = draw(_fixed_lists(_RATIOS, c), label="offset / spread per channel")
        signs = draw(_fixed_lists(_SIGNS, c), label="offset sign per channel")
        # Keep |offset| + 4 spread within largest_defined, so a huge offset in a narrow dtype
        # stays in the defined range (it rounds the spread away instead: a constant channel).
        limit = largest_defined(dtype) / spread - 4.0
        offsets = [s * min(r, max(limit, 0.0)) * spread for r, s in zip(ratios, signs, strict=True)]
        x = z * spread + _per_channel(shape, offsets)
    elif regime == "largest":
        x = z / 4.0 * largest_defined(dtype)  # the edge of the defined range
    else:
        tiny = float(info.smallest_normal)
        x = z * tiny  # rounds to subnormals (or zero where the dtype has none to spare)
    x = round_to(x, dtype)
    if nonfinite:
        specials = draw(_specials(x.size), label="non-finite elements (flat index, value)")
        flat = x.reshape(-1).copy()
        for index, value in specials:
            flat[index] = value
        x = flat.reshape(shape)
    return x


@_cached
def hyperparameters(caps: Capabilities) -> st.SearchStrategy[dict[str, Any]]:
    """``eps``, ``momentum`` and ``track_running_stats`` as keyword arguments of make_case.

    eps includes 0 and values below the fused kernels' 1.001e-5 floor; momentum (the batch
    statistic's weight) covers [0, 1], and None (the cumulative average) only where the
    adapter has it, or only the adapter's one value where it has no momentum."""
    fixed = momentum_choices(caps)
    if fixed is not None:
        momenta: st.SearchStrategy[float | None] = st.sampled_from(fixed)
    else:
        momenta = st.one_of(*_MOMENTA, *([st.none()] if caps.cumulative_momentum else []))
    tracking = st.sampled_from((True, False)) if caps.untracked else st.just(True)
    return _hyperparameters(momenta, tracking)


@st.composite
def _hyperparameters(
    draw: Any, momenta: st.SearchStrategy[float | None], tracking: st.SearchStrategy[bool]
) -> dict[str, Any]:
    return {"eps": draw(_EPS, label="eps"), "momentum": draw(momenta, label="momentum"),
            "track_running_stats": draw(tracking, label="track_running_stats")}


@_cached
def affine_parameters(
    c: int, dtype: str, *, affine_off: bool = True
) -> st.SearchStrategy[tuple[np.ndarray | None, np.ndarray | None]]:
    """(gamma, beta) in ``dtype``, zero and negative scales included; (None, None) for affine
    off where the adapter has it."""
    return _affine_parameters(c, dtype, affine_off)


@st.composite
def _affine_parameters(
    draw: Any, c: int, dtype: str, affine_off: bool
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if affine_off and draw(_FLAGS, label="affine off"):
        return None, None
    gamma = draw(_fixed_lists(_GAMMAS, c), label="gamma")
    beta = draw(_fixed_lists(_BETAS, c), label="beta")
    return round_to(np.array(gamma), dtype), round_to(np.array(beta), dtype)


@_cached
def running_statistics(c: int, dtype: str) -> st.SearchStrategy[tuple[np.ndarray, np.ndarray]]:
    """Initial (running_mean, running_var) in ``dtype``; the variance includes 0."""
    return _running_statistics(c, dtype)


@st.composite
def _running_statistics(draw: Any, c: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    mean = draw(_fixed_lists(_RUNNING_MEANS, c), label="initial running_mean")
    var = draw(_fixed_lists(_RUNNING_VARS, c), label="initial running_var")
    return round_to(np.array(mean), dtype), round_to(np.array(var), dtype)


@_cached
def planned_steps(caps: Capabilities) -> st.SearchStrategy[PlannedStep]:
    """One call: training, eval or frozen training as the adapter allows, with an upstream
    gradient where it computes gradients."""
    kinds: list[PlannedStep] = []
    if caps.train_steps:
        kinds.append(PlannedStep("train"))
    if caps.eval_steps:
        kinds.append(PlannedStep("eval"))
    if caps.train_steps and caps.frozen:
        kinds.append(PlannedStep("train", frozen=True))
    if not kinds:
        raise ValueError("capabilities allow neither training nor eval steps")
    return _planned_steps(tuple(kinds), caps.gradients)


@st.composite
def _planned_steps(draw: Any, kinds: tuple[PlannedStep, ...], gradients: bool) -> PlannedStep:
    kind = draw(_sampled(kinds), label="step kind")
    gradient = gradients and draw(_FLAGS, label="with dy")
    return PlannedStep(kind.mode, kind.frozen, gradient)


@_cached
def step_plans(caps: Capabilities, *, max_steps: int = MAX_STEPS) -> st.SearchStrategy[tuple[PlannedStep, ...]]:
    """1 to ``max_steps`` calls mixing training, eval and frozen-training steps."""
    return st.lists(planned_steps(caps), min_size=1, max_size=max_steps).map(tuple)


@_cached
def param_dtypes(dtype: str) -> st.SearchStrategy[str]:
    """The parameters' dtype: the input's, or float32 beside float16/bfloat16 input (mixed
    precision, as Keras and torch's CPU kernel hold them)."""
    return st.sampled_from((dtype, "float32")) if dtype in ("float16", "bfloat16") else st.just(dtype)


@_cached
def _steps(
    caps: Capabilities, shape: tuple[int, ...], dtype: str, nonfinite: bool, max_steps: int
) -> st.SearchStrategy[list[tuple[PlannedStep, np.ndarray, np.ndarray | None]]]:
    # Each step's kind, batch and dy are one list element, so shrinking deletes a step whole.
    return st.lists(_step(planned_steps(caps), shape, dtype, nonfinite), min_size=1, max_size=max_steps)


@st.composite
def _step(
    draw: Any, plans: st.SearchStrategy[PlannedStep], shape: tuple[int, ...], dtype: str, nonfinite: bool
) -> tuple[PlannedStep, np.ndarray, np.ndarray | None]:
    planned = draw(plans, label="planned step")
    x = draw(batches(shape, dtype, nonfinite=nonfinite), label="batch")
    dy = draw(_standardized(shape), label="dy") if planned.gradient else None
    return planned, x, dy


@_cached
def cases(caps: Capabilities, *, nonfinite: bool = True, max_steps: int = MAX_STEPS) -> st.SearchStrategy[Case]:
    """A valid :class:`Case` that ``Adapter(..., capabilities=caps).check_supported`` accepts."""
    return _cases(caps, nonfinite, max_steps)


@st.composite
def _cases(draw: Any, caps: Capabilities, nonfinite: bool, max_steps: int) -> Case:
    dtype = draw(dtypes(caps), label="dtype")
    param_dtype = draw(param_dtypes(dtype), label="param_dtype")
    layout = draw(layouts(caps), label="layout")
    shape = draw(shapes(caps), label="shape")
    steps = draw(_steps(caps, shape, dtype, nonfinite, max_steps), label="steps")
    gamma, beta = draw(affine_parameters(shape[1], param_dtype, affine_off=caps.affine_off),
                       label="gamma, beta")
    running: dict[str, np.ndarray] = {}
    if caps.initial_running:
        running_mean, running_var = draw(running_statistics(shape[1], param_dtype), label="running statistics")
        running = {"running_mean": running_mean, "running_var": running_var}
    hyper = draw(hyperparameters(caps), label="hyperparameters")
    return make_case(
        [x for _, x, _ in steps], modes=[p.mode for p, _, _ in steps],
        frozen=[p.frozen for p, _, _ in steps], grad_outputs=[dy for _, _, dy in steps],
        gamma=gamma, beta=beta, dtype=dtype, param_dtype=param_dtype, layout=layout,
        label=f"drawn: {len(steps)} step(s) of {shape} {dtype}", **running, **hyper,
    )


__all__ = [
    "PlannedStep",
    "affine_parameters",
    "batches",
    "cases",
    "dtypes",
    "hyperparameters",
    "largest_defined",
    "layouts",
    "momentum_choices",
    "param_dtypes",
    "planned_steps",
    "running_statistics",
    "shapes",
    "step_plans",
]
