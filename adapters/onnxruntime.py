"""ONNX Runtime (CPU provider) running a one-node ONNX BatchNormalization-15 model.

The model is built with ``onnx.helper``: inputs X, scale, B, input_mean, input_var; attributes
epsilon, momentum and training_mode. A training step runs ``training_mode=1`` with the outputs
Y, running_mean, running_var, and the running statistics are fed back as the next step's
input_mean/input_var; an eval step runs ``training_mode=0``.

ONNX's attributes ``epsilon`` and ``momentum`` are 32-bit floats (``AttributeProto.f``), and the
CPU kernel keeps them as C++ ``float`` (onnxruntime/core/providers/cpu/nn/batch_norm.h): a float64
model cannot carry eps=1e-5 or momentum=0.9 exactly, so a float64 case whose eps or ONNX momentum
is not a float32 value is unsupported (in float32/float16 the rounding is below the data's own).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, StepResult
from bnspec.errors import UnsupportedFeature

OPSET = 15
_INPUTS = ("X", "scale", "B", "input_mean", "input_var")

_CAPS = Capabilities(
    ranks=(2, 3, 4, 5),
    dtypes=("float64", "float32", "float16"),
    gradients=False,
    cumulative_momentum=False,
    frozen=False,
    affine_off=False,
    untracked=False,
    eval_steps=True,
    train_steps=True,
    notes=(
        "ONNX BatchNormalization-15 on ONNX Runtime's CPU provider, one thread. training_mode=1 "
        "is implemented on CPU for float32/float64/float16 (probed with onnxruntime 1.32); "
        "bfloat16 has no CPU kernel. No affine=False (scale and B are required inputs), no "
        "cumulative momentum, no gradients (inference runtime), no batch statistics (the "
        "saved_mean/saved_var outputs were removed in opset 14). epsilon and momentum are "
        "float32 attributes: a float64 case needs eps and 1 - momentum exactly representable in "
        "float32 (else UnsupportedFeature)."
    ),
)

_TENSOR_TYPE = {"float64": "DOUBLE", "float32": "FLOAT", "float16": "FLOAT16"}


@dataclass
class OnnxRuntimeAdapter(Adapter):
    capabilities: Capabilities = field(default_factory=lambda: _CAPS)
    extra_frameworks: tuple[str, ...] = ("onnx",)

    def __post_init__(self) -> None:
        self._sessions: dict[tuple[Any, ...], Any] = {}

    def setup(self) -> None:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401

    def run(self, case: Case) -> Result:
        if not case.affine:
            raise UnsupportedFeature(
                "affine=False: ONNX BatchNormalization requires scale and B inputs; feeding "
                "ones/zeros would be the adapter choosing the semantics"
            )
        self.check_supported(case)
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature(
                f"param_dtype {case.param_dtype} != dtype {case.dtype}: the adapter builds "
                "models with one element type (T = T1 = T2)"
            )
        assert case.momentum is not None and case.gamma is not None and case.beta is not None
        dt = np.dtype(case.dtype)
        # ONNX momentum weighs the running statistic: r <- momentum r + (1 - momentum) b.
        onnx_momentum = 1.0 - case.momentum
        _check_attribute_precision(case.dtype, eps=case.eps, momentum=onnx_momentum)
        mean, var = case.running_mean.astype(dt), case.running_var.astype(dt)
        scale, bias = case.gamma.astype(dt), case.beta.astype(dt)
        out: list[StepResult] = []
        for step in case.steps:
            training = step.mode == "train"
            session = self._session(case.rank, case.dtype, training, case.eps, onnx_momentum)
            feeds = {"X": step.x.astype(dt), "scale": scale, "B": bias,
                     "input_mean": mean, "input_var": var}
            outputs = session.run(None, feeds)
            if training:
                mean, var = outputs[1], outputs[2]
            out.append(
                StepResult(
                    y=np.asarray(outputs[0], dtype=np.float64),
                    running_mean=np.asarray(mean, dtype=np.float64).copy(),
                    running_var=np.asarray(var, dtype=np.float64).copy(),
                    y_dtype=str(outputs[0].dtype),
                    running_dtype=str(np.asarray(mean).dtype),
                )
            )
        return Result(out, {"opset": OPSET, "provider": "CPUExecutionProvider"})

    def _session(self, rank: int, dtype: str, training: bool, eps: float, momentum: float) -> Any:
        key = (rank, dtype, training, eps, momentum)
        if key not in self._sessions:
            import onnxruntime as ort

            model = build_model(rank, dtype, training, eps, momentum)
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            try:
                self._sessions[key] = ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            except Exception as e:  # ORT raises NotImplemented for a missing kernel
                if "NOT_IMPLEMENTED" in str(e) or "Could not find an implementation" in str(e):
                    mode = "training_mode=1" if training else "training_mode=0"
                    raise UnsupportedFeature(
                        f"ONNX Runtime CPU has no BatchNormalization kernel for {dtype} "
                        f"({mode}): {str(e).splitlines()[0]}"
                    ) from None
                raise
        return self._sessions[key]

    def snippet(self, case: Case) -> str:
        m = case.momentum
        lines = [
            "import numpy as np, onnx, onnxruntime as ort",
            "from onnx import helper, TensorProto",
            f"T, dt = TensorProto.{_TENSOR_TYPE.get(case.dtype, 'FLOAT')}, np.{case.dtype}",
            f"shape = ['N', 'C'] + ['d%d' % i for i in range({case.rank - 2})]",
            "def session(training):",
            "    outs = ['Y'] + (['running_mean', 'running_var'] if training else [])",
            "    node = helper.make_node('BatchNormalization', "
            f"{list(_INPUTS)!r}, outs, epsilon={case.eps!r}, "
            f"momentum={None if m is None else 1.0 - m!r}, training_mode=int(training))",
            "    ins = [helper.make_tensor_value_info('X', T, shape)] + "
            f"[helper.make_tensor_value_info(n, T, ['C']) for n in {list(_INPUTS[1:])!r}]",
            "    o = [helper.make_tensor_value_info('Y', T, shape)] + "
            "[helper.make_tensor_value_info(n, T, ['C']) for n in outs[1:]]",
            "    g = helper.make_graph([node], 'bn', ins, o)",
            f"    model = helper.make_model(g, opset_imports=[helper.make_opsetid('', {OPSET})])",
            "    so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1",
            "    return ort.InferenceSession(model.SerializeToString(), so, "
            "providers=['CPUExecutionProvider'])",
            f"scale = np.array({_lst(case.gamma)}, dt)",
            f"B = np.array({_lst(case.beta)}, dt)",
            f"mean = np.array({_lst(case.running_mean)}, dt)",
            f"var = np.array({_lst(case.running_var)}, dt)",
        ]
        for i, step in enumerate(case.steps):
            training = step.mode == "train"
            lines.append(f"x{i} = np.array({step.x.tolist()!r}, dt)")
            lines.append(
                f"out = session({training}).run(None, dict(X=x{i}, scale=scale, B=B, "
                "input_mean=mean, input_var=var))"
            )
            if training:
                lines.append("mean, var = out[1], out[2]")
            lines.append(f"print('step {i}', out[0], mean, var)")
        return "\n".join(lines)


def build_model(rank: int, dtype: str, training: bool, eps: float, momentum: float) -> Any:
    """The one-node BatchNormalization-15 model; momentum is ONNX's (weight of the running)."""
    from onnx import TensorProto, helper

    elem = getattr(TensorProto, _TENSOR_TYPE[dtype])
    outs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node(
        "BatchNormalization", list(_INPUTS), outs,
        epsilon=float(eps), momentum=float(momentum), training_mode=int(training),
    )
    shape: list[str | int] = ["N", "C", *(f"D{i}" for i in range(rank - 2))]
    inputs = [helper.make_tensor_value_info("X", elem, shape)] + [
        helper.make_tensor_value_info(n, elem, ["C"]) for n in _INPUTS[1:]
    ]
    outputs = [helper.make_tensor_value_info("Y", elem, shape)] + [
        helper.make_tensor_value_info(n, elem, ["C"]) for n in outs[1:]
    ]
    graph = helper.make_graph([node], "batchnorm", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model


def _check_attribute_precision(dtype: str, **attributes: float) -> None:
    # AttributeProto.f is a 32-bit float: a float64 model holds float32(eps), float32(momentum).
    # In float32/float16 that rounding is within the data's own roundoff; in float64 it is not.
    if dtype != "float64":
        return
    for name, value in attributes.items():
        if float(np.float32(value)) != value:
            raise UnsupportedFeature(
                f"{name}={value!r} in a float64 model: ONNX attributes are float32 "
                f"(AttributeProto.f), so the model would hold {float(np.float32(value))!r}"
            )


def _lst(a: np.ndarray | None) -> str:
    return repr(None if a is None else a.tolist())


ONNXRUNTIME = OnnxRuntimeAdapter(
    name="onnxruntime",
    framework="onnxruntime",
    profile="onnx",
    description="a one-node ONNX BatchNormalization-15 model on ONNX Runtime's CPU provider",
)
