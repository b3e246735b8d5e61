"""The properties ``bnspec run`` checks, each a seeded generator of Cases directed at the inputs
that separate the knobs (large offsets for the variance algorithm, one value per channel, eps
below the fused floor, hundreds of steps for debias and initialisation bias, ...).

Every case depends only on (seed, property, example index): the same seed gives the same cases,
byte for byte, on every machine, and every adapter sees the same case (where capable).
"""

from __future__ import annotations

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


def _shape(rng: np.random.Generator, rank: int | None = None, *, min_n: int = 2) -> tuple[int, ...]:
    rank = rank if rank is not None else int(rng.integers(2, 6))
    c = int(rng.integers(1, 4))
    n = int(rng.integers(1, 5))
    spatial = tuple(int(rng.integers(1, 4)) for _ in range(rank - 2))
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
    shape = _shape(rng)
    return make_case(_batch(rng, shape, rng.normal(0, 3), rng.uniform(0.1, 3)), modes="train",
                     **_params(rng, shape[1]), eps=1e-5, momentum=_momentum(rng), dtype="float32",
                     label="one training step")


def eval_output(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng)
    xs = [_batch(rng, shape, 2.0, 1.5) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], **_params(rng, shape[1]),
                     running_mean=rng.normal(0, 1, shape[1]), running_var=rng.uniform(0.5, 2, shape[1]),
                     eps=1e-3, momentum=_momentum(rng), dtype="float32",
                     label="two training steps, then eval with the running statistics")


def running_stats(rng: np.random.Generator, i: int) -> Case:
    # Long enough that an EMA debias or an initialisation bias shows (1 - 0.99^t is 0.87 at 200).
    steps = 200 if i % 2 == 0 else 24
    shape = (4, 2)
    xs = [_batch(rng, shape, 3.0, 2.0) for _ in range(steps)]
    modes: list[Mode] = ["train" if k < steps else "eval" for k in range(steps + 1)]
    return make_case(xs + [_batch(rng, shape, 3.0, 2.0)], modes=modes,
                     eps=1e-5, momentum=0.01 if steps == 200 else 0.1, dtype="float64",
                     label=f"{steps} training steps (running-statistics trajectory), then eval")


def small_batch_estimator(rng: np.random.Generator, i: int) -> Case:
    # n = 2: the unbiased running variance is twice the biased one.
    shape = (2, 3)
    xs = [_batch(rng, shape, 0.0, 1.0) for _ in range(2)]
    return make_case(xs + [_batch(rng, shape)], modes=["train", "train", "eval"], eps=1e-5,
                     momentum=0.5, dtype="float64", label="batches of 2: estimator of the running variance")


def eps_small(rng: np.random.Generator, i: int) -> Case:
    # eps below TF's fused floor (1.001e-5) on data whose variance is comparable to it.
    shape = _shape(rng, 4)
    eps = float(rng.choice([0.0, 1e-7, 1e-6]))
    x = _batch(rng, shape, 0.0, 3e-3)
    return make_case([x, _batch(rng, shape, 0.0, 3e-3)], modes=["train", "eval"], eps=eps,
                     momentum=0.1, dtype="float64",
                     running_var=np.full(shape[1], 1e-5), label=f"eps={eps:g} on a variance near 1e-5")


def eps_placement(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, 2)
    x = _batch(rng, shape, 0.0, 0.1)
    return make_case(x, modes="train", eps=0.5, momentum=0.1, dtype="float64",
                     label="large eps on a small variance: inside vs outside the square root")


def large_offset(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, 2, min_n=8)
    offset = float(rng.choice([1e3, 1e4, 3e4]))
    xs = [_batch(rng, shape, offset, 1.0) for _ in range(2)]
    return make_case(xs, modes=["train", "eval"], eps=1e-3, momentum=0.1, dtype="float32",
                     running_mean=np.full(shape[1], offset),
                     label=f"mean/std ~ {offset:g} in float32: one-pass variance cancels")


def gradients(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng)
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(2)]
    gs: list[np.ndarray | None] = [rng.normal(0, 1, shape) for _ in range(2)]
    return make_case(xs, modes=["train", "eval"], grad_outputs=gs, **_params(rng, shape[1]),
                     eps=1e-5, momentum=0.1, dtype="float64", label="dx, dgamma, dbeta in train and eval mode")


def frozen_layer(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng)
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], frozen=[False, True, False], eps=1e-3,
                     momentum=0.1, dtype="float32", label="a frozen layer called with training=True")


def single_value(rng: np.random.Generator, i: int) -> Case:
    c = int(rng.integers(1, 4))
    x = rng.normal(0, 1, (1, c))
    return make_case([x, rng.normal(0, 1, (1, c))], modes=["train", "eval"], eps=1e-3,
                     momentum=0.1, dtype="float32", label="one value per channel in training")


def cumulative_momentum(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng)
    xs = [_batch(rng, shape, 2.0, 1.0) for _ in range(4)]
    modes: list[Mode] = ["train", "train", "train", "eval"]
    return make_case(xs, modes=modes, momentum=None, eps=1e-5, dtype="float64",
                     label="momentum=None: the cumulative average")


def half_precision(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng, 4)
    dtype = "float16" if i % 2 == 0 else "bfloat16"
    xs = [_batch(rng, shape, 8.0, 2.0) for _ in range(2)]
    return make_case(xs, modes=["train", "eval"], eps=1e-3, momentum=0.1, dtype=dtype,
                     param_dtype="float32", label=f"{dtype} input with float32 parameters")


def special_values(rng: np.random.Generator, i: int) -> Case:
    shape = (4, 2)
    x = _batch(rng, shape)
    x[1, 0] = [np.nan, np.inf, -np.inf][i % 3]
    return make_case([x, _batch(rng, shape)], modes=["train", "eval"], eps=1e-3, momentum=0.1,
                     dtype="float32", label="a non-finite value in channel 0 (propagation)")


def untracked(rng: np.random.Generator, i: int) -> Case:
    # PyTorch track_running_stats=False: no running statistics; eval steps use the batch's too.
    shape = _shape(rng)
    xs = [_batch(rng, shape, 1.0, 2.0) for _ in range(3)]
    return make_case(xs, modes=["train", "eval", "train"], **_params(rng, shape[1]), eps=1e-5,
                     momentum=0.1, dtype="float32", track_running_stats=False,
                     label="track_running_stats=False: batch statistics in train and eval")


def affine_off(rng: np.random.Generator, i: int) -> Case:
    shape = _shape(rng)
    return make_case([_batch(rng, shape), _batch(rng, shape)], modes=["train", "eval"], gamma=None,
                     beta=None, eps=1e-5, momentum=0.1, dtype="float32", label="affine=False")


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
    ]
}


def generate(prop: str, seed: int, index: int) -> Case:
    case = PROPERTIES[prop].make(_rng(seed, prop, index), index)
    return case.replace(label=f"{prop}[{index}]: {case.label}")
