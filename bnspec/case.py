"""The vocabulary of one check: a :class:`Case` in, a :class:`Result` out.

Arrays are in the canonical layout (N, C, *spatial) and stored as float64 holding values that
are exactly representable in the case's dtype; an adapter casts them into its framework's dtype
and layout. Hyperparameters are canonical: ``momentum`` is the weight of the *batch* statistic
(PyTorch's convention; None is the cumulative average), and each adapter translates it into its
framework's own convention.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np

from bnspec.dtypes import check_dtype, round_to
from bnspec.errors import InvalidCase

Mode = Literal["train", "eval"]
Layout = Literal["channels_first", "channels_last"]


@dataclass(frozen=True, eq=False)
class Step:
    """One call of the layer: a training or an eval step on batch ``x``.

    ``frozen`` is a training call of a frozen layer (Keras ``trainable=False`` called with
    ``training=True``). ``grad_output`` is the upstream gradient dy; when given, the step also
    yields dx, dgamma and dbeta.
    """

    mode: Mode
    x: np.ndarray
    frozen: bool = False
    grad_output: np.ndarray | None = None

    @property
    def updates_running(self) -> bool:
        return self.mode == "train" and not self.frozen


@dataclass(frozen=True, eq=False)
class Case:
    steps: tuple[Step, ...]
    running_mean: np.ndarray
    running_var: np.ndarray
    gamma: np.ndarray | None = None  # None together with beta: affine=False
    beta: np.ndarray | None = None
    eps: float = 1e-5
    momentum: float | None = 0.1
    dtype: str = "float64"
    param_dtype: str = "float64"
    track_running_stats: bool = True
    layout: Layout = "channels_first"
    label: str = ""
    # The layer's update counter before step 0 (torch's num_batches_tracked, an EMA's step
    # count): what momentum=None's cumulative weight 1/(counter + k) and an EMA debias
    # 1 - decay^(counter + k) count from. 0: a fresh layer.
    counter: int = 0
    # Data-parallel training: every step's global batch split along axis 0 into R replica
    # shards of these sizes, in replica order (uneven sizes, 1 and 0 allowed; their sum is each
    # step's N). One split for all steps: a deployment's replica count and per-replica batch
    # are fixed across calls, and one split keeps each replica's running statistics a single
    # trajectory. None: one device.
    replicas: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_dtype(self.dtype)
        check_dtype(self.param_dtype)
        if not self.steps:
            raise InvalidCase("a Case needs at least one step")
        c = self.num_features
        for i, s in enumerate(self.steps):
            if s.mode not in ("train", "eval"):
                raise InvalidCase(f"step {i}: mode={s.mode!r}; allowed: 'train' | 'eval'")
            if not 2 <= s.x.ndim <= 5:
                raise InvalidCase(f"step {i}: x has rank {s.x.ndim}; bnspec handles ranks 2-5")
            if s.x.shape[1] != c:
                raise InvalidCase(f"step {i}: x has {s.x.shape[1]} channels, step 0 has {c}")
            if s.grad_output is not None and s.grad_output.shape != s.x.shape:
                raise InvalidCase(f"step {i}: grad_output shape differs from x's")
        if (self.gamma is None) != (self.beta is None):
            raise InvalidCase("gamma and beta are both given (affine) or both None")
        for name in ("gamma", "beta", "running_mean", "running_var"):
            v = getattr(self, name)
            if v is not None and v.shape != (c,):
                raise InvalidCase(f"{name} has shape {v.shape}; expected ({c},)")
        if not (isinstance(self.eps, (int, float)) and self.eps >= 0):
            raise InvalidCase(f"eps={self.eps!r}; expected a float >= 0")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            raise InvalidCase(f"momentum={self.momentum!r}; expected a float in [0, 1] or None")
        if not (isinstance(self.counter, int) and not isinstance(self.counter, bool) and self.counter >= 0):
            raise InvalidCase(f"counter={self.counter!r}; expected an int >= 0 (updates before step 0)")
        if self.replicas is not None:
            self._check_replicas()

    def _check_replicas(self) -> None:
        shards = self.replicas
        if not (isinstance(shards, tuple) and shards
                and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in shards)):
            raise InvalidCase(f"replicas={shards!r}; expected a non-empty tuple of shard sizes (ints >= 0)")
        for i, s in enumerate(self.steps):
            if sum(shards) != s.x.shape[0]:
                raise InvalidCase(f"step {i}: replicas {shards!r} hold {sum(shards)} samples, x has {s.x.shape[0]}")

    @property
    def shards(self) -> tuple[tuple[int, int], ...]:
        """Each replica's samples as (start, stop) along axis 0; one device: one shard."""
        sizes = self.replicas if self.replicas is not None else (int(self.steps[0].x.shape[0]),)
        bounds = [0]
        for k in sizes:
            bounds.append(bounds[-1] + k)
        return tuple(zip(bounds[:-1], bounds[1:], strict=True))

    @property
    def num_features(self) -> int:
        return int(self.steps[0].x.shape[1])

    @property
    def affine(self) -> bool:
        return self.gamma is not None

    @property
    def rank(self) -> int:
        return int(self.steps[0].x.ndim)

    @property
    def needs_gradients(self) -> bool:
        return any(s.grad_output is not None for s in self.steps)

    def replace(self, **changes: Any) -> Case:
        return dataclasses.replace(self, **changes)

    # -- serialisation: exact (float64 values written with repr), NaN/Inf as strings --
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "steps"
        }
        if not self.counter:
            del d["counter"]  # a fresh layer: the ids of cases from before the counter stay
        if self.replicas is None:
            del d["replicas"]  # one device: the ids of cases from before replicas stay
        else:
            d["replicas"] = list(self.replicas)
        for k in ("running_mean", "running_var", "gamma", "beta"):
            d[k] = encode_array(d[k])
        d["steps"] = [
            {
                "mode": s.mode,
                "frozen": s.frozen,
                "x": encode_array(s.x),
                "grad_output": encode_array(s.grad_output),
            }
            for s in self.steps
        ]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Case:
        d = dict(d)
        steps = tuple(
            Step(
                mode=s["mode"],
                x=np.asarray(decode_array(s["x"])),
                frozen=bool(s.get("frozen", False)),
                grad_output=decode_array(s.get("grad_output")),
            )
            for s in d.pop("steps")
        )
        for k in ("running_mean", "running_var", "gamma", "beta"):
            d[k] = decode_array(d.get(k))
        if d.get("replicas") is not None:
            d["replicas"] = tuple(int(k) for k in d["replicas"])
        return cls(steps=steps, **d)

    def case_id(self) -> str:
        """A stable id: the hash of the case's canonical JSON."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def make_case(
    xs: list[np.ndarray] | np.ndarray,
    *,
    modes: list[Mode] | str = "train",
    gamma: np.ndarray | None | Literal["default"] = "default",
    beta: np.ndarray | None | Literal["default"] = "default",
    running_mean: np.ndarray | None = None,
    running_var: np.ndarray | None = None,
    grad_outputs: list[np.ndarray | None] | None = None,
    frozen: list[bool] | None = None,
    dtype: str = "float64",
    param_dtype: str | None = None,
    **hyper: Any,
) -> Case:
    """Build a Case, rounding every array into its dtype.

    ``xs`` is one batch or a list of batches; ``modes`` one mode for all or one per batch.
    ``gamma``/``beta`` default to ones/zeros; pass None for both to build affine=False.
    """
    batches = [xs] if isinstance(xs, np.ndarray) else list(xs)
    n = len(batches)
    mode_list = [modes] * n if isinstance(modes, str) else list(modes)
    if len(mode_list) != n:
        raise InvalidCase(f"{len(mode_list)} modes for {n} batches")
    grads = grad_outputs if grad_outputs is not None else [None] * n
    frozen_list = frozen if frozen is not None else [False] * n
    param_dtype = param_dtype or dtype
    c = int(np.shape(batches[0])[1])

    def param(value: Any, default: float) -> np.ndarray | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = np.full(c, default)
        return round_to(value, param_dtype)

    steps = tuple(
        Step(
            mode=m,  # type: ignore[arg-type]  # checked in Case.__post_init__
            x=round_to(x, dtype),
            frozen=bool(f),
            grad_output=None if g is None else round_to(g, dtype),
        )
        for x, m, g, f in zip(batches, mode_list, grads, frozen_list, strict=True)
    )
    return Case(
        steps=steps,
        gamma=param(gamma, 1.0),
        beta=param(beta, 0.0),
        running_mean=round_to(np.zeros(c) if running_mean is None else running_mean, param_dtype),
        running_var=round_to(np.ones(c) if running_var is None else running_var, param_dtype),
        dtype=dtype,
        param_dtype=param_dtype,
        **hyper,
    )


@dataclass(eq=False)
class StepResult:
    """What one step produced. Anything an implementation does not expose is None.

    ``batch_var`` is the biased (population) batch variance; ``running_mean``/``running_var``
    are the statistics after the step as eval mode would read them (debiased where the
    semantics debias).
    """

    y: np.ndarray
    batch_mean: np.ndarray | None = None
    batch_var: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    dx: np.ndarray | None = None
    dgamma: np.ndarray | None = None
    dbeta: np.ndarray | None = None
    y_dtype: str | None = None
    running_dtype: str | None = None
    # The statistics that normalized this step (filled by the reference; the tolerance model
    # derives the output's conditioning from them). Adapters leave them None.
    norm_mean: np.ndarray | None = None
    norm_var: np.ndarray | None = None
    # A case with replicas: every replica's running statistics after the step, (R, C) in
    # replica order (running_mean/var above are replica 0's, the copy a checkpoint saves), and
    # the statistics that normalized each replica (the reference's, like norm_mean). None on
    # one device, and left out of the dict there.
    replica_running_mean: np.ndarray | None = None
    replica_running_var: np.ndarray | None = None
    replica_norm_mean: np.ndarray | None = None
    replica_norm_var: np.ndarray | None = None

    QUANTITIES = ("y", "batch_mean", "batch_var", "running_mean", "running_var", "dx", "dgamma", "dbeta")
    REPLICA_QUANTITIES = ("replica_running_mean", "replica_running_var")
    _ARRAYS = (*QUANTITIES, "norm_mean", "norm_var")
    _REPLICA_ARRAYS = (*REPLICA_QUANTITIES, "replica_norm_mean", "replica_norm_var")

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {q: encode_array(getattr(self, q)) for q in self._ARRAYS}
        d.update({q: encode_array(v) for q in self._REPLICA_ARRAYS if (v := getattr(self, q)) is not None})
        d["y_dtype"], d["running_dtype"] = self.y_dtype, self.running_dtype
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepResult:
        kw: dict[str, Any] = {q: decode_array(d.get(q)) for q in (*cls._ARRAYS, *cls._REPLICA_ARRAYS)}
        return cls(**kw, y_dtype=d.get("y_dtype"), running_dtype=d.get("running_dtype"))


_VERDICT = {"verdict": True}  # marks the four verdicts among ConversionChecks' fields


@dataclass(frozen=True)
class ConversionChecks:
    """What a conversion path checked about the conversion itself, beside its outputs: four
    verdicts (the Converters columns of the reports) and the detail behind them. A verdict is None
    where the artifact does not let it be read (a layer lowered to arithmetic has no eps to compare)
    and is then left out of the reports.

    - ``hyperparameters_preserved``: eps and momentum read back from the artifact (``converted``)
      equal the source's;
    - ``state_preserved``: the artifact's initial running statistics equal the source's;
    - ``source_untouched``: the source's parameters, running statistics and mode are bit-identical
      before and after the conversion (``source_changes`` names what changed);
    - ``trainable_match``: the trainable parameters (name -> element count) of the source
      (``trainable_source``) and of the artifact (``trainable_converted``) count the same.

    Filled by the conversion adapters (one helper, ``bnspec.adapters.converters._common``); read
    by the engine through ``bnspec.adapter.conversion_verdicts`` only.
    """

    hyperparameters_preserved: bool | None = field(default=None, metadata=_VERDICT)
    state_preserved: bool | None = field(default=None, metadata=_VERDICT)
    source_untouched: bool | None = field(default=None, metadata=_VERDICT)
    trainable_match: bool | None = field(default=None, metadata=_VERDICT)
    converted: dict[str, Any] = field(default_factory=dict, hash=False)  # read back from the artifact
    source_changes: tuple[str, ...] = ()
    trainable_source: dict[str, int] = field(default_factory=dict, hash=False)
    trainable_converted: dict[str, int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # A verdict computed with NumPy is a numpy.bool_, changes may come as a list (JSON): held
        # as a bool and a tuple, so that the record serialises and compares the same either way.
        for f in fields(self):
            if f.metadata.get("verdict") and (value := getattr(self, f.name)) is not None:
                object.__setattr__(self, f.name, bool(value))
        object.__setattr__(self, "source_changes", tuple(self.source_changes))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConversionChecks:
        return cls(**d)


@dataclass(eq=False)
class Result:
    """What an adapter observed: one StepResult per step; for a conversion path, what it checked
    about the conversion (``conversion``); anything else worth keeping in ``meta``."""

    steps: list[StepResult] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"jax_enable_x64": True}
    conversion: ConversionChecks | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"steps": [s.to_dict() for s in self.steps], "meta": self.meta}
        if self.conversion is not None:
            d["conversion"] = self.conversion.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        conversion = None if d.get("conversion") is None else ConversionChecks.from_dict(d["conversion"])
        return cls([StepResult.from_dict(s) for s in d["steps"]], dict(d.get("meta", {})), conversion)


def _encode_float(v: float) -> float | str:
    return v if math.isfinite(v) else repr(v)  # 'nan', 'inf', '-inf'


def encode_array(a: np.ndarray | None) -> dict[str, Any] | None:
    if a is None:
        return None
    a = np.asarray(a, dtype=np.float64)
    return {"shape": list(a.shape), "data": [_encode_float(float(v)) for v in a.ravel()]}


def decode_array(d: dict[str, Any] | None) -> np.ndarray | None:
    if d is None:
        return None
    return np.array([float(v) for v in d["data"]], dtype=np.float64).reshape(d["shape"])
