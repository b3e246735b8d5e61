"""The float64 kernel of the exact reference: a step's batch walked in cache-sized blocks.

Arithmetic only: which statistics to use and what they weigh is the plan's (bnspec.plan) and
the reference's; this module forms per-channel sums, and y and dx from per-channel constants,
as accurately and as fast as NumPy allows.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Affine:
    """y = (x - mean) * scale + shift per channel; shift None without affine parameters."""

    mean: np.ndarray
    scale: np.ndarray
    shift: np.ndarray | None


@dataclass(frozen=True)
class Linear:
    """dx = gr * (g - k + (x - mean) * coef) per channel; coef None when the statistics used to
    normalize do not depend on the batch. gr (gamma r) multiplies last: k and coef are of the
    order of g, so no product of per-channel factors underflows where dx does not (gamma dr is
    below float64's range when gamma is 1e-202 and the variance 1e99, gamma r and dx are not)."""

    gr: np.ndarray
    k: np.ndarray
    mean: np.ndarray
    coef: np.ndarray | None


class Batch:
    """One step's float64 x (and upstream gradient g) viewed as (N, C, S) and walked a block at
    a time (see _blocks): x - mean is formed in cache where a pass needs it, never stored whole,
    and the only batch-sized arrays allocated are the outputs."""

    def __init__(self, x: np.ndarray, g: np.ndarray | None) -> None:
        self.shape = x.shape
        self.x3 = _view3(np.asarray(x, dtype=np.float64))
        self.g3 = None if g is None else _view3(np.asarray(g, dtype=np.float64))
        self.blocks = list(_blocks(self.x3))
        size = max(self.x3[bn, bc].size for bn, bc in self.blocks)
        self._dev, self._tmp = np.empty(size), np.empty(size)

    def _deviation(self, bn: slice, bc: slice, mean_rows: np.ndarray) -> np.ndarray:
        xb = self.x3[bn, bc]
        return np.subtract(xb, mean_rows[:, bc], out=self._dev[: xb.size].reshape(xb.shape))

    def sums(
        self, mean: np.ndarray, *, squares: bool
    ) -> tuple[np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """One pass: per channel sum((x - mean)^2) (if squares), and sum(g), sum(g (x - mean))
        (if there is a g)."""
        c = self.x3.shape[1]
        mean_rows = _rows(mean, self.x3)
        sq = np.zeros(c) if squares else None
        g_sum, g_dev = np.zeros(c), np.zeros(c)
        for bn, bc in self.blocks:
            dev = self._deviation(bn, bc, mean_rows)
            if sq is not None:
                sq[bc] += _channel_dot(dev, dev)
            if self.g3 is not None:
                gb = self.g3[bn, bc]
                g_sum[bc] += channel_sum(gb)
                g_dev[bc] += _channel_dot(gb, dev)
        return sq, (None if self.g3 is None else (g_sum, g_dev))

    def g_sums(self, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sums = self.sums(mean, squares=False)[1]
        assert sums is not None
        return sums

    def finish(self, y_of: Affine | None, dx_of: Linear | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """y and dx in one pass. They share one allocation: freed together, it is reused by
        the next step, where two batch-sized blocks freed together go back to the OS (glibc's
        trim threshold) and faulting them in again costs as much as computing them."""
        x3, g3 = self.x3, self.g3
        pair = np.empty(((y_of is not None) + (dx_of is not None), *x3.shape))
        y, dx = (pair[0] if y_of is not None else None), (pair[-1] if dx_of is not None else None)
        if y_of is not None:
            y_mean, y_scale = _rows(y_of.mean, x3), _rows(y_of.scale, x3)
            y_shift = None if y_of.shift is None else _rows(y_of.shift, x3)
        if dx_of is not None:
            assert g3 is not None
            gr, k = _rows(dx_of.gr, x3), _rows(dx_of.k, x3)
            coef = None if dx_of.coef is None else _rows(dx_of.coef, x3)
            same = y_of is not None and (dx_of.mean is y_of.mean or np.array_equal(dx_of.mean, y_of.mean))
            dx_mean = None if coef is None or same else _rows(dx_of.mean, x3)
        for bn, bc in self.blocks:
            if y is not None:
                dev = self._deviation(bn, bc, y_mean)
                yb = np.multiply(dev, y_scale[:, bc], out=y[bn, bc])
                if y_shift is not None:
                    yb += y_shift[:, bc]
            if dx is not None and g3 is not None:
                db = np.subtract(g3[bn, bc], k[:, bc], out=dx[bn, bc])
                if coef is not None:
                    if dx_mean is not None:
                        dev = self._deviation(bn, bc, dx_mean)
                    db += np.multiply(dev, coef[:, bc], out=self._tmp[: dev.size].reshape(dev.shape))
                db *= gr[:, bc]
        return (None if y is None else y.reshape(self.shape)), (None if dx is None else dx.reshape(self.shape))


def _view3(a: np.ndarray) -> np.ndarray:
    """(N, C, *spatial) as (N, C, S); a view of a contiguous array."""
    return a.reshape(a.shape[0], a.shape[1], -1)


def _rows(v: np.ndarray, a3: np.ndarray) -> np.ndarray:
    """A per-channel value (C values) as a contiguous (1, C, S) block, broadcast over N: NumPy's
    inner loop then runs over C*S contiguous elements instead of restarting every S (twice as
    fast). As (1, C, 1) where the array is one block (building rows would cost more than it
    saves) or a sample is more than a block (rows as large as the data; S is long anyway)."""
    c, s = a3.shape[1], a3.shape[2]
    if a3.size <= _BLOCK or c * s > _BLOCK:
        return v.reshape(1, c, 1)
    return np.repeat(v.reshape(c), s).reshape(1, c, s)


_BLAS_ROW = 8  # from this many elements per (sample, channel) row on, a row is one BLAS dot
_PAIRWISE = 8  # NumPy's pairwise summation starts above 8 terms; up to 8 samples are added in turn
_BLOCK = 1 << 16  # elements per block: 512 KiB of float64


def _blocks(a3: np.ndarray) -> Iterator[tuple[slice, slice]]:
    """(sample, channel) slices cutting an (N, C, S) array into blocks of about _BLOCK elements:
    runs of whole samples, or runs of channels of one sample where a sample is larger.

    A pass that forms x - mean for a block and uses it while the block is in cache moves a
    fraction of the bytes of whole-array NumPy passes and needs no batch-sized temporaries.
    """
    n, c, s = a3.shape
    if a3.size <= _BLOCK:
        yield slice(None), slice(None)
    elif c * s <= _BLOCK:
        k = max(1, _BLOCK // max(c * s, 1))
        for i in range(0, max(n, 1), k):
            yield slice(i, i + k), slice(None)
    else:
        k = max(1, _BLOCK // max(s, 1))
        for i in range(n):
            for j in range(0, c, k):
                yield slice(i, i + 1), slice(j, j + k)


def channel_sum(a3: np.ndarray) -> np.ndarray:
    """Per-channel sum of an (N, C, S) array: each (sample, channel) row in one BLAS dot, the
    rows pairwise."""
    if a3.shape[2] >= _BLAS_ROW:
        return _sum_samples(np.matmul(a3, _ones(a3.shape[2])))
    if a3.shape[0] <= _PAIRWISE:
        return a3.sum(axis=(0, 2))
    return _sum_samples(a3.sum(axis=2))


def _sum_samples(p: np.ndarray) -> np.ndarray:
    """(N, C) -> (C,), summed pairwise over N (NumPy sums pairwise along a contiguous axis):
    the rounding error grows with log2(N), where a reduction over the leading axis adds the
    rows one after another (error growing with N: 2.6 u log2(n) |x| for a (4096, 16) batch)."""
    if p.shape[0] <= _PAIRWISE:
        return p.sum(axis=0)
    return np.ascontiguousarray(p.T).sum(axis=1)


@functools.lru_cache(maxsize=8)
def _ones(s: int) -> np.ndarray:
    ones = np.ones(s)
    ones.flags.writeable = False
    return ones


def _channel_dot(a3: np.ndarray, b3: np.ndarray) -> np.ndarray:
    """Per-channel sum of a * b over (N, C, S) arrays: each row one BLAS dot (no product array
    where rows are long), the rows pairwise."""
    if a3.shape[2] >= _BLAS_ROW and hasattr(np, "vecdot"):  # NumPy >= 2
        return _sum_samples(np.vecdot(a3, b3))
    if a3.shape[0] <= _PAIRWISE:
        return np.einsum("ncs,ncs->c", a3, b3)
    return _sum_samples(np.einsum("ncs,ncs->nc", a3, b3))
