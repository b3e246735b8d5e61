"""torch.nn.BatchNorm*d -> ``torch.onnx.export`` (TorchScript exporter, ``TrainingMode.EVAL``)
-> ``onnx2torch.convert`` -> a torch ``GraphModule``, trained and evaluated in torch: the round
trip a port project takes to fine-tune a model it only has as ONNX.

Runs in ``envs/torchvision`` (onnx2torch imports torchvision; torch 2.14.1 + torchvision 0.29.1).
The converted module runs each step in the step's mode (``.train()`` / ``.eval()``); its running
statistics are read from the converted BatchNorm (an ``nn.BatchNorm*d`` when every input of the
ONNX node is an initializer, else onnx2torch's functional ``OnnxBatchNorm``, whose running tensors
are captured as they are passed in).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Capabilities
from bnspec.adapters.converters import _torch_source as src
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    capabilities,
    conversion_checks,
    hyperparameters_preserved,
    read_batchnorm,
    state_matches,
)
from bnspec.case import Case, Result, StepResult
from bnspec.errors import UnsupportedFeature

_NOTES = (
    "source: torch.nn.BatchNorm1d/2d/3d; torch.onnx.export(dynamo=False, training=EVAL), then "
    "onnx2torch.convert; the converted module is trained/evaluated in torch (envs/torchvision)."
)


@dataclass
class Onnx2TorchAdapter(ConverterAdapter):
    opset: int | None = None  # None: the exporter's default
    capabilities: Capabilities = field(default_factory=lambda: capabilities(counter=True, notes=_NOTES))

    def setup(self) -> None:
        import onnx  # noqa: F401
        import onnx2torch  # noqa: F401
        import torch

        torch.set_num_threads(1)

    def run(self, case: Case) -> Result:
        import warnings

        import onnx
        import onnx2torch
        import torch

        self.check_convertible(case, traced=True)
        module = src.source_module(case)
        before = src.snapshot(module)
        x0 = src.example_input(case, case.steps[0].x)
        buffer = io.BytesIO()
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # The TorchScript exporter writes to a file object too; its annotation says paths only.
            torch.onnx.export(module, (x0,), buffer, dynamo=False,  # type: ignore[arg-type]
                              training=torch.onnx.TrainingMode.EVAL, input_names=["input"],
                              output_names=["output"], opset_version=self.opset)
        model = onnx.load_from_string(buffer.getvalue())
        exported = read_batchnorm(model)
        converted = onnx2torch.convert(model)
        meta: dict[str, Any] = {"torch": torch.__version__, "onnx": exported.describe()}
        bn, captured = find_batchnorm(converted)
        described = describe_batchnorm(bn)
        out: list[StepResult] = []
        for step in case.steps:
            converted.train(step.mode == "train")
            with torch.no_grad():
                y = converted(src.example_input(case, step.x))
            res = StepResult(y=to_numpy(y), y_dtype=str(y.dtype).removeprefix("torch."))
            stats = running_statistics(bn, captured)
            if stats is not None and case.track_running_stats:
                res.running_mean, res.running_var = to_numpy(stats[0]), to_numpy(stats[1])
                res.running_dtype = str(stats[0].dtype).removeprefix("torch.")
            out.append(res)
        meta["converted_buffers"] = {n: int(b.numel()) for n, b in converted.named_buffers()}
        # The initial state is read from the ONNX artifact: the converted module starts from it
        # (its own buffers have moved by now).
        checks = conversion_checks(
            converted=described,
            hyperparameters_preserved=hyperparameters_preserved(case, described["eps"], described["momentum"]),
            state_preserved=(not case.track_running_stats) or state_matches(case, exported.running),
            source_changes=src.changes(module, before), trainable_source=src.trainable(module),
            trainable_converted=src.trainable(converted))
        return Result(out, meta, checks)


# -- the target side, shared with the paths that end in onnx2torch --------------------------

def find_batchnorm(converted: Any) -> tuple[Any, dict[str, Any]]:
    """The converted BatchNorm, and (for the functional kind) the tensors it was last given."""
    import torch

    found = [m for m in converted.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
             or type(m).__name__ == "OnnxBatchNorm"]
    if len(found) != 1:
        raise UnsupportedFeature(f"the converted module holds {len(found)} BatchNorm modules")
    bn = found[0]
    captured: dict[str, Any] = {}
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            captured["running"] = (args[3], args[4])
        bn.register_forward_pre_hook(hook)
    return bn, captured


def describe_batchnorm(bn: Any) -> dict[str, Any]:
    """What the converted BatchNorm holds: its kind, eps and canonical momentum (torch's own
    convention), whether it tracks statistics and has affine parameters (None: not an attribute
    of the functional kind)."""
    return {
        "module": type(bn).__name__,
        "eps": float(getattr(bn, "eps", getattr(bn, "epsilon", float("nan")))),
        "momentum": getattr(bn, "momentum", None),
        "track_running_stats": getattr(bn, "track_running_stats", None),
        "affine": getattr(bn, "affine", None),
    }


def running_statistics(bn: Any, captured: dict[str, Any]) -> tuple[Any, Any] | None:
    """The converted BatchNorm's running statistics now (tensors), where it has any."""
    if "running" in captured:
        return captured["running"]
    if getattr(bn, "running_mean", None) is not None:
        return bn.running_mean, bn.running_var
    return None


def to_numpy(t: Any) -> np.ndarray:
    import torch

    return t.detach().to(torch.float64).cpu().numpy().copy()


TORCH_ONNX_ONNX2TORCH = Onnx2TorchAdapter(
    name="torch_onnx_onnx2torch", framework="onnx2torch", profile="pytorch",
    family="torchvision",
    description="torch.nn.BatchNorm -> torch.onnx.export(dynamo=False, EVAL) -> onnx2torch -> "
    "torch, trained and evaluated in torch (envs/torchvision)",
)
TORCH_ONNX_ONNX2TORCH_OPSET17 = Onnx2TorchAdapter(
    name="torch_onnx17_onnx2torch", framework="onnx2torch", profile="pytorch",
    family="torchvision", opset=17,
    description="as torch_onnx_onnx2torch, exported at opset 17 (onnx2torch 1.5 has no "
    "Constant-19 converter, which the default opset-20 export of affine=False uses)",
)
