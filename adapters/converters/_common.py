"""What the conversion paths share: converter environments, ONNX graph reading and surgery, and a
step-plan runner that carries the running statistics through an ONNX graph on ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, ConversionChecks, StepResult
from bnspec.errors import UnsupportedFeature

STATE_INPUTS = ("bnspec_running_mean", "bnspec_running_var")
STATE_OUTPUTS = ("bnspec_new_running_mean", "bnspec_new_running_var")


def env_python(family: str) -> str:
    """The interpreter of converter family ``family``, ``<root>/<family>/.venv/bin/python``, where
    bnspec.envpaths.envs_root() is the root (``BNSPEC_ENVS``; a checkout's ``envs/``; the user data
    folder) and ``bnspec envs create <family>`` builds it."""
    from bnspec.envpaths import env_python as python_of

    return str(python_of(family))


@dataclass
class ConverterAdapter(Adapter):
    """A conversion path. ``family`` names its own environment (None: the CLI's)."""

    family: str | None = None

    def __post_init__(self) -> None:
        if self.family is not None and self.python is None:
            self.python = env_python(self.family)

    def installed(self) -> bool:
        if self.family is not None:
            return self.python is not None and Path(self.python).exists()
        return super().installed()

    def check_convertible(self, case: Case, *, traced: bool) -> None:
        """check_supported, and what a conversion needs besides: one element type (an exported
        graph has one) and, for a conversion ``traced`` on one example input, one input shape
        for every step."""
        self.check_supported(case)
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature(f"param_dtype {case.param_dtype} != dtype {case.dtype}: the "
                                     "exported graph has one element type")
        if traced and len({s.x.shape for s in case.steps}) > 1:
            raise UnsupportedFeature("steps of different shapes: the conversion is traced on one")


def capabilities(**overrides: Any) -> Capabilities:
    base: dict[str, Any] = dict(
        ranks=(2, 3, 4, 5), dtypes=("float64", "float32"), gradients=False,
        cumulative_momentum=True, affine_off=True, untracked=True, initial_running=True,
    )
    base.update(overrides)
    return Capabilities(**base)


def canonical_momentum(onnx_momentum: float | None) -> float | None:
    """ONNX (like Keras) weighs the running statistic: r <- m r + (1 - m) b."""
    return None if onnx_momentum is None else 1.0 - onnx_momentum


def hyperparameters_preserved(case: Case, eps: float | None, momentum: float | None) -> bool:
    """eps and canonical momentum read back equal the source's. A float32 or float16 case
    tolerates the rounding of a float32 attribute (eps relative, momentum absolute, since ONNX
    stores 1 - momentum); a float64 case needs them exact."""
    def same(a: float | None, b: float | None, absolute: bool) -> bool:
        if a is None or b is None:
            return a is b
        if case.dtype == "float64":
            return a == b
        return abs(a - b) <= 2.0**-23 * (1.0 if absolute else max(abs(a), abs(b)))

    return same(eps, case.eps, False) and (
        not case.track_running_stats or same(momentum, case.momentum, True))


def state_matches(case: Case, running: tuple[np.ndarray, np.ndarray] | None, dtype: Any = None) -> bool:
    """The artifact's initial running statistics ``running`` (None: it holds none) equal the
    source's, the source's rounded to ``dtype`` (None: each to the artifact's own dtype)."""
    if running is None:
        return False
    mean, var = running
    return bool((mean == case.running_mean.astype(mean.dtype if dtype is None else dtype)).all()
                and (var == case.running_var.astype(var.dtype if dtype is None else dtype)).all())


def conversion_checks(*, converted: dict[str, Any], hyperparameters_preserved: bool | None,
                      state_preserved: bool | None, source_changes: Sequence[str],
                      trainable_source: dict[str, int],
                      trainable_converted: dict[str, int]) -> ConversionChecks:
    """What every conversion path reports about the conversion itself (see ConversionChecks):
    the source is untouched when nothing in it changed, and the trainable parameters match when
    both sides count as many elements."""
    return ConversionChecks(
        hyperparameters_preserved=hyperparameters_preserved,
        state_preserved=state_preserved,
        source_untouched=not source_changes,
        trainable_match=sum(trainable_source.values()) == sum(trainable_converted.values()),
        converted=converted,
        source_changes=tuple(source_changes),
        trainable_source=dict(trainable_source),
        trainable_converted=dict(trainable_converted),
    )


# -- ONNX ---------------------------------------------------------------------------------------

def _producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def constant_value(model: Any, name: str) -> np.ndarray | None:
    """The value of tensor ``name`` when it is a constant: an initializer, a Constant node, or
    an Identity/Cast chain of those (exporters deduplicate equal initializers into Identities)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producers = _producers(model)
    for _ in range(16):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(helper.get_attribute_value(a))
            return None
        if node.op_type not in ("Identity", "Cast"):
            return None
        name = node.input[0]
    return None


def batchnorm_nodes(model: Any) -> list[Any]:
    return [n for n in model.graph.node if n.op_type == "BatchNormalization"]


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


@dataclass
class OnnxBatchNorm:
    """What an ONNX artifact says about its (single) BatchNormalization."""

    nodes: int
    eps: float | None = None
    onnx_momentum: float | None = None
    training_mode: int | None = None
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    running_mean: np.ndarray | None = None  # None: not a constant (computed, or absent)
    running_var: np.ndarray | None = None
    scale_is_initializer: bool = False
    opset: int | None = None

    @property
    def has_state(self) -> bool:
        return self.running is not None

    @property
    def running(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The initial running statistics (mean, var), where the artifact holds them."""
        if self.running_mean is None or self.running_var is None:
            return None
        return self.running_mean, self.running_var

    def describe(self) -> dict[str, Any]:
        return {
            "batchnorm_nodes": self.nodes,
            "eps": self.eps,
            "momentum": canonical_momentum(self.onnx_momentum),
            "onnx_momentum": self.onnx_momentum,
            "training_mode": self.training_mode,
            "has_state": self.has_state,
            "affine_initializers": self.scale_is_initializer,
            "opset": self.opset,
        }


def read_batchnorm(model: Any) -> OnnxBatchNorm:
    nodes = batchnorm_nodes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if len(nodes) != 1:
        return OnnxBatchNorm(nodes=len(nodes), opset=opset)
    node = nodes[0]
    inits = {t.name for t in model.graph.initializer}
    return OnnxBatchNorm(
        nodes=1,
        eps=float(_attr(node, "epsilon", 1e-5)),
        onnx_momentum=float(_attr(node, "momentum", 0.9)),
        training_mode=int(_attr(node, "training_mode", 0)),
        scale=constant_value(model, node.input[1]),
        bias=constant_value(model, node.input[2]),
        running_mean=constant_value(model, node.input[3]),
        running_var=constant_value(model, node.input[4]),
        scale_is_initializer=node.input[1] in inits and node.input[2] in inits,
        opset=opset,
    )


def trainable_initializers(model: Any) -> dict[str, int]:
    """Initializers feeding a BatchNormalization's scale and B: what a training runtime would
    treat as its parameters (running statistics and shape constants are not)."""
    inits = {t.name: t for t in model.graph.initializer}
    out: dict[str, int] = {}
    for node in batchnorm_nodes(model):
        for name in node.input[1:3]:
            if name in inits:
                out[name] = int(np.prod(inits[name].dims))
    return out


def with_state_io(model: Any) -> Any:
    """A copy of ``model`` whose BatchNormalization reads its running statistics from graph
    inputs and, with training_mode=1, exposes the updated ones as graph outputs: how a training
    runtime carries them from step to step. Unchanged when the statistics are not constants."""
    from onnx import helper

    model = _copy(model)
    info = read_batchnorm(model)
    if info.nodes != 1 or info.running is None:
        return model
    node = batchnorm_nodes(model)[0]
    running_mean = info.running[0]
    elem = helper.np_dtype_to_tensor_dtype(running_mean.dtype)
    c = int(running_mean.shape[0])
    node.input[3], node.input[4] = STATE_INPUTS
    for name in STATE_INPUTS:
        model.graph.input.append(helper.make_tensor_value_info(name, elem, [c]))
    if info.training_mode == 1:
        outs = list(node.output) + [""] * (3 - len(node.output))
        outs[1:3] = STATE_OUTPUTS
        del node.output[:]
        node.output.extend(outs)
        for name in STATE_OUTPUTS:
            model.graph.output.append(helper.make_tensor_value_info(name, elem, [c]))
    return model


def _copy(model: Any) -> Any:
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def ort_session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # unused-initializer notes after the state surgery
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _np_dtype(elem_type: int) -> Any:
    from onnx import helper

    return helper.tensor_dtype_to_np_dtype(elem_type)


def run_onnx_plan(case: Case, artifact: Callable[..., Any],
                  layout: str = "channels_first", frozen_aware: bool = False) -> list[StepResult]:
    """Run the step plan through ONNX artifacts on ONNX Runtime, carrying the running statistics.

    ``artifact(mode, shape)`` is the model that runs a step of that mode and batch shape (an
    inference-only path returns its eval model for train steps too: the finding is then what it
    does with a training batch). The initial state is what the artifact of step 0 holds.
    ``layout="channels_last"``: the artifact takes and returns (N, *spatial, C) batches.
    ``frozen_aware``: the artifact is called ``artifact(mode, shape, frozen=step.frozen)`` (a
    frozen layer called in training mode is exported as such)."""
    from bnspec.adapter import channels_first, channels_last

    def to_graph(x: np.ndarray) -> np.ndarray:
        return channels_last(x, case.rank) if layout == "channels_last" else x

    def from_graph(y: np.ndarray) -> np.ndarray:
        return channels_first(y, case.rank) if layout == "channels_last" else y

    sessions: dict[int, tuple[Any, Any]] = {}

    def artifact_of(step: Any) -> Any:
        shape = tuple(to_graph(step.x).shape)
        return (artifact(step.mode, shape, frozen=step.frozen) if frozen_aware
                else artifact(step.mode, shape))

    def session(step: Any) -> tuple[Any, Any]:
        model = artifact_of(step)
        if id(model) not in sessions:
            stateful = with_state_io(model)
            sessions[id(model)] = (ort_session(stateful), stateful)
        return sessions[id(model)]

    state = read_batchnorm(artifact_of(case.steps[0])).running
    out: list[StepResult] = []
    for step in case.steps:
        sess, model = session(step)
        inputs = [i.name for i in sess.get_inputs()]
        x_name = next(n for n in inputs if n not in STATE_INPUTS)
        feeds: dict[str, Any] = {x_name: to_graph(step.x).astype(_onnx_input_dtype(model, x_name))}
        if STATE_INPUTS[0] in inputs:
            if state is None:
                raise UnsupportedFeature("an artifact reads running statistics that the artifact "
                                         "of the first step does not hold")
            feeds.update(zip(STATE_INPUTS, state, strict=True))
        names = [o.name for o in sess.get_outputs()]
        values = dict(zip(names, sess.run(None, feeds), strict=True))
        y = values[names[0]]
        if STATE_OUTPUTS[0] in values:
            state = (values[STATE_OUTPUTS[0]], values[STATE_OUTPUTS[1]])
        res = StepResult(y=from_graph(np.asarray(y, dtype=np.float64)), y_dtype=str(y.dtype))
        if state is not None and case.track_running_stats:
            res.running_mean = np.asarray(state[0], dtype=np.float64).copy()
            res.running_var = np.asarray(state[1], dtype=np.float64).copy()
            res.running_dtype = str(state[0].dtype)
        out.append(res)
    return out


def _onnx_input_dtype(model: Any, name: str) -> Any:
    for i in model.graph.input:
        if i.name == name:
            return _np_dtype(i.type.tensor_type.elem_type)
    raise KeyError(name)
