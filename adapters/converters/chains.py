"""Chains of conversions whose ends live in different environments: the source is built and
exported in its own interpreter (``_export``, a warm helper process of the worker, one per
environment, kept across cases), the worker converts the ONNX model on and runs the whole step plan
in the target.

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
from bnspec.adapters.converters import _torch_source as src
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    capabilities,
    conversion_checks,
    env_python,
    hyperparameters_preserved,
    read_batchnorm,
    state_matches,
)
from bnspec.adapters.converters._export import SOURCE_CHECKS, export_onnx
from bnspec.adapters.converters.onnx2torch import describe_batchnorm, find_batchnorm, running_statistics, to_numpy
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

        from bnspec.adapters.converters._export import prestart

        prestart(env_python(self.source_family), "flax_nnx")  # JAX's imports run beside torch's
        torch.set_num_threads(1)

    def run(self, case: Case) -> Result:
        import onnx2torch
        import torch

        self.check_convertible(case, traced=True)
        model, source_meta = export_onnx(env_python(self.source_family), "flax_nnx", case)
        exported = read_batchnorm(model)
        converted = onnx2torch.convert(model)
        bn, captured = find_batchnorm(converted)
        described = {**describe_batchnorm(bn), "ops": sorted({n.op_type for n in model.graph.node})}
        meta: dict[str, Any] = {"torch": torch.__version__, "onnx": exported.describe(),
                                **{k: v for k, v in source_meta.items() if k not in SOURCE_CHECKS}}
        out: list[StepResult] = []
        for step in case.steps:
            converted.train(step.mode == "train")
            x = torch.from_numpy(np.asarray(channels_last(step.x, case.rank), np.float32))
            with torch.no_grad():
                y = converted(x)
            res = StepResult(y=channels_first(to_numpy(y), case.rank),
                             y_dtype=str(y.dtype).removeprefix("torch."))
            stats = running_statistics(bn, captured)
            if stats is not None:
                res.running_mean, res.running_var = to_numpy(stats[0]), to_numpy(stats[1])
                res.running_dtype = str(stats[0].dtype).removeprefix("torch.")
            out.append(res)
        checks = conversion_checks(
            converted=described,
            hyperparameters_preserved=hyperparameters_preserved(case, described["eps"], described["momentum"]),
            state_preserved=state_matches(case, exported.running, np.float32),
            source_changes=source_meta["source_changes"], trainable_source=source_meta["trainable_source"],
            trainable_converted=src.trainable(converted))
        return Result(out, meta, checks)


FLAX_NNX_JAX2ONNX_ONNX2TORCH = FlaxOnnx2TorchAdapter(
    name="flax_nnx_jax2onnx_onnx2torch", framework="onnx2torch", profile="flax_nnx",
    family="torchvision",
    description="flax.nnx.BatchNorm -> jax2onnx (envs/jax2onnx) -> onnx2torch -> torch, trained "
    "and evaluated in torch (envs/torchvision)",
)
