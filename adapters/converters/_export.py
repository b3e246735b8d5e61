"""The source half of a path whose source and target frameworks live in different environments:
build the source BatchNorm from a Case, export it to ONNX, and check the conversion left the source
untouched, in the source's own interpreter. A worker runs it as a subprocess:

    <python> -m bnspec.adapters.converters._export KIND OUT.onnx  < case.json  > meta.json

KIND is ``torch`` (``torch.onnx.export``, TorchScript exporter, ``TrainingMode.EVAL``; the module
as built, in training mode, as the other torch paths) or ``flax_nnx`` (``jax2onnx.to_onnx`` of an
``nnx.BatchNorm`` with ``use_running_average=True``). The meta holds ``source_changes`` and
``trainable_source`` (:data:`SOURCE_CHECKS`, the source's half of the conversion checks), plus the
exporter's versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bnspec.case import Case
from bnspec.errors import FrameworkError

# What the source's interpreter checks: what changed in the source, its trainable parameters.
SOURCE_CHECKS = ("source_changes", "trainable_source")


def export_onnx(python: str, kind: str, case: Case, timeout: float = 600.0) -> tuple[Any, dict[str, Any]]:
    """Run the export in ``python``; return the ONNX model and the source-side meta."""
    import onnx

    if not Path(python).exists():
        raise FrameworkError("FileNotFoundError", f"the source interpreter {python} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "model.onnx")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
        env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
        proc = subprocess.run(
            [python, "-m", "bnspec.adapters.converters._export", kind, out],
            input=json.dumps(case.to_dict()), capture_output=True, text=True, timeout=timeout,
            env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FrameworkError("ExportFailure", f"{kind} export in {python}: {last}")
        model = onnx.load(out)
    return model, json.loads(proc.stdout.strip().splitlines()[-1])


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


def main(argv: list[str]) -> int:
    kind, out = argv
    case = Case.from_dict(json.loads(sys.stdin.read()))
    meta = {"torch": _torch, "flax_nnx": _flax_nnx}[kind](case, out)
    print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
