"""onnx.reference's ReferenceEvaluator running a one-node ONNX BatchNormalization model, one
adapter per version of the operator that onnx/reference/ops/op_batch_normalization.py implements.

The evaluator picks the newest implementation at or below the model's opset:
``BatchNormalization_6`` for opsets 6-8, ``_9`` for 9-13 and ``_14`` for 14 and later (opset 15 has
no class of its own; its T/T1/T2 type constraints are what the ``onnx_reference_15`` variant adds:
parameters and running statistics in another dtype than X).

- opset 6 (``is_test=1``): eval only. A training node (``is_test=0``) fails in the evaluator:
  ``BatchNormalization_6._run`` returns ``(res,)`` with ``res`` the 5-tuple of
  ``_batchnorm_training_mode`` ("One of the results ... is a tuple"). Opsets 7 and 8 dropped
  ``is_test``, so the schema default 0 applies and every valid model fails that way: no adapter.
- opset 9: a one-output node is test mode by the operator text, but the evaluator switches on
  ``momentum is None``, which never holds (``OpRun._load_attributes`` fills the schema default
  0.9): Y is normalized with ``momentum * input_mean + (1 - momentum) * batch_mean`` (and the same
  blend of the variances). A training node (Y, mean, var, ...) fails: only Y is returned.
- opsets 14 and 15: ``training_mode`` 0 or 1; a training step's running_mean/running_var are fed
  back as the next step's inputs, cast to the input's declared type, as a training runtime would.

Attributes are 32-bit floats, and the evaluator holds them as ``np.float32`` scalars
(``op_run._attribute_conversion_function``): a float64 case whose eps or ONNX momentum is not a
float32 value is unsupported, as for ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, StepResult
from bnspec.dtypes import np_dtype
from bnspec.errors import UnsupportedFeature

_TENSOR_TYPE = {"float64": "DOUBLE", "float32": "FLOAT", "float16": "FLOAT16", "bfloat16": "BFLOAT16"}
_COMMON = ("No affine=False (scale and B are required inputs), no cumulative momentum, no frozen "
           "layer, no untracked statistics, no gradients (an evaluator of forward graphs). "
           "epsilon and momentum are float32 attributes held as np.float32: a float64 case needs "
           "eps and 1 - momentum exactly representable in float32 (else UnsupportedFeature).")


# Why a version's training nodes are not run (the evaluator fails on them; the tests pin that).
_NO_TRAINING = {
    6: "onnx.reference's BatchNormalization_6 returns the training outputs as one nested tuple "
       "and the evaluator raises TypeError",
    9: "onnx.reference's BatchNormalization_9 returns Y only, so the running mean/var outputs of "
       "a training node cannot be bound",
}


def _caps(opset: int) -> Capabilities:
    if opset == 6:
        dtypes: tuple[str, ...] = ("float64", "float32", "float16")
        note = ("BatchNormalization-6 with is_test=1 (test mode). Training (is_test=0) is not "
                "run: onnx.reference's BatchNormalization_6 returns a nested tuple and the "
                "evaluator raises TypeError. T is one type for all inputs.")
    elif opset == 9:
        dtypes = ("float64", "float32", "float16")
        note = ("BatchNormalization-9, one output (test mode by the operator text). onnx.reference "
                "normalizes it with momentum-blended statistics (momentum is never None: the "
                "schema default fills it). Training nodes (Y, mean, var, ...) fail: the "
                "evaluator returns Y only. T is one type for all inputs.")
    else:
        dtypes = ("float64", "float32", "float16", "bfloat16")
        note = (f"BatchNormalization-{opset} (onnx.reference's BatchNormalization_14), "
                "training_mode=1 and 0; bfloat16 through ml_dtypes. "
                + ("X in T, scale/B in T1, input_mean/input_var in T2: the case's dtype and "
                   "param_dtype may differ." if opset >= 15 else
                   "X, scale and B share type T: param_dtype must equal dtype."))
    return Capabilities(
        ranks=(2, 3, 4, 5), dtypes=dtypes, gradients=False, cumulative_momentum=False,
        frozen=False, affine_off=False, untracked=False, eval_steps=True,
        train_steps=opset >= 14, notes=f"{note} {_COMMON}",
    )


@dataclass
class OnnxReferenceAdapter(Adapter):
    opset: int = 15
    capabilities: Capabilities = field(init=False, default_factory=Capabilities)

    def __post_init__(self) -> None:
        self.capabilities = _caps(self.opset)
        self._evaluators: dict[tuple[Any, ...], Any] = {}

    def setup(self) -> None:
        import onnx.reference  # noqa: F401

    def run(self, case: Case) -> Result:
        if not case.affine:
            raise UnsupportedFeature(
                "affine=False: ONNX BatchNormalization requires scale and B inputs; feeding "
                "ones/zeros would be the adapter choosing the semantics"
            )
        if any(s.mode == "train" for s in case.steps) and not self.capabilities.train_steps:
            raise UnsupportedFeature(f"train steps: {_NO_TRAINING[self.opset]}")
        self.check_supported(case)
        if case.param_dtype != case.dtype and self.opset < 15:
            raise UnsupportedFeature(
                f"param_dtype {case.param_dtype} != dtype {case.dtype}: BatchNormalization-"
                f"{self.opset} types X and scale alike (T); opset 15 has T1 and T2"
            )
        assert case.momentum is not None and case.gamma is not None and case.beta is not None
        onnx_momentum = 1.0 - case.momentum  # ONNX momentum weighs the running statistic
        # opset 6 test mode never reads momentum; opset 9 blends with it in every step.
        uses_momentum = self.opset == 9 or any(s.mode == "train" for s in case.steps)
        check_attribute_precision(case.dtype, eps=case.eps,
                                  momentum=onnx_momentum if uses_momentum else None)
        dt, pdt = np_dtype(case.dtype), np_dtype(case.param_dtype)
        mean, var = case.running_mean.astype(pdt), case.running_var.astype(pdt)
        scale, bias = case.gamma.astype(pdt), case.beta.astype(pdt)
        out: list[StepResult] = []
        for step in case.steps:
            training = step.mode == "train"
            evaluator = self._evaluator(case, training, onnx_momentum)
            feeds = dict(zip(input_names(self.opset), (step.x.astype(dt), scale, bias, mean, var),
                             strict=True))
            outputs = evaluator.run(None, feeds)
            # The dtype the evaluator returns the running statistics in; an eval node returns none
            # (what it normalized with is what was fed, in T2).
            running_dtype = None
            if training:
                running_dtype = str(outputs[1].dtype)
                mean, var = np.asarray(outputs[1]).astype(pdt), np.asarray(outputs[2]).astype(pdt)
            out.append(StepResult(
                y=np.asarray(outputs[0]).astype(np.float64),
                running_mean=mean.astype(np.float64),
                running_var=var.astype(np.float64),
                y_dtype=str(outputs[0].dtype),
                running_dtype=running_dtype,
            ))
        return Result(out, {"opset": self.opset, "runtime": "onnx.reference.ReferenceEvaluator"})

    def _evaluator(self, case: Case, training: bool, momentum: float) -> Any:
        key = (case.rank, case.dtype, case.param_dtype, training, case.eps, momentum)
        if key not in self._evaluators:
            from onnx.reference import ReferenceEvaluator

            model = build_model(self.opset, case.rank, case.dtype, case.param_dtype, training,
                                case.eps, momentum)
            self._evaluators[key] = ReferenceEvaluator(model)
        return self._evaluators[key]

    def snippet(self, case: Case) -> str:
        m = None if case.momentum is None else 1.0 - case.momentum
        lines = [
            "import numpy as np",
            "from onnx.reference import ReferenceEvaluator",
            "from bnspec.adapters.onnx_reference import build_model, input_names",
            "from bnspec.dtypes import np_dtype",
            f"dt, pdt = np_dtype({case.dtype!r}), np_dtype({case.param_dtype!r})",
            f"def evaluator(training): return ReferenceEvaluator(build_model({self.opset}, "
            f"{case.rank}, {case.dtype!r}, {case.param_dtype!r}, training, {case.eps!r}, {m!r}))",
            f"scale = np.array({_lst(case.gamma)}).astype(pdt)",
            f"B = np.array({_lst(case.beta)}).astype(pdt)",
            f"mean = np.array({_lst(case.running_mean)}).astype(pdt)",
            f"var = np.array({_lst(case.running_var)}).astype(pdt)",
        ]
        for i, step in enumerate(case.steps):
            training = step.mode == "train"
            lines.append(f"x{i} = np.array({step.x.tolist()!r}).astype(dt)")
            lines.append(f"out = evaluator({training}).run(None, dict(zip(input_names"
                         f"({self.opset}), (x{i}, scale, B, mean, var))))")
            if training:
                lines.append("mean, var = out[1].astype(pdt), out[2].astype(pdt)")
            lines.append(f"print('step {i}', out[0], mean, var)")
        return "\n".join(lines)


def input_names(opset: int) -> tuple[str, ...]:
    """The operator's input names: mean/var up to opset 9, input_mean/input_var from 14."""
    stats = ("input_mean", "input_var") if opset >= 14 else ("mean", "var")
    return ("X", "scale", "B", *stats)


def build_model(opset: int, rank: int, dtype: str, param_dtype: str, training: bool,
                eps: float, momentum: float | None) -> Any:
    """The one-node BatchNormalization model at ``opset``; momentum is ONNX's (the running
    statistic's weight). Every attribute of the version is set explicitly."""
    from onnx import TensorProto, helper

    def elem(name: str) -> int:
        return int(getattr(TensorProto, _TENSOR_TYPE[name]))

    attrs: dict[str, Any] = {"epsilon": float(eps)}
    if momentum is not None:
        attrs["momentum"] = float(momentum)
    # Output names differ from the inputs' (SSA), though opset 6 says "in-place with the input mean".
    outs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    if opset >= 14:
        attrs["training_mode"] = int(training)
    elif training:  # opsets 6-13: training mode is the five-output form
        outs += ["saved_mean", "saved_var"]
    if opset < 7:
        attrs.update(is_test=int(not training), spatial=1)
    names = input_names(opset)
    node = helper.make_node("BatchNormalization", list(names), outs, **attrs)
    shape: list[str | int] = ["N", "C", *(f"D{i}" for i in range(rank - 2))]
    x_type, p_type = elem(dtype), elem(param_dtype)
    inputs = [helper.make_tensor_value_info("X", x_type, shape)] + [
        helper.make_tensor_value_info(n, p_type, ["C"]) for n in names[1:]
    ]
    outputs = [helper.make_tensor_value_info("Y", x_type, shape)] + [
        helper.make_tensor_value_info(n, p_type, ["C"]) for n in outs[1:]
    ]
    graph = helper.make_graph([node], "batchnorm", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def check_attribute_precision(dtype: str, *, eps: float, momentum: float | None) -> None:
    """A float64 model holds float32(eps) and float32(momentum), and the evaluator forms the
    batch weight as np.float32(1) - np.float32(momentum): unsupported unless all three are exact.
    In float32 and narrower that rounding is within the data's own."""
    if dtype != "float64":
        return
    values = {"eps": eps} if momentum is None else {"eps": eps, "momentum": momentum}
    for name, value in values.items():
        if float(np.float32(value)) != value:
            raise UnsupportedFeature(
                f"{name}={value!r} in a float64 model: ONNX attributes are float32 "
                f"(AttributeProto.f), so the model would hold {float(np.float32(value))!r}"
            )
    if momentum is not None and float(np.float32(1) - np.float32(momentum)) != 1.0 - momentum:
        raise UnsupportedFeature(
            f"momentum={momentum!r} in a float64 model: onnx.reference forms 1 - momentum in "
            f"float32 ({float(np.float32(1) - np.float32(momentum))!r}, not {1.0 - momentum!r})"
        )


def _lst(a: np.ndarray | None) -> str:
    return repr(None if a is None else a.tolist())


_DESCRIPTION = "a one-node ONNX BatchNormalization-{} model run by onnx.reference.ReferenceEvaluator"
ONNX_REFERENCE_6 = OnnxReferenceAdapter(
    name="onnx_reference_6", framework="onnx", profile="onnx_reference", opset=6,
    description=_DESCRIPTION.format(6) + " (is_test=1: eval steps only)",
)
ONNX_REFERENCE_9 = OnnxReferenceAdapter(
    name="onnx_reference_9", framework="onnx", profile="onnx_reference_9", opset=9,
    description=_DESCRIPTION.format(9) + " (one output: eval steps only)",
)
ONNX_REFERENCE_14 = OnnxReferenceAdapter(
    name="onnx_reference_14", framework="onnx", profile="onnx_reference", opset=14,
    description=_DESCRIPTION.format(14),
)
ONNX_REFERENCE_15 = OnnxReferenceAdapter(
    name="onnx_reference_15", framework="onnx", profile="onnx_reference", opset=15,
    description=_DESCRIPTION.format(15) + " (T, T1, T2: mixed parameter dtypes)",
)
