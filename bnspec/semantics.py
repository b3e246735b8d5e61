"""The spec: :class:`Semantics`, a frozen set of named BatchNorm knobs.

The knob names are public vocabulary: they appear in reports, fingerprints and ``bnspec diff``.
Each knob is documented in :data:`KNOBS`; a test checks that the table and the dataclass agree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from bnspec.errors import InvalidSemantics

EpsPlacement = Literal["inside_sqrt", "outside_sqrt"]
MomentumWeights = Literal["batch", "running"]
Estimator = Literal["biased", "unbiased"]
FirstUpdate = Literal["ema", "replace"]
RunningUpdate = Literal["ema", "none"]
StatsSource = Literal["batch", "running"]
VarianceAlgorithm = Literal["two_pass", "one_pass", "one_pass_clamped"]
ComputeDtype = Literal["input", "float32", "promote_float32"]
NormalizeDtype = Literal["input", "compute"]
OutputDtype = Literal["input", "parameters", "state"]
StateDtype = Literal["input", "float32", "parameters", "promote_float32"]
SingleValue = Literal["error", "allowed", "nan"]


@dataclass(frozen=True)
class Knob:
    name: str
    doc: str
    values: tuple[Any, ...] | None  # None: a number (validated by `check`)
    numerics: bool = False  # numerics knobs change rounding, not exact float64 semantics


KNOBS: dict[str, Knob] = {
    k.name: k
    for k in [
        Knob("eps", "the epsilon added to the variance (a float >= 0)", None),
        Knob(
            "eps_placement",
            "(x-mu)/sqrt(var+eps) (inside_sqrt) or (x-mu)/(sqrt(var)+eps) (outside_sqrt)",
            ("inside_sqrt", "outside_sqrt"),
        ),
        Knob("eps_floor", "eps is raised to at least this value (None: no floor)", None),
        Knob(
            "momentum",
            "the framework's default momentum, in its own convention (None: cumulative average)",
            None,
        ),
        Knob(
            "momentum_weights",
            "which statistic the momentum hyperparameter multiplies: batch (PyTorch: "
            "r <- (1-m) r + m b) or running (Keras/Flax/ONNX: r <- m r + (1-m) b)",
            ("batch", "running"),
        ),
        Knob("normalize_var", "variance that normalizes a training batch", ("biased", "unbiased")),
        Knob(
            "running_var_update",
            "variance estimator fed into the running variance",
            ("biased", "unbiased"),
        ),
        Knob(
            "ema_debias",
            "running statistics are read as hidden / (1 - decay^t) after t updates",
            (False, True),
        ),
        Knob(
            "initial_running",
            "(mean, var) of the running statistics (or hidden EMA state) before any update",
            None,
        ),
        Knob(
            "first_update",
            "the first training step blends (ema) or copies (replace) the batch statistics",
            ("ema", "replace"),
        ),
        Knob(
            "running_update",
            "whether a training step updates the running statistics (ema) or leaves them as "
            "they are (none: an inference-only artifact, e.g. a converted graph)",
            ("ema", "none"),
        ),
        Knob(
            "train_stats",
            "statistics normalizing a training batch (running: after this step's update)",
            ("batch", "running"),
        ),
        Knob("eval_stats", "statistics normalizing in eval mode", ("running", "batch")),
        Knob(
            "frozen_train_stats",
            "statistics a frozen layer (Keras trainable=False) uses when called in training "
            "mode, without updating; None where there is no such notion",
            ("batch", "running", None),
        ),
        Knob(
            "variance_algorithm",
            "how the batch variance is formed: two_pass mean((x-mean)^2), one_pass "
            "E[x^2]-E[x]^2, one_pass_clamped max(0, E[x^2]-E[x]^2)",
            ("two_pass", "one_pass", "one_pass_clamped"),
            numerics=True,
        ),
        Knob(
            "compute_dtype",
            "dtype of the reductions: input, float32 (even for float64 input), or "
            "promote_float32 (at least float32)",
            ("input", "float32", "promote_float32"),
            numerics=True,
        ),
        Knob(
            "normalize_dtype",
            "whether mean and 1/sqrt(var+eps) are rounded to the input dtype before "
            "normalizing (input) or kept in the compute dtype (compute)",
            ("input", "compute"),
            numerics=True,
        ),
        Knob(
            "output_dtype",
            "dtype of the output: the input's, the parameters', or the running state's",
            ("input", "parameters", "state"),
            numerics=True,
        ),
        Knob(
            "state_dtype",
            "dtype the running statistics are kept in: the input's, float32, the "
            "parameters' (PyTorch buffers follow the module's dtype), or promote_float32 "
            "(created float32, promoted by a wider batch: flax.linen under x64)",
            ("input", "float32", "parameters", "promote_float32"),
            numerics=True,
        ),
        Knob(
            "single_value",
            "one value per channel in a training step: error; allowed (the unbiased factor "
            "becomes n/max(n-1, 1) = 1); or nan (the factor n/(n-1) divides by zero)",
            ("error", "allowed", "nan"),
        ),
    ]
}

NUMERICS_KNOBS = tuple(k for k, v in KNOBS.items() if v.numerics)


@dataclass(frozen=True)
class Semantics:
    """Every BatchNorm choice that frameworks make differently, as one frozen value."""

    eps: float = 1e-5
    eps_placement: EpsPlacement = "inside_sqrt"
    eps_floor: float | None = None
    momentum: float | None = 0.1
    momentum_weights: MomentumWeights = "batch"
    normalize_var: Estimator = "biased"
    running_var_update: Estimator = "unbiased"
    ema_debias: bool = False
    initial_running: tuple[float, float] = (0.0, 1.0)
    first_update: FirstUpdate = "ema"
    running_update: RunningUpdate = "ema"
    train_stats: StatsSource = "batch"
    eval_stats: StatsSource = "running"
    frozen_train_stats: StatsSource | None = None
    variance_algorithm: VarianceAlgorithm = "two_pass"
    compute_dtype: ComputeDtype = "input"
    normalize_dtype: NormalizeDtype = "compute"
    output_dtype: OutputDtype = "input"
    state_dtype: StateDtype = "input"
    single_value: SingleValue = "error"

    def __post_init__(self) -> None:
        for name, knob in KNOBS.items():
            value = getattr(self, name)
            if knob.values is not None and value not in knob.values:
                _bad(name, value, " | ".join(map(repr, knob.values)))
        _check_number("eps", self.eps, allow_none=False, low=0.0)
        _check_number("eps_floor", self.eps_floor, allow_none=True, low=0.0)
        _check_number("momentum", self.momentum, allow_none=True, low=0.0, high=1.0)
        init = self.initial_running
        if not (
            isinstance(init, tuple)
            and len(init) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in init)
            and init[1] >= 0
        ):
            _bad("initial_running", init, "a tuple (mean, var) of finite floats with var >= 0")

    def replace(self, **changes: Any) -> Semantics:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["initial_running"] = list(self.initial_running)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Semantics:
        unknown = set(data) - set(KNOBS)
        if unknown:
            raise InvalidSemantics(
                f"unknown knob(s) {sorted(unknown)!r}; knobs are: {', '.join(KNOBS)}"
            )
        data = dict(data)
        if "initial_running" in data:
            data["initial_running"] = tuple(float(v) for v in data["initial_running"])
        return cls(**data)

    def differences(self, other: Semantics) -> dict[str, tuple[Any, Any]]:
        """Knobs whose values differ: ``{knob: (self's value, other's value)}``."""
        return {
            k: (getattr(self, k), getattr(other, k))
            for k in KNOBS
            if getattr(self, k) != getattr(other, k)
        }

    @property
    def effective_eps_floor(self) -> float:
        return 0.0 if self.eps_floor is None else self.eps_floor


def _bad(name: str, value: Any, allowed: str) -> None:
    raise InvalidSemantics(f"knob {name}={value!r} is invalid; allowed: {allowed}")


def _check_number(
    name: str, value: Any, *, allow_none: bool, low: float, high: float | None = None
) -> None:
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"a finite float >= {low}" + (f" and <= {high}" if high is not None else "")
        _bad(name, value, rng + (" or None" if allow_none else ""))
