"""torch.nn.BatchNorm*d -> ``torch.onnx.export`` (TorchScript exporter, ``TrainingMode.EVAL``,
opset 17) -> ``onnx2tf.convert`` -> a TensorFlow (tf_keras) model, trained and evaluated in
TensorFlow: each step calls the converted model with ``training=`` the step's mode.

onnx2tf 2.x needs Python >= 3.12 and pins its own onnx/onnxruntime/protobuf, so the worker runs in
``envs/onnx2tf``, which has no torch: the source is built and exported in the main environment's
interpreter (``_export``, a warm helper process of the worker, started with it and kept across
cases; ``BNSPEC_TORCH_PYTHON`` overrides ``<repo>/.venv``), the conversion and the step plan run in
the worker.

onnx2tf's default back end in 2.x (``flatbuffer_direct``) lowers ONNX straight to a .tflite file
and returns no TensorFlow model; ``tflite_backend="tf_converter"`` is the one that builds the
TensorFlow model, and ``disable_model_save=True`` returns it without writing SavedModel/TFLite
files. onnx2tf lowers BatchNormalization to ``tf.nn.batch_normalization`` over constants, which
TensorFlow folds into one Mul and one Add (``scale * rsqrt(var + eps)``,
``B - mean * scale * rsqrt(var + eps)``): the model has no weights and no state, eps and momentum
are not readable any more (``hyperparameters_preserved`` and ``state_preserved`` are None, as for
tf2onnx's arithmetic lowering), and a train step runs the same folded arithmetic as an eval step.
The folded constants are read back and compared with the source's (``folded_constants_match``)
and with the exported graph's (``folded_constants_match_onnx``; they differ for float64, whose eps
the ONNX attribute holds as float32).

Network: onnx2tf 2.6.9 needs none at conversion time (its TFLite schema is bundled, test data are
random unless ``test_data_nhwc_path`` is given, and the calibration image of older versions is only
for int8 quantization, which is not asked for). The conversion runs with outgoing connections
refused and any attempt recorded in ``meta["network_attempts"]``, so a version that starts to
fetch something shows up instead of hanging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnspec.adapter import Capabilities, channels_first, channels_last
from bnspec.adapters.converters._common import ConverterAdapter, capabilities, conversion_checks, read_batchnorm
from bnspec.case import Case, Result, StepResult
from bnspec.errors import FrameworkError

_OPTIONS: dict[str, Any] = {"tflite_backend": "tf_converter", "disable_model_save": True,
                            "non_verbose": True, "verbosity": "error"}
_NOTES = (
    "source: torch.nn.BatchNorm1d/2d/3d exported with torch.onnx.export(dynamo=False, "
    "training=EVAL, opset 17) in the main environment (a subprocess); onnx2tf.convert("
    "tflite_backend='tf_converter', disable_model_save=True) in envs/onnx2tf; the tf_keras model "
    "is called with training=<step mode> on channels-last batches (onnx2tf's NCHW -> NHWC). "
    "onnx2tf needs no network: it runs with outgoing connections refused (meta network_attempts)."
)


def torch_python() -> str:
    """The interpreter that builds and exports the torch source: the one running bnspec (the
    worker is told it as BNSPEC_CALLER_PYTHON), or BNSPEC_TORCH_PYTHON."""
    return (os.environ.get("BNSPEC_TORCH_PYTHON") or os.environ.get("BNSPEC_CALLER_PYTHON")
            or sys.executable)


def _torch_python_has_torch() -> bool:
    python = torch_python()
    if not Path(python).exists():
        return False
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    return True


@dataclass
class Onnx2TfAdapter(ConverterAdapter):
    capabilities: Capabilities = field(default_factory=lambda: capabilities(counter=True, notes=_NOTES))

    def installed(self) -> bool:
        return super().installed() and _torch_python_has_torch()

    def setup(self) -> None:
        import logging

        import onnx2tf  # noqa: F401
        import tensorflow as tf

        from bnspec.adapters.converters._export import prestart

        prestart(torch_python(), "torch")  # torch's imports run beside TensorFlow's
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)

    def run(self, case: Case) -> Result:
        from importlib import metadata

        import tensorflow as tf

        from bnspec.adapters.converters._export import export_onnx

        self.check_convertible(case, traced=True)
        onnx_model, source_meta = export_onnx(torch_python(), "torch", case)
        exported = read_batchnorm(onnx_model)
        model, attempts = _convert(onnx_model)
        meta: dict[str, Any] = {
            "torch": source_meta.get("torch"), "onnx2tf": metadata.version("onnx2tf"),
            "tensorflow": tf.__version__, "onnx2tf_options": dict(_OPTIONS),
            "onnx": exported.describe(), "network_attempts": attempts,
        }
        x_shape = tuple(case.steps[0].x.shape)
        in_layout = _layout(tuple(model.inputs[0].shape), x_shape, case.rank)
        out_layout = _layout(tuple(model.outputs[0].shape), x_shape, case.rank)
        meta["layout"] = {"input": in_layout, "output": out_layout}
        dtype = model.inputs[0].dtype.as_numpy_dtype
        bn_layers = [lay for lay in model.layers if hasattr(lay, "moving_mean")]
        # onnx2tf 2.6.9 folds the BatchNorm away; a version that keeps a Keras BatchNormalization
        # would carry its moving statistics itself (training=True updates them in place).
        stateful = bn_layers[0] if len(bn_layers) == 1 and case.track_running_stats else None
        out: list[StepResult] = []
        for step in case.steps:
            x = channels_last(step.x, case.rank) if in_layout == "channels_last" else step.x
            y = model(tf.constant(np.asarray(x, dtype=dtype)), training=step.mode == "train")
            y = np.asarray(y)
            y64 = y.astype(np.float64)
            res = StepResult(y=channels_first(y64, case.rank) if out_layout == "channels_last"
                             else y64, y_dtype=str(y.dtype))
            if stateful is not None:
                res.running_mean = np.array(stateful.moving_mean.numpy(), np.float64)
                res.running_var = np.array(stateful.moving_variance.numpy(), np.float64)
                res.running_dtype = stateful.moving_mean.dtype.name
            out.append(res)
        converted = _describe(model)
        meta["state_readable"] = converted["has_state"]
        meta["folded_constants_match"] = _folded_match(case, converted)
        # Against the exported graph's own eps and statistics: a mismatch above that vanishes
        # here is the export's (ONNX attributes are float32), not onnx2tf's.
        meta["folded_constants_match_onnx"] = _folded_match(case, converted, exported.eps, exported.running)
        checks = conversion_checks(
            # eps and the running statistics are folded into the Mul/Add constants and momentum
            # has nowhere to live: neither is readable as such (the folded constants are, above).
            converted=converted, hyperparameters_preserved=None, state_preserved=None,
            source_changes=source_meta["source_changes"], trainable_source=source_meta["trainable_source"],
            trainable_converted={w.name: int(np.prod(w.shape)) for w in model.trainable_weights})
        return Result(out, meta, checks)


def _convert(onnx_model: Any) -> tuple[Any, list[str]]:
    """onnx2tf.convert with outgoing connections refused; the model and the refused addresses."""
    import contextlib
    import io
    import tempfile

    import onnx2tf
    import tf_keras

    # A fresh interpreter's Keras state: onnx2tf builds a tf_keras model, whose layer names (in
    # the conversion record) would otherwise count on from the previous case's in a warm worker.
    tf_keras.backend.clear_session()
    log = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp, _no_network() as attempts, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            model = onnx2tf.convert(onnx_graph=onnx_model, output_folder_path=tmp, **_OPTIONS)
        except SystemExit as e:  # onnx2tf reports a failed conversion with sys.exit(1)
            raise FrameworkError("ConversionFailure", f"onnx2tf exited ({e.code}): "
                                 f"{_last_lines(log.getvalue())}") from None
        except Exception as e:  # noqa: BLE001 - the converter's failure is the finding
            raise FrameworkError(type(e).__name__, f"onnx2tf: {e}") from None
    if model is None:
        raise FrameworkError("ConversionFailure", "onnx2tf returned no model: "
                             f"{_last_lines(log.getvalue())}")
    return model, attempts


def _last_lines(text: str, n: int = 3) -> str:
    lines = [s.strip() for s in text.splitlines() if s.strip() and "it/s" not in s]
    return " | ".join(lines[-n:]) or "(no output)"


@contextmanager
def _no_network() -> Iterator[list[str]]:
    import socket

    attempts: list[str] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(sock: Any, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(repr(address))
            raise ConnectionRefusedError(f"bnspec: no network for the converter ({address!r})")
        return connect(sock, address)

    def refuse_ex(sock: Any, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(repr(address))
            return 111  # ECONNREFUSED
        return connect_ex(sock, address)

    socket.socket.connect, socket.socket.connect_ex = refuse, refuse_ex  # type: ignore[method-assign]
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]


def _layout(graph_shape: tuple[Any, ...], x_shape: tuple[int, ...], rank: int) -> str:
    """Which layout the converted model's tensor has. onnx2tf moves channels last at ranks 3 to 5
    by default; where the two shapes coincide (C equal to every spatial size) that default holds."""
    last = tuple(np.shape(channels_last(np.empty(x_shape), rank)))
    if rank > 2 and graph_shape == last:
        return "channels_last"
    if graph_shape == x_shape:
        return "channels_first"
    raise FrameworkError("LayoutMismatch", f"the converted model's tensor has shape "
                         f"{graph_shape}, the batch {x_shape}")


def _describe(model: Any) -> dict[str, Any]:
    """The converted model's layers, weights, and the constants of a folded Mul/Add pair."""
    layers = [(type(lay).__name__, lay.name) for lay in model.layers]
    ops = [getattr(getattr(lay, "function", None), "__name__", type(lay).__name__)
           for lay in model.layers if type(lay).__name__ != "InputLayer"]
    constants = []
    for lay in model.layers:
        for node in getattr(lay, "inbound_nodes", []):
            for a in [*node.call_args, *node.call_kwargs.values()]:
                if hasattr(a, "numpy") and not type(a).__name__.startswith("Keras"):
                    constants.append(np.asarray(a.numpy(), np.float64))
    bn_layers = [lay for lay in model.layers if "BatchNormalization" in type(lay).__name__]
    described: dict[str, Any] = {
        "layers": [f"{kind}:{name}" for kind, name in layers], "ops": ops,
        "batchnorm_layers": len(bn_layers), "weights": {w.name: int(np.prod(w.shape))
                                                        for w in model.weights},
        "has_state": bool(model.non_trainable_weights), "eps": None, "momentum": None,
    }
    if ops == ["multiply", "_add_dispatch"] and len(constants) == 2:
        described["folded_scale"] = constants[0].tolist()
        described["folded_shift"] = constants[1].tolist()
    return described


def _folded_match(case: Case, converted: dict[str, Any], eps: float | None = None,
                  running: tuple[np.ndarray, np.ndarray] | None = None) -> bool | None:
    """The folded constants equal gamma * rsqrt(running_var + eps) and
    beta - running_mean * that, from the source's values (or the given eps and statistics: the
    exported ONNX graph's), within a few ulps of the case's dtype."""
    if "folded_scale" not in converted or not case.track_running_stats:
        return None
    gamma = case.gamma if case.affine else np.ones(case.num_features)
    beta = case.beta if case.affine else np.zeros(case.num_features)
    assert gamma is not None and beta is not None
    mean, var = running if running is not None else (case.running_mean, case.running_var)
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    scale = np.asarray(gamma, np.float64) / np.sqrt(var + (case.eps if eps is None else eps))
    shift = np.asarray(beta, np.float64) - mean * scale
    tol = 4 * float(np.finfo(case.dtype).eps)
    # shift = beta - mean * scale may cancel: its error is relative to the larger term.
    big = np.maximum(np.abs(beta), np.abs(mean * scale))
    return bool(np.all(np.abs(np.asarray(converted["folded_scale"]) - scale) <= tol * np.abs(scale))
                and np.all(np.abs(np.asarray(converted["folded_shift"]) - shift) <= 2 * tol * big))


TORCH_ONNX_ONNX2TF = Onnx2TfAdapter(
    name="torch_onnx_onnx2tf", framework="onnx2tf", profile="pytorch",
    family="onnx2tf", extra_frameworks=("tensorflow-cpu", "tf-keras"),
    description="torch.nn.BatchNorm -> torch.onnx.export(dynamo=False, EVAL; main environment) "
    "-> onnx2tf (tf_converter back end) -> TensorFlow, trained and evaluated in TensorFlow "
    "(envs/onnx2tf)",
)
