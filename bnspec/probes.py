"""The fingerprint's probes and decisions: data, no inference (that is :mod:`bnspec.fingerprint`).

Each probe is one small case built so that the candidate values of a few knobs give results that
differ by orders of magnitude more than the tolerance model allows (``tests/test_fingerprint.py``
checks that separation on the reference). A *decision* names the knobs it settles jointly, the
probes and the quantities it reads. Which probe decides a knob is knob metadata
(``bnspec.semantics.KNOBS[k].probe``); a test checks that it is one of its decision's probes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Result, make_case

# eps 2^-10, 2^-20 and momentum 1/8 are exact in float32, so ONNX's float32 attributes carry
# them in a float64 graph and 1 - m is exact for the frameworks that weight the running value.
_EPS = 2.0**-10
_MOMENTUM = 0.125

RUNNING = ("running_mean", "running_var")
Use = tuple[str, tuple[str, ...], tuple[int, ...] | None]  # probe, quantities, steps (None: all)


@dataclass(frozen=True)
class Probe:
    name: str
    doc: str
    build: Callable[[np.random.Generator, str, str, int], Case]  # rng, dtype, param dtype, rank
    variants: tuple[tuple[str, str], ...] = (("float64", "float64"), ("float32", "float32"))
    may_raise: bool = False  # the framework raising is itself the observation


@dataclass(frozen=True)
class Decision:
    knobs: tuple[str, ...]
    uses: tuple[Use, ...]
    # The tightest consistent setting wins: these numerics knobs widen the tolerance, so a looser
    # setting accepts whatever a tighter one does. (The dtype knobs are numerics too, but a
    # reported dtype is read exactly.)
    numerics: bool = False
    # Non-finite values must match in place: the tolerance model treats a bound that is itself
    # NaN (an expected NaN running variance) as unconstrained, which would accept any value.
    exact_nonfinite: bool = False
    # Among equally tight settings, the value the probes' results point to (by probe name).
    tie_break: Callable[[Mapping[str, Result]], Any] | None = None


# -- the builders: data with a known batch mean and biased variance per channel --
def _batch(rng: np.random.Generator, n: int, c: int, loc: float, spread: float) -> np.ndarray:
    """n values per channel with mean ~loc*(1 + k/8) and biased std ~spread*(1 + k/4)."""
    z = rng.normal(0.0, 1.0, (n, c))
    if n > 1:
        z = (z - z.mean(axis=0)) / z.std(axis=0)
    else:
        z[:] = 0.0
    k = np.arange(c)
    return (loc * (1 + k / 8) + 0.25 * rng.normal(0, 1, c) * (n == 1)) + z * spread * (1 + k / 4)


def _ranked(x: np.ndarray, rank: int) -> np.ndarray:
    return x.reshape(x.shape + (1,) * (rank - 2))


def _case(xs: Sequence[np.ndarray], rank: int, dtype: str, param_dtype: str, label: str,
          **kw: Any) -> Case:
    kw.setdefault("eps", _EPS)
    kw.setdefault("momentum", _MOMENTUM)
    return make_case([_ranked(x, rank) for x in xs], dtype=dtype, param_dtype=param_dtype,
                     label=label, **kw)


def _ema_trajectory(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 2, 4, 5.0, 1.0), _batch(rng, 2, 4, -3.0, 2.0), _batch(rng, 2, 4, 0.5, 1.0)]
    return _case(xs, rank, dt, pdt, "ema_trajectory", modes=["train", "train", "eval"],
                 running_mean=np.array([1.0, -1.0, 0.5, 2.0]),
                 running_var=np.array([2.0, 0.5, 1.0, 3.0]))


def _eps_placement(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # Running statistics near the batch's, so the gap shows whichever statistics normalize.
    return _case([_batch(rng, 8, 4, 1.0, 0.1)], rank, dt, pdt, "eps_placement", eps=0.5,
                 running_mean=np.ones(4), running_var=np.full(4, 0.01))


def _normalize_var(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 2, 4, 2.0, 1.0)], rank, dt, pdt, "normalize_var")


def _eps_floor(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 0.0, 3e-3)], rank, dt, pdt, "eps_floor", eps=2.0**-20,
                 running_var=np.full(4, 1e-5))


def _train_stats(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 8, 4, 4.0, 2.0), _batch(rng, 8, 4, -2.0, 0.5)]
    return _case(xs, rank, dt, pdt, "train_stats", modes=["train", "train"])


def _frozen(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 8, 4, 3.0, 2.0), _batch(rng, 8, 4, -1.0, 0.5), _batch(rng, 8, 4, 0.0, 1.0)]
    return _case(xs, rank, dt, pdt, "frozen", modes=["train", "train", "eval"],
                 frozen=[False, True, False])


def _single_value(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    xs = [_batch(rng, 1, 4, 1.0, 0.0), _batch(rng, 1, 4, 0.0, 0.0)]
    return _case(xs, rank, dt, pdt, "single_value", modes=["train", "eval"],
                 running_var=np.full(4, 2.0))


def _large_offset(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # mean/std 1e4 in float32 (1e8 in float64): E[x^2] - E[x]^2 loses every digit, and over 32
    # channels about half come out negative unless clamped.
    offset = 1e4 if dt == "float32" else 1e8
    x = offset + rng.normal(0.0, 1.0, (8, 32))
    return _case([x, offset + rng.normal(0.0, 1.0, (8, 32))], rank, dt, pdt, "large_offset",
                 modes=["train", "eval"], running_mean=np.full(32, offset))


def _half_precision(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # Values on the input dtype's grid near 64 (a float16 sum of their squares stays finite)
    # whose exact batch mean sits 3/8 of a grid step off it: a mean rounded to the input dtype
    # is off by ~0.1 std, while reductions and normalization in float32 are exact to 1e-7.
    loc, grid = 64.0, (2.0**-4 if dt == "float16" else 0.5)
    x = loc + np.round(_batch(rng, 8, 4, 0.0, 4 * grid) / grid) * grid
    residual = (x.sum(axis=0) / 8 - 3 * grid / 8) % grid
    x[-1] -= residual * 8  # a multiple of grid/8 times 8: stays on the grid
    return _case([x], rank, dt, pdt, "half_precision", momentum=0.5,
                 running_mean=np.full(4, loc), running_var=np.full(4, 4.0))


def _half_large(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # 4096 values per channel near 24 on the input dtype's grid: their sum (~98,000) is past
    # float16's largest finite value (65,504), so reductions accumulated in float16 overflow
    # (inf statistics, NaN output) where a float32 accumulator is exact to ~1e-7. The small
    # half_precision probe cannot show the accumulation dtype; this one can.
    grid = 2.0**-5 if dt == "float16" else 2.0**-3
    x = 24.0 + np.round(_batch(rng, 4096, 2, 0.0, 1.0) / grid) * grid
    return _case([x], rank, dt, pdt, "half_large", momentum=0.5,
                 running_mean=np.full(2, 24.0), running_var=np.full(2, 1.0))


def _ema_counter(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # ema_trajectory from a layer that has already counted 2 updates (torch's
    # num_batches_tracked, an EMA's step count): a debias reads 1 - decay^(2 + t), a first-update
    # copy does not happen, a cumulative average weighs 1/(2 + t). An implementation that
    # ignores the loaded counter shows here and not on a fresh layer. Momentum 1/2 is its own
    # mirror image, so the debias of a loaded state (3/4) is as visible in either convention.
    case = _ema_trajectory(rng, dt, pdt, rank)
    return _case([s.x.reshape(s.x.shape[:2]) for s in case.steps], rank, dt, pdt, "ema_counter",
                 modes=["train", "train", "eval"], running_mean=case.running_mean,
                 running_var=case.running_var, momentum=0.5, counter=2)


def _float64_compute(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 10.0, 1.0), _batch(rng, 8, 4, 10.0, 1.0)], rank, dt, pdt,
                 "float64_compute", modes=["train", "eval"])


def _mixed_params(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _case([_batch(rng, 8, 4, 1.0, 1.0), _batch(rng, 8, 4, 1.0, 1.0)], rank, dt, pdt,
                 "mixed_params", modes=["train", "eval"])


# A constant channel equal to its running mean: centered (x - mean) s + beta is beta exactly;
# folded x s + (beta - mean s) keeps the roundings of the two large products, ~u |mean s|.
# gamma, beta and the variances are exact in float32 and known to the tie-break below. beta
# carries bits below the spacing of mean s (2^-9 to 2^-8 here), so that beta - mean s is rounded
# even where an unfused x s + shift would otherwise cancel back to beta exactly.
AFFINE_CHANNELS, AFFINE_LOC = 32, 3e4
AFFINE_BETA = np.arange(AFFINE_CHANNELS) / 8 - 2 + (2 * np.arange(AFFINE_CHANNELS) + 1) * 2.0**-12


def _affine_form(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    k = np.arange(AFFINE_CHANNELS)
    return _case([np.full((8, AFFINE_CHANNELS), AFFINE_LOC)], rank, dt, pdt, "affine_form",
                 modes=["eval"], running_mean=np.full(AFFINE_CHANNELS, AFFINE_LOC),
                 running_var=0.5 + k / 32, gamma=1 + k / 16, beta=AFFINE_BETA)


_HALF = (("float16", "float32"), ("float16", "float16"), ("bfloat16", "float32"),
         ("bfloat16", "bfloat16"))
# -- data-parallel: cases split into replica shards (only a data-parallel adapter runs them) --
def _replicated(rng: np.random.Generator, dt: str, pdt: str, rank: int, split: tuple[int, ...], label: str,
                loc: float = 2.0, grads: bool = False) -> Case:
    """Two training steps, then eval, on one split: the shards' statistics part by orders of
    magnitude more than roundoff (each shard its own centre and spread)."""
    def batch() -> np.ndarray:
        return np.concatenate([_batch(rng, k, 2, loc * (1 + r), 0.5 + r) for r, k in enumerate(split)])

    n = sum(split)
    xs = [batch() for _ in range(3)]
    dys = [_ranked(rng.normal(0.0, 1.0, (n, 2)), rank) if grads else None for _ in xs]
    return _case(xs, rank, dt, pdt, label, modes=["train", "train", "eval"], grad_outputs=dys,
                 gamma=np.array([1.5, -0.75]), beta=np.array([0.25, -0.5]), running_mean=np.array([1.0, -1.0]),
                 running_var=np.array([2.0, 0.5]), replicas=split)


def _replica_uneven(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # counts 5, 3, 2: count and equal weights part; local n/(n-1) 1.25, 1.5, 2 against 10/9
    return _replicated(rng, dt, pdt, rank, (5, 3, 2), "replica_uneven")


def _replica_even(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # for an engine that takes equal shards only (no mask): weights agree, the rest still parts
    return _replicated(rng, dt, pdt, rank, (3, 3, 3), "replica_even")


def _replica_gradients(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # an adapter with a mask takes the uneven split; one without, replica_even's
    return _replicated(rng, dt, pdt, rank, (5, 3, 2), "replica_gradients", grads=True)


def _replica_gradients_even(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    return _replicated(rng, dt, pdt, rank, (3, 3, 3), "replica_gradients_even", grads=True)


def _replica_offset(rng: np.random.Generator, dt: str, pdt: str, rank: int) -> Case:
    # mean/std 1e4 in float32 over two even shards: a combined E[x^2] - mean^2 cancels
    xs = [1e4 + rng.normal(0.0, 1.0, (8, 8)) for _ in range(2)]
    return _case(xs, rank, dt, pdt, "replica_offset", modes=["train", "eval"], running_mean=np.full(8, 1e4),
                 replicas=(4, 4))


PROBES: dict[str, Probe] = {p.name: p for p in [
    Probe("ema_trajectory", "two training steps on batches of 2 from loaded running statistics, "
          "then eval: whether they update, momentum convention, first update, debias, "
          "running-variance estimator "
          "(n/(n-1) = 2), eval statistics", _ema_trajectory),
    Probe("eps_placement", "eps 0.5 on a variance of 0.01: sqrt(v+eps) 0.71 vs sqrt(v)+eps 0.6",
          _eps_placement),
    Probe("normalize_var", "one training step on batches of 2: the unbiased variance is twice "
          "the biased one", _normalize_var),
    Probe("eps_floor", "eps 2^-20 on a variance near 1e-5: a 1.001e-5 floor doubles v+eps",
          _eps_floor),
    Probe("train_stats", "two training steps with different batches: the second is normalized "
          "by its own statistics or by the blended running ones", _train_stats),
    Probe("frozen", "train, frozen train, eval: what a frozen layer normalizes with",
          _frozen),
    Probe("single_value", "one value per channel in training: error or a defined result",
          _single_value, may_raise=True),
    Probe("large_offset", "mean/std 1e4 in float32 over 32 channels: two-pass exact, one-pass "
          "cancels (negative variances unless clamped)", _large_offset,
          variants=(("float32", "float32"), ("float64", "float64"))),
    Probe("half_precision", "float16 batch whose mean is off the float16 grid: reductions and "
          "normalization in float16 or float32", _half_precision, variants=_HALF),
    Probe("half_large", "4096 float16 values per channel near 24: a float16 accumulator overflows "
          "(sum ~98,000 > 65,504), a float32 one is exact", _half_large, variants=_HALF[:2]),
    Probe("ema_counter", "ema_trajectory from a loaded update counter of 2 (momentum 1/2): debias, "
          "first update and a cumulative weight count from it", _ema_counter),
    Probe("float64_compute", "float64 batch: reductions in float64 or in float32",
          _float64_compute, variants=(("float64", "float64"),)),
    Probe("affine_form", "eval on constant float32 channels equal to a running mean of 3e4: "
          "(x - mean) s + beta is beta exactly, x s + (beta - mean s) is off by ~u |mean s|",
          _affine_form, variants=(("float32", "float32"),)),
    Probe("mixed_params", "input and parameters in different dtypes: output and state dtypes",
          _mixed_params, variants=(("float32", "float64"), ("float16", "float64"),
                                   ("bfloat16", "float64"), *_HALF)),
    Probe("replica_uneven", "3 replicas of 5, 3, 2 samples, 2 training steps, then eval: how "
          "statistics, running copies and n/(n-1) combine", _replica_uneven),
    Probe("replica_even", "replica_uneven on 3 equal shards (an engine without a mask)", _replica_even),
    Probe("replica_gradients", "replica_uneven with gradients: dx through the combined statistics, "
          "dgamma and dbeta as replica 0 holds them", _replica_gradients),
    Probe("replica_gradients_even", "replica_gradients on 3 equal shards", _replica_gradients_even),
    Probe("replica_offset", "2 equal shards at mean/std 1e4 in float32: one-pass combined variance "
          "cancels", _replica_offset, variants=(("float32", "float32"),)),
]}


def negative_variance(results: Mapping[str, Result]) -> str:
    """one_pass if a batch variance came out negative (NaN output, negative running variance)."""
    result = results.get("large_offset")
    if result is None:
        return "one_pass_clamped"
    for s in result.steps:
        if np.isnan(s.y).any() or any(v is not None and bool((v < 0).any())
                                      for v in (s.running_var, s.batch_var)):
            return "one_pass"
    return "one_pass_clamped"


def exact_constant_channels(results: Mapping[str, Result]) -> str:
    """centered if the affine_form probe's constant channels came back as beta (to the float32
    rounding of beta), else folded."""
    result = results.get("affine_form")
    if result is None:
        return "centered"
    y = np.moveaxis(result.steps[0].y, 1, 0).reshape(AFFINE_CHANNELS, -1)
    off = np.abs(y - AFFINE_BETA[:, None]).max(axis=1)
    return "centered" if bool((off <= 2.0**-23 * np.abs(AFFINE_BETA)).all()) else "folded"


_Y = ("y",)
_DTYPE_PROBES = ("mixed_params", "half_precision", "float64_compute")
DECISIONS: tuple[Decision, ...] = (
    Decision(("running_update", "momentum_weights", "first_update", "ema_debias",
              "running_var_update"),
             (("ema_trajectory", RUNNING, None), ("ema_counter", RUNNING, None))),
    Decision(("train_stats", "normalize_var", "eps_placement", "eps_floor"),
             (("eps_placement", _Y, None), ("normalize_var", _Y, None), ("eps_floor", _Y, None),
              ("train_stats", _Y, None))),
    Decision(("eval_stats",), (("ema_trajectory", _Y, (2,)),)),
    Decision(("frozen_train_stats",), (("frozen", _Y + RUNNING, (1,)),)),
    Decision(("single_value",), (("single_value", _Y + RUNNING, None),), exact_nonfinite=True),
    Decision(("variance_algorithm",), (("large_offset", _Y + RUNNING + ("batch_var",), (0,)),),
             numerics=True, tie_break=negative_variance),
    Decision(("compute_dtype", "normalize_dtype"),
             (("half_precision", _Y + RUNNING, None), ("half_large", _Y + RUNNING, None),
              ("float64_compute", _Y + RUNNING, None)), numerics=True),
    # Both forms agree within the tolerance: the constant channels' exactness decides.
    Decision(("affine_form",), (("affine_form", _Y, None),), numerics=True,
             tie_break=exact_constant_channels),
    Decision(("replica_stats", "replica_running", "replica_count"),
             tuple((p, _Y + RUNNING + ("replica_running_mean", "replica_running_var"), None)
                   for p in ("replica_uneven", "replica_even"))),
    Decision(("replica_grad", "replica_param_grad"),
             tuple((p, ("dx", "dgamma", "dbeta"), None) for p in ("replica_gradients", "replica_gradients_even"))),
    Decision(("replica_var",), (("replica_offset", _Y + RUNNING, None),), numerics=True),
    Decision(("output_dtype",), tuple((p, ("y_dtype",), None) for p in _DTYPE_PROBES)),
    Decision(("state_dtype",), tuple((p, ("running_dtype",), None) for p in _DTYPE_PROBES)),
)
