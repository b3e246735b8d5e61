"""Chains of conversions whose ends live in different environments: the source is built and
exported in its own interpreter (``_export``, a subprocess), the worker converts the ONNX model
on and runs the whole step plan in the target.

- ``flax_nnx_jax2onnx_onnx2torch``: ``nnx.BatchNorm`` -> ``jax2onnx.to_onnx`` (eval,
  ``use_running_average=True``; envs/jax2onnx) -> ``onnx2torch.convert`` -> torch, trained and
  evaluated in torch (worker in envs/torchvision). Declares the source's profile, ``flax_nnx``;
  the batches are channels-last, as the Flax source takes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Capabilities, channels_first, channels_last
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    capabilities,
    env_python,
    hyperparameters_preserved,
    read_batchnorm,
)
from bnspec.adapters.converters._export import export_onnx
from bnspec.adapters.converters.onnx2torch import _batchnorm, _numpy, _running
from bnspec.case import Case, Result, StepResult

_NOTES = (
    "source: flax.nnx.BatchNorm (channels-last, float32) exported with jax2onnx.to_onnx in "
    "envs/jax2onnx (a subprocess); onnx2torch.convert and the step plan in torch "
    "(envs/torchvision). Flax has no cumulative momentum and always tracks statistics."
)


@dataclass
class FlaxOnnx2TorchAdapter(ConverterAdapter):
    source_family: str = "jax2onnx"
    capabilities: Capabilities = field(default_factory=lambda: capabilities(
        dtypes=("float32",), cumulative_momentum=False, untracked=False, notes=_NOTES))

    def setup(self) -> None:
        import onnx2torch  # noqa: F401
        import torch

        torch.set_num_threads(1)

    def run(self, case: Case) -> Result:
        import onnx2torch
        import torch

        self.check_convertible(case, traced=True)
        model, source_meta = export_onnx(env_python(self.source_family), "flax_nnx", case)
        exported = read_batchnorm(model)
        converted = onnx2torch.convert(model)
        bn, captured = _batchnorm(converted)
        eps = float(getattr(bn, "eps", getattr(bn, "epsilon", float("nan"))))
        momentum = getattr(bn, "momentum", None)
        meta: dict[str, Any] = {"torch": torch.__version__, "onnx": exported.describe(),
                                **{k: v for k, v in source_meta.items()
                                   if k not in ("source_untouched", "source_changes",
                                                "trainable_source")}}
        meta["converted"] = {
            "module": type(bn).__name__, "eps": eps, "momentum": momentum,
            "track_running_stats": getattr(bn, "track_running_stats", None),
            "affine": getattr(bn, "affine", None),
            "ops": sorted({n.op_type for n in model.graph.node}),
        }
        meta["hyperparameters_preserved"] = hyperparameters_preserved(case, eps, momentum)
        out: list[StepResult] = []
        for step in case.steps:
            converted.train(step.mode == "train")
            x = torch.from_numpy(np.asarray(channels_last(step.x, case.rank), np.float32))
            with torch.no_grad():
                y = converted(x)
            res = StepResult(y=channels_first(_numpy(y), case.rank),
                             y_dtype=str(y.dtype).removeprefix("torch."))
            stats = _running(bn, captured)
            if stats is not None:
                res.running_mean, res.running_var = _numpy(stats[0]), _numpy(stats[1])
                res.running_dtype = str(stats[0].dtype).removeprefix("torch.")
            out.append(res)
        meta["state_preserved"] = exported.has_state and bool(
            (exported.running_mean == case.running_mean.astype(np.float32)).all()
            and (exported.running_var == case.running_var.astype(np.float32)).all())
        meta["source_untouched"] = source_meta["source_untouched"]
        meta["source_changes"] = source_meta["source_changes"]
        meta["trainable_source"] = source_meta["trainable_source"]
        meta["trainable_converted"] = {n: int(p.numel()) for n, p in converted.named_parameters()
                                       if p.requires_grad}
        meta["trainable_match"] = (sum(meta["trainable_source"].values())
                                   == sum(meta["trainable_converted"].values()))
        return Result(out, meta)


FLAX_NNX_JAX2ONNX_ONNX2TORCH = FlaxOnnx2TorchAdapter(
    name="flax_nnx_jax2onnx_onnx2torch", framework="onnx2torch", profile="flax_nnx",
    converter="onnx2torch", family="torchvision",
    description="flax.nnx.BatchNorm -> jax2onnx (envs/jax2onnx) -> onnx2torch -> torch, trained "
    "and evaluated in torch (envs/torchvision)",
)
