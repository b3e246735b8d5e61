"""The properties ``bnspec run`` checks, each a seeded generator of Cases directed at the inputs
that separate the knobs (large offsets for the variance algorithm, one value per channel, eps
below the fused floor, hundreds of steps for debias and initialisation bias, ...).

Every case depends only on (seed, property, example index): the same seed gives the same cases,
byte for byte, on every machine, and every adapter sees the same case (where capable).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnspec.case import Case, Mode, make_case


@dataclass(frozen=True)
class Property:
    name: str
    doc: str
    make: Callable[[np.random.Generator, int], Case]


def _rng(seed: int, prop: str, index: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{prop}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rank(prop: str, i: int) -> int:
    """The rank of example ``i`` of a property that takes any: examples cycle through 2-5, each
    property from its own start, so any four examples of a property hold every rank, and the
    first two of all properties together hold each rank about equally often."""
    start = int.from_bytes(hashlib.sha256(prop.encode()).digest()[:2], "little") % 4
    return 2 + (start + i) % 4


def _shape(rng: np.random.Generator, rank: int | None = None, *, min_n: int = 2) -> tuple[int, ...]:
    """(N, C, *spatial) of ``rank`` (None: drawn). Every spatial extent is 2-3, so a flaw in how
    one spatial axis is reduced has values to show in."""
    rank = rank if rank is not None else int(rng.integers(2, 6))
    c = int(rng.integers(1, 4))
    n = int(rng.integers(1, 5))
    spatial = tuple(int(rng.integers(2, 4)) for _ in range(rank - 2))
    while n * int(np.prod(spatial, dtype=int)) < min_n:
        n += 1
    return (n, c, *spatial)


def _params(rng: np.random.Generator, c: int) -> dict[str, Any]:
    """gamma and beta, as keyword arguments of make_case."""
    gamma = rng.normal(1.0, 0.5, c)
    gamma[rng.random(c) < 0.2] *= -1  # negative scales are legal and must flip the output
    return {"gamma": gamma, "beta": rng.normal(0.0, 1.0, c)}


def _batch(rng: np.random.Generator, shape: tuple[int, ...], loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    c = shape[1]
    centers = loc + rng.normal(0, 1, c) * max(scale, 1e-300)
    spread = scale * rng.uniform(0.5, 2.0, c)
    x = rng.normal(0, 1, shape) * spread.reshape(1, c, *([1] * (len(shape) - 2)))
    return x + centers.reshape(1, c, *([1] * (len(shape) - 2)))


def _momentum(rng: np.random.Generator) -> float:
    return float(rng.choice([0.1, 0.01, 0.3, 0.5]))


def train_output(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("train_output", i))
    return make_case(_batch(rng, shape, rng.normal(0, 3), rng.uniform(0.1, 3)), modes="train",
                     **_params(rng, shape[1]), eps=1e-5, momentum=_momentum(rng), dtype="float32",
                     label="one training step")


def eval_output(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("eval_output", i))
    # Step plans in every order: training then eval; eval only (the loaded statistics, and the
    # only plan an inference-only operator takes); eval first, then training, then eval.
    plans: list[list[Mode]] = [["train", "train", "eval"], ["eval", "eval", "eval"], ["eval", "train", "eval"]]
    plan = plans[i % 3]
    xs = [_batch(rng, shape, 2.0, 1.5) for _ in range(3)]
    return make_case(xs, modes=plan, **_params(rng, shape[1]),
                     running_mean=rng.normal(0, 1, shape[1]), running_var=rng.uniform(0.5, 2, shape[1]),
                     eps=1e-3, momentum=_momentum(rng), dtype="float32",
                     label=f"{', '.join(plan)}: eval with the running statistics")


def running_stats(rng: np.random.Generator, i: int) -> Case:
    # Long enough that an EMA debias or an initialisation bias shows (1 - 0.99^t is 0.87 at 200).
    steps = 200 if i % 2 == 0 else 24
    rank = _rank("running_stats", i)
    shape = (4, 2, *([2] * (rank - 2))) if steps == 24 else (4, 2)  # 200 steps stay small
    xs = [_batch(rng, shape, 3.0, 2.0) for _ in range(steps)]
    modes: list[Mode] = ["train" if k < steps else "eval" for k in range(steps + 1)]
    counter = 5 if i % 4 == 3 else 0  # a layer that has counted updates (an EMA debias counts on)
    return make_case(xs + [_batch(rng, shape, 3.0, 2.0)], modes=modes, counter=counter,
                     eps=1e-5, momentum=0.01 if steps == 200 else 0.1, dtype="float64",
                     label=f"{steps} training steps (running-statistics trajectory), then eval"
                     + (f", from an update counter of {counter}" if counter else ""))


def small_batch_estimator(rng: np.random.Generator, i: int) -> Case:
    # n = 2: the unbiased running variance is twice the biased one.
    shape = (2, 3)
    xs = [_batch(rng, shape, 0.0, 1.0) for _ in range(2)]
    return make_case(xs + [_batch(rng, shape)], modes=["train", "train", "eval"], eps=1e-5,
                     momentum=0.5, dtype="float64", label="batches of 2: estimator of the running variance")


def eps_small(rng: np.random.Generator, i: int) -> Case:
    # eps below TF's fused floor (1.001e-5) on data whose variance is comparable to it.
    shape = _shape(rng, _rank("eps_small", i))
    eps = (1e-7, 0.0, 1e-6)[i % 3]  # eps_small[1] is the eps=0 case (the registry counts on it)
    x = _batch(rng, shape, 0.0, 3e-3)
    return make_case([x, _batch(rng, shape, 0.0, 3e-3)], modes=["train", "eval"], eps=eps,
                     momentum=0.1, dtype="float64",
                     running_var=np.full(shape[1], 1e-5), label=f"eps={eps:g} on a variance near 1e-5")


def eps_placement(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("eps_placement", i))
    x = _batch(rng, shape, 0.0, 0.1)
    return make_case(x, modes="train", eps=0.5, momentum=0.1, dtype="float64",
                     label="large eps on a small variance: inside vs outside the square root")


def large_offset(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("large_offset", i), min_n=8)
    offset = float(rng.choice([1e3, 1e4, 3e4]))
    xs = [_batch(rng, shape, offset, 1.0) for _ in range(2)]
    return make_case(xs, modes=["train", "eval"], eps=1e-3, momentum=0.1, dtype="float32",
                     running_mean=np.full(shape[1], offset),
                     label=f"mean/std ~ {offset:g} in float32: one-pass variance cancels")


def gradients(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("gradients", i))
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(2)]
    gs: list[np.ndarray | None] = [rng.normal(0, 1, shape) for _ in range(2)]
    return make_case(xs, modes=["train", "eval"], grad_outputs=gs, **_params(rng, shape[1]),
                     eps=1e-5, momentum=0.1, dtype="float64", label="dx, dgamma, dbeta in train and eval mode")


def frozen_layer(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("frozen_layer", i))
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], frozen=[False, True, False], eps=1e-3,
                     momentum=0.1, dtype="float32", label="a frozen layer called with training=True")


def single_value(rng: np.random.Generator, i: int) -> Case:
    c = int(rng.integers(1, 4))
    shape = (1, c, *([1] * (_rank("single_value", i) - 2)))  # one value per channel at every rank
    x = rng.normal(0, 1, shape)
    return make_case([x, rng.normal(0, 1, shape)], modes=["train", "eval"], eps=1e-3,
                     momentum=0.1, dtype="float32", label="one value per channel in training")


def cumulative_momentum(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("cumulative", i))
    xs = [_batch(rng, shape, 2.0, 1.0) for _ in range(4)]
    modes: list[Mode] = ["train", "train", "train", "eval"]
    # a fresh layer, then one that has counted updates already: the weight is 1/(counter + k)
    counter = 0 if i % 2 == 0 else 7
    return make_case(xs, modes=modes, momentum=None, eps=1e-5, dtype="float64", counter=counter,
                     running_mean=rng.normal(2.0, 0.5, shape[1]), running_var=rng.uniform(0.5, 2, shape[1]),
                     label=f"momentum=None: the cumulative average, from an update counter of {counter}")


def half_precision(rng: np.random.Generator, i: int) -> Case:
    dtype = "float16" if i % 2 == 0 else "bfloat16"
    if i % 4 in (0, 1):
        # 4096 values per channel near 24: a float16 sum (and a bfloat16 one's precision) gives
        # out long before the mean does -- where the accumulation dtype shows.
        shape: tuple[int, ...] = (64, 2, 8, 8)
        xs = [_batch(rng, shape, 24.0, 2.0) for _ in range(2)]
        label = f"{dtype} input with float32 parameters, 4096 values per channel"
    else:
        shape = _shape(rng, 4)
        xs = [_batch(rng, shape, 8.0, 2.0) for _ in range(2)]
        label = f"{dtype} input with float32 parameters"
    return make_case(xs, modes=["train", "eval"], eps=1e-3, momentum=0.1, dtype=dtype,
                     param_dtype="float32", label=label)


def special_values(rng: np.random.Generator, i: int) -> Case:
    shape = (4, 2, *([2] * (_rank("special_values", i) - 2)))
    x = _batch(rng, shape)
    x[(1, 0, *([0] * (len(shape) - 2)))] = [np.nan, np.inf, -np.inf][i % 3]
    return make_case([x, _batch(rng, shape)], modes=["train", "eval"], eps=1e-3, momentum=0.1,
                     dtype="float32", label="a non-finite value in channel 0 (propagation)")


def untracked(rng: np.random.Generator, i: int) -> Case:
    # PyTorch track_running_stats=False: no running statistics; eval steps use the batch's too.
    shape = _shape(rng, _rank("untracked", i))
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(3)]
    return make_case(xs, modes=["train", "eval", "train"], **_params(rng, shape[1]), eps=1e-5,
                     momentum=0.1, dtype="float32", track_running_stats=False,
                     label="track_running_stats=False: batch statistics in train and eval")


def affine_off(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, _rank("affine_off", i))
    return make_case([_batch(rng, shape), _batch(rng, shape)], modes=["train", "eval"], gamma=None,
                     beta=None, eps=1e-5, momentum=0.1, dtype="float32", label="affine=False")


# -- data-parallel: every step's global batch split into replica shards (Case.replicas) --

def _spatial(rng: np.random.Generator, rank: int) -> tuple[int, ...]:
    return tuple(int(rng.integers(2, 4)) for _ in range(rank - 2))


def _split(rng: np.random.Generator, kind: str) -> tuple[int, ...]:
    """Shard sizes of ``kind``: even (2-4 replicas of 2-3 samples), uneven (2-4 replicas of
    different sizes, 2-6 each: an uneven last batch), one_sample (one replica holds a single
    sample: one value per channel locally at rank 2, while the global batch is large), empty
    (one replica holds none)."""
    r = int(rng.integers(2, 5))
    if kind == "even":
        return (int(rng.integers(2, 4)),) * r
    sizes = [int(k) for k in rng.integers(2, 7, size=r)]
    while len(set(sizes)) == 1:
        sizes[int(rng.integers(0, r))] = int(rng.integers(2, 7))
    if kind in ("one_sample", "empty"):
        sizes[int(rng.integers(0, r))] = 1 if kind == "one_sample" else 0
    return tuple(sizes)


def _replicated(rng: np.random.Generator, prop: str, i: int, kind: str, *, steps: int = 2, loc: float = 0.0,
                scale: float = 1.0, dtype: str = "float64", grads: bool = False, momentum: float | None = None,
                label: str) -> Case:
    """``steps`` training steps on one split, then an eval step: each replica's running copy has
    a trajectory to diverge along, and the eval step reads what survived."""
    split = _split(rng, kind)
    shape = (sum(split), int(rng.integers(1, 4)), *_spatial(rng, _rank(prop, i)))
    xs = [_batch(rng, shape, loc, scale) for _ in range(steps + 1)]
    modes: list[Mode] = ["train" if k < steps else "eval" for k in range(steps + 1)]
    return make_case(xs, modes=modes, grad_outputs=[rng.normal(0, 1, shape) if grads else None for _ in xs],
                     **_params(rng, shape[1]), running_mean=rng.normal(loc, 1.0, shape[1]),
                     running_var=rng.uniform(0.5, 2.0, shape[1]), eps=1e-3,
                     momentum=_momentum(rng) if momentum is None else momentum, dtype=dtype, replicas=split,
                     label=f"{label}, shards {split}")


def replicas_even(rng: np.random.Generator, i: int) -> Case:
    return _replicated(rng, "replicas_even", i, "even", label="an even split")


def replicas_uneven(rng: np.random.Generator, i: int) -> Case:
    # uneven shards are where count-weighted and equal-weighted statistics part
    return _replicated(rng, "replicas_uneven", i, "uneven", label="an uneven split")


def replicas_one_sample(rng: np.random.Generator, i: int) -> Case:
    return _replicated(rng, "replicas_one_sample", i, "one_sample", label="one replica holds a single sample")


def replicas_empty(rng: np.random.Generator, i: int) -> Case:
    return _replicated(rng, "replicas_empty", i, "empty", label="one replica holds no sample")


# The next three alternate an uneven split (even examples) with an even one (odd examples): an
# implementation that takes equal shards only (no mask) is still checked on every one of them.
def _alternating(i: int) -> str:
    return "uneven" if i % 2 == 0 else "even"


def replicas_large_offset(rng: np.random.Generator, i: int) -> Case:
    offset = float(rng.choice([1e3, 1e4]))
    return _replicated(rng, "replicas_large_offset", i, _alternating(i), loc=offset, dtype="float32",
                       label=f"mean/std ~ {offset:g} in float32 on an {_alternating(i)} split: a one-pass "
                       "combined variance cancels")


def replicas_steps(rng: np.random.Generator, i: int) -> Case:
    # replica 0's copy broadcast, each replica's own, or synchronized copies part a little each
    # step; an eval step halfway, as a validation pass between training steps runs
    case = _replicated(rng, "replicas_steps", i, _alternating(i), steps=24, loc=2.0, scale=1.5, momentum=0.1,
                       label=f"24 training steps on an {_alternating(i)} split (each replica's running "
                       "statistics) with an eval step after the 12th, then eval")
    steps = list(case.steps)
    halfway = dataclasses.replace(steps[-1], x=_batch(rng, steps[0].x.shape, 2.0, 1.5))
    return case.replace(steps=(*steps[:12], halfway, *steps[12:]))


def replicas_gradients(rng: np.random.Generator, i: int) -> Case:
    return _replicated(rng, "replicas_gradients", i, _alternating(i), loc=1.0, scale=2.0, grads=True,
                       label=f"dx, dgamma, dbeta on an {_alternating(i)} split, in train and eval mode")


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in [
        Property("train_output", "training-mode output with batch statistics", train_output),
        Property("eval_output", "eval-mode output with the running statistics", eval_output),
        Property("running_stats", "running statistics over hundreds of steps", running_stats),
        Property("estimator", "the running variance's estimator on tiny batches", small_batch_estimator),
        Property("eps_small", "eps below the fused kernels' floor", eps_small),
        Property("eps_placement", "eps inside or outside the square root", eps_placement),
        Property("large_offset", "variance of data far from zero (one-pass cancellation)", large_offset),
        Property("gradients", "dx, dgamma, dbeta in train and eval mode", gradients),
        Property("frozen_layer", "a frozen layer in training mode", frozen_layer),
        Property("single_value", "one value per channel in training", single_value),
        Property("cumulative", "momentum=None (cumulative average)", cumulative_momentum),
        Property("half_precision", "float16 / bfloat16 input", half_precision),
        Property("special_values", "NaN and Inf propagation", special_values),
        Property("affine_off", "no gamma and beta", affine_off),
        Property("untracked", "track_running_stats=False (no running statistics)", untracked),
        Property("replicas_even", "data-parallel: an even split across replicas", replicas_even),
        Property("replicas_uneven", "data-parallel: an uneven split (count vs equal weights)", replicas_uneven),
        Property("replicas_one_sample", "data-parallel: a replica with one sample", replicas_one_sample),
        Property("replicas_empty", "data-parallel: a replica with no sample", replicas_empty),
        Property("replicas_large_offset", "data-parallel: float32 far from zero (one-pass combined variance)",
                 replicas_large_offset),
        Property("replicas_steps", "data-parallel: running statistics across replicas over 24 steps",
                 replicas_steps),
        Property("replicas_gradients", "data-parallel: dx, dgamma, dbeta across replicas", replicas_gradients),
    ]
}


def generate(prop: str, seed: int, index: int) -> Case:
    case = PROPERTIES[prop].make(_rng(seed, prop, index), index)
    return case.replace(label=f"{prop}[{index}]: {case.label}")
