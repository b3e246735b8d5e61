"""The source half of a path whose source and target frameworks live in different environments:
build the source BatchNorm from a Case, export it to ONNX, and check the conversion left the source
untouched, in the source's own interpreter. The worker keeps that interpreter warm, one helper
process per environment (``_helper``), for the adapter's lifetime:

    <python> -m bnspec.adapters.converters._helper bnspec.adapters.converters._export:handle KIND

answers ``{"kind": KIND, "case": CASE, "out": OUT.onnx}`` with ``{"meta": META}``, the ONNX model
written to OUT.onnx.

KIND is ``torch`` (``torch.onnx.export``, TorchScript exporter, ``TrainingMode.EVAL``; the module
as built, in training mode, as the other torch paths) or ``flax_nnx`` (``jax2onnx.to_onnx`` of an
``nnx.BatchNorm`` with ``use_running_average=True``). The meta holds ``source_changes`` and
``trainable_source`` (:data:`SOURCE_CHECKS`, the source's half of the conversion checks), plus the
exporter's versions. Both exports are functions of the case alone (every setting passed, no name
counters that reach the artifact), so a warm interpreter exports what a fresh one does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from bnspec.case import Case
from bnspec.errors import FrameworkError

# What the source's interpreter checks: what changed in the source, its trainable parameters.
SOURCE_CHECKS = ("source_changes", "trainable_source")
_TARGET = "bnspec.adapters.converters._export:handle"


def _helper(python: str, kind: str) -> Any:
    from bnspec.adapters.converters._helper import helper

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return helper(python, _TARGET, (kind,), env)


def prestart(python: str, kind: str) -> None:
    """Start the exporting interpreter now, without waiting for it (a worker's setup)."""
    if Path(python).exists():
        _helper(python, kind).start()


def export_onnx(python: str, kind: str, case: Case, timeout: float = 600.0) -> tuple[Any, dict[str, Any]]:
    """Run the export in ``python`` (its warm helper); return the ONNX model and the source-side
    meta."""
    import onnx

    from bnspec.adapters.converters._helper import HelperDied

    if not Path(python).exists():
        raise FrameworkError("FileNotFoundError", f"the source interpreter {python} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.onnx")
        try:
            answer = _helper(python, kind).call({"kind": kind, "case": case.to_dict(), "out": out},
                                              timeout)
        except HelperDied as e:
            raise FrameworkError("ExportFailure", f"{kind} export in {python}: {e.last_line}") from None
        if "error" in answer:
            raise FrameworkError("ExportFailure", f"{kind} export in {python}: {answer['error']}")
        model = onnx.load(out)
    return model, answer["meta"]


# -- the helper side ------------------------------------------------------------------------------

def prepare(kind: str) -> None:
    """The imports and settings of the first export, done before any case arrives."""
    import logging

    if kind == "torch":
        import torch

        import bnspec.adapters.torch  # noqa: F401 - the source module's builder

        torch.set_num_threads(1)
    elif kind == "flax_nnx":
        import flax.nnx  # noqa: F401
        import jax2onnx  # noqa: F401

        logging.getLogger().setLevel(logging.ERROR)


def handle(request: dict[str, Any]) -> dict[str, Any]:
    case = Case.from_dict(request["case"])
    return {"meta": _EXPORTS[request["kind"]](case, request["out"])}


def _torch(case: Case, out: str) -> dict[str, Any]:
    import io
    import warnings

    import torch

    from bnspec.adapters.converters import _torch_source as src

    torch.set_num_threads(1)
    module = src.source_module(case)
    before = src.snapshot(module)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # The TorchScript exporter writes to a file object too; its annotation says paths only.
        torch.onnx.export(module, (src.example_input(case, case.steps[0].x),), buffer,  # type: ignore[arg-type]
                          dynamo=False, training=torch.onnx.TrainingMode.EVAL,
                          input_names=["input"], output_names=["output"], opset_version=17)
    Path(out).write_bytes(buffer.getvalue())
    return {"torch": torch.__version__, "source_changes": src.changes(module, before),
            "trainable_source": src.trainable(module)}


def _flax_nnx(case: Case, out: str) -> dict[str, Any]:
    import logging
    from importlib import metadata

    import numpy as np
    from flax import nnx
    from jax2onnx import to_onnx

    from bnspec.adapter import channels_last
    from bnspec.adapters.converters import _flax_source as src

    logging.getLogger().setLevel(logging.ERROR)
    model = src.nnx_source(case, use_running_average=True)
    before = src.arrays(nnx.state(model))
    shape = tuple(np.shape(channels_last(case.steps[0].x, case.rank)))
    onnx_model = to_onnx(model, [shape])
    Path(out).write_bytes(onnx_model.SerializeToString())
    return {"jax2onnx": metadata.version("jax2onnx"),
            "source_changes": src.changes(before, src.arrays(nnx.state(model))),
            "trainable_source": src.sizes(nnx.state(model, nnx.Param))}


_EXPORTS = {"torch": _torch, "flax_nnx": _flax_nnx}
