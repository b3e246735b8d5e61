"""torch.nn.BatchNorm*d -> ``torch.onnx.export`` -> ONNX Runtime (CPU), the whole step plan.

Three paths, each declaring the ``pytorch`` profile (the source's):

- ``torch_onnx_ts_eval``: the TorchScript exporter (``dynamo=False``) with
  ``training=TrainingMode.EVAL``, the usual deployment export; train steps run on that
  inference graph too, since it is the only artifact.
- ``torch_onnx_ts_training``: train steps on the ``TrainingMode.TRAINING`` export (a
  BatchNormalization with ``training_mode=1``), eval steps on the ``EVAL`` export; the running
  statistics are graph inputs and the updated ones graph outputs, carried between steps.
- ``torch_onnx_dynamo``: the dynamo exporter (``dynamo=True``; ``training`` is deprecated there:
  the module is exported in the mode of the step, as the docs direct).

Each export is traced on the step's own batch (one artifact per mode and shape).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Literal

from bnspec.adapter import Capabilities
from bnspec.adapters.converters import _torch_source as src
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    capabilities,
    conversion_checks,
    hyperparameters_preserved,
    read_batchnorm,
    run_onnx_plan,
    state_matches,
    trainable_initializers,
)
from bnspec.case import Case, Result

_NOTES = (
    "source: torch.nn.BatchNorm1d/2d/3d (parameters in the input dtype); converted with "
    "torch.onnx.export and run on ONNX Runtime's CPU provider with the running statistics "
    "carried as graph inputs/outputs. ONNX attributes are float32: a float64 model holds "
    "float32(eps) and float32(momentum) (reported in meta, not hidden)."
)


@dataclass
class TorchOnnxAdapter(ConverterAdapter):
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    training_artifact: bool = False  # train steps on a training-mode export
    capabilities: Capabilities = field(default_factory=lambda: capabilities(counter=True, notes=_NOTES))

    def setup(self) -> None:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import torch

        torch.set_num_threads(1)
        if self.exporter == "dynamo":
            import onnxscript  # noqa: F401

    def export(self, module: Any, case: Case, x: Any, mode: str) -> Any:
        """The ONNX model of ``module`` for a step of ``mode`` on batch ``x``."""
        import onnx
        import torch

        if self.exporter == "dynamo":
            # The documented replacement of `training=`: put the module in the mode to export.
            was_training = module.training
            module.train(mode == "train")
            try:
                program = torch.onnx.export(module, (x,), dynamo=True, verbose=False)
            finally:
                module.train(was_training)
            assert program is not None  # dynamo=True returns an ONNXProgram
            return program.model_proto
        training = (torch.onnx.TrainingMode.TRAINING if mode == "train" and self.training_artifact
                    else torch.onnx.TrainingMode.EVAL)
        buffer = io.BytesIO()
        # The TorchScript exporter writes to a file object too; its annotation says paths only.
        torch.onnx.export(module, (x,), buffer, dynamo=False, training=training,  # type: ignore[arg-type]
                          input_names=["input"], output_names=["output"])
        return onnx.load_from_string(buffer.getvalue())

    def run(self, case: Case) -> Result:
        import warnings

        import torch

        self.check_convertible(case, traced=False)  # one artifact per shape
        module = src.source_module(case)
        before = src.snapshot(module)
        artifacts: dict[tuple[str, tuple[int, ...]], Any] = {}

        def artifact(mode: str, shape: tuple[int, ...]) -> Any:
            key = ("train" if mode == "train" and self.training_artifact else "eval", shape)
            if key not in artifacts:
                x = next(s.x for s in case.steps if tuple(s.x.shape) == shape)
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    artifacts[key] = self.export(module, case, src.example_input(case, x), key[0])
            return artifacts[key]

        steps = run_onnx_plan(case, artifact)
        meta: dict[str, Any] = {"torch": torch.__version__, "exporter": self.exporter}
        converted: dict[str, Any] = {}
        trainable: dict[str, int] | None = None  # the eval artifact's, else the first train one's
        for (mode, _), model in sorted(artifacts.items(), key=lambda kv: kv[0][0]):
            converted[mode] = read_batchnorm(model).describe()
            if mode == "eval" or trainable is None:
                trainable = trainable_initializers(model)
        assert trainable is not None  # the plan has a step, so an artifact
        first = read_batchnorm(artifact(case.steps[0].mode, tuple(case.steps[0].x.shape)))
        state_preserved = (not case.track_running_stats) or state_matches(case, first.running)
        if first.running is not None and not state_preserved:
            meta["converted_running_mean"] = first.running[0].astype(float).tolist()
            meta["converted_running_var"] = first.running[1].astype(float).tolist()
        checks = conversion_checks(
            converted=converted,
            hyperparameters_preserved=all(hyperparameters_preserved(case, c["eps"], c["momentum"])
                                          for c in converted.values()),
            state_preserved=state_preserved, source_changes=src.changes(module, before),
            trainable_source=src.trainable(module), trainable_converted=trainable)
        return Result(steps, meta, checks)


TORCH_ONNX_TS_EVAL = TorchOnnxAdapter(
    name="torch_onnx_ts_eval", framework="torch", profile="pytorch",
    extra_frameworks=("onnx", "onnxruntime"),
    description="torch.nn.BatchNorm -> torch.onnx.export(dynamo=False, training=EVAL) -> "
    "ONNX Runtime; train steps run on the inference graph",
)
TORCH_ONNX_TS_TRAINING = TorchOnnxAdapter(
    name="torch_onnx_ts_training", framework="torch", profile="pytorch",
    training_artifact=True, extra_frameworks=("onnx", "onnxruntime"),
    description="torch.nn.BatchNorm -> torch.onnx.export(dynamo=False, training=TRAINING for "
    "train steps, EVAL for eval steps) -> ONNX Runtime with the running statistics carried",
)
TORCH_ONNX_DYNAMO = TorchOnnxAdapter(
    name="torch_onnx_dynamo", framework="torch", profile="pytorch",
    exporter="dynamo", training_artifact=True,
    extra_frameworks=("onnx", "onnxruntime", "onnxscript"),
    description="torch.nn.BatchNorm -> torch.onnx.export(dynamo=True; module in the step's "
    "mode) -> ONNX Runtime with the running statistics carried",
)
