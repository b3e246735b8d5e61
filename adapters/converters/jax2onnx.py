"""Flax BatchNorm -> ``jax2onnx.to_onnx`` -> ONNX Runtime (CPU), the whole step plan.

Runs in ``envs/jax2onnx`` (jax2onnx pulls packages that would move the main environment's).

- ``flax_nnx_jax2onnx``: an ``nnx.BatchNorm`` exported as a module, in the step's mode
  (``use_running_average`` False for train steps, True for eval steps); the running statistics
  are initializers of the graph, carried between steps as graph inputs/outputs where the graph's
  BatchNormalization produces them.
- ``flax_linen_jax2onnx``: a ``linen.BatchNorm`` exported as the pure functions a JAX training
  loop runs: ``train(x, mean, var) -> (y, new_mean, new_var)`` (``apply`` with
  ``mutable=["batch_stats"]``) and ``eval(x, mean, var) -> y``; the statistics are the graph's
  own inputs and outputs, fed back step to step.

Both declare the source's profile (``flax_nnx`` / ``flax_linen``); inputs are channels-last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bnspec.adapter import Capabilities, channels_first, channels_last
from bnspec.adapters.converters import _flax_source as src
from bnspec.adapters.converters._common import (
    ConverterAdapter,
    canonical_momentum,
    capabilities,
    conversion_checks,
    hyperparameters_preserved,
    ort_session,
    read_batchnorm,
    run_onnx_plan,
    state_matches,
    trainable_initializers,
)
from bnspec.case import Case, Result, StepResult

_NOTES = (
    "source: flax BatchNorm (channels-last, float32, x64 off); converted with jax2onnx.to_onnx "
    "and run on ONNX Runtime's CPU provider (envs/jax2onnx). Flax has no cumulative momentum "
    "and always tracks running statistics."
)


@dataclass
class Jax2OnnxAdapter(ConverterAdapter):
    api: Literal["nnx", "linen"] = "nnx"
    capabilities: Capabilities = field(default_factory=lambda: capabilities(
        dtypes=("float32",), cumulative_momentum=False, untracked=False, notes=_NOTES))

    def setup(self) -> None:
        import logging

        import flax  # noqa: F401
        import jax2onnx  # noqa: F401
        import onnxruntime  # noqa: F401

        logging.getLogger().setLevel(logging.ERROR)  # the inference-mode warning is in meta

    def run(self, case: Case) -> Result:
        self.check_convertible(case, traced=False)
        assert case.momentum is not None
        if self.api == "nnx":
            return self._run_nnx(case)
        return self._run_linen(case)

    def _run_nnx(self, case: Case) -> Result:
        from flax import nnx
        from jax2onnx import to_onnx

        model = src.nnx_source(case, use_running_average=False)
        before = src.arrays(nnx.state(model))
        artifacts: dict[tuple[str, tuple[int, ...]], Any] = {}

        def artifact(mode: str, shape: tuple[int, ...]) -> Any:
            if (mode, shape) not in artifacts:
                model.use_running_average = mode == "eval"
                try:
                    artifacts[mode, shape] = to_onnx(model, [shape])
                finally:
                    model.use_running_average = False
            return artifacts[mode, shape]

        steps = run_onnx_plan(case, artifact, layout="channels_last")
        converted, hyperparameters = self._converted(case, artifacts)
        first = next(iter(artifacts.values()))
        running = read_batchnorm(first).running
        checks = conversion_checks(
            converted=converted, hyperparameters_preserved=hyperparameters,
            state_preserved=None if running is None else state_matches(case, running, np.float32),
            source_changes=src.changes(before, src.arrays(nnx.state(model))),
            trainable_source=src.sizes(nnx.state(model, nnx.Param)),
            # affine=False: jax2onnx writes default ones/zeros as initializers; counted as they are.
            trainable_converted=trainable_initializers(first))
        return Result(steps, self._meta(), checks)

    def _run_linen(self, case: Case) -> Result:
        import flax.linen as nn
        import jax
        import jax.numpy as jnp
        from jax2onnx import to_onnx

        assert case.momentum is not None
        bn = nn.BatchNorm(use_running_average=None, axis=-1, momentum=1.0 - case.momentum,
                          epsilon=case.eps, param_dtype=jnp.float32, use_bias=case.affine,
                          use_scale=case.affine)
        x0 = jnp.asarray(channels_last(case.steps[0].x, case.rank), jnp.float32)
        variables = bn.init(jax.random.PRNGKey(0), x0, use_running_average=True)
        params = dict(variables.get("params", {}))
        if case.affine:
            params = {"scale": jnp.asarray(case.gamma, jnp.float32),
                      "bias": jnp.asarray(case.beta, jnp.float32)}
        before = src.arrays(params)
        c = case.num_features

        def train(x: Any, mean: Any, var: Any) -> Any:
            y, updates = bn.apply({"params": params, "batch_stats": {"mean": mean, "var": var}},
                                  x, use_running_average=False, mutable=["batch_stats"])
            return y, updates["batch_stats"]["mean"], updates["batch_stats"]["var"]

        def evaluate(x: Any, mean: Any, var: Any) -> Any:
            return bn.apply({"params": params, "batch_stats": {"mean": mean, "var": var}}, x,
                            use_running_average=True)

        artifacts: dict[tuple[str, tuple[int, ...]], Any] = {}
        sessions: dict[tuple[str, tuple[int, ...]], Any] = {}
        mean = np.asarray(case.running_mean, np.float32)
        var = np.asarray(case.running_var, np.float32)
        out: list[StepResult] = []
        for step in case.steps:
            x = np.asarray(channels_last(step.x, case.rank), np.float32)
            key = (step.mode, x.shape)
            if key not in artifacts:
                fn = train if step.mode == "train" else evaluate
                artifacts[key] = to_onnx(fn, [x.shape, (c,), (c,)])
                sessions[key] = ort_session(artifacts[key])
            sess = sessions[key]
            names = [i.name for i in sess.get_inputs()]
            values = sess.run(None, dict(zip(names, (x, mean, var), strict=True)))
            if step.mode == "train":
                mean, var = values[1], values[2]
            y = values[0]
            out.append(StepResult(
                y=channels_first(np.asarray(y, np.float64), case.rank), y_dtype=str(y.dtype),
                running_mean=np.asarray(mean, np.float64).copy(),
                running_var=np.asarray(var, np.float64).copy(), running_dtype=str(mean.dtype)))
        converted, hyperparameters = self._converted(case, artifacts)
        checks = conversion_checks(
            converted=converted, hyperparameters_preserved=hyperparameters,
            state_preserved=True,  # the statistics are graph inputs, fed from the case
            source_changes=src.changes(before, src.arrays(params)), trainable_source=src.sizes(params),
            trainable_converted=trainable_initializers(next(iter(artifacts.values()))))
        return Result(out, self._meta(), checks)

    @staticmethod
    def _meta() -> dict[str, Any]:
        from importlib import metadata

        import jax

        return {"jax": jax.__version__, "jax2onnx": metadata.version("jax2onnx")}

    @staticmethod
    def _converted(case: Case, artifacts: dict[tuple[str, tuple[int, ...]], Any]) -> tuple[dict[str, Any], bool]:
        """What each mode's artifact holds, and whether its eps and momentum are the source's."""
        converted: dict[str, Any] = {}
        for (mode, _), model in artifacts.items():
            converted[mode] = read_batchnorm(model).describe()
            converted[mode]["graph_outputs"] = [o.name for o in model.graph.output]
            converted[mode]["graph_inputs"] = [i.name for i in model.graph.input]
        return converted, all(hyperparameters_preserved(case, c["eps"], canonical_momentum(c["onnx_momentum"]))
                              for c in converted.values())


FLAX_NNX_JAX2ONNX = Jax2OnnxAdapter(
    name="flax_nnx_jax2onnx", framework="jax2onnx", profile="flax_nnx",
    family="jax2onnx", api="nnx",
    description="flax.nnx.BatchNorm -> jax2onnx.to_onnx (module in the step's mode) -> "
    "ONNX Runtime (envs/jax2onnx)",
)
FLAX_LINEN_JAX2ONNX = Jax2OnnxAdapter(
    name="flax_linen_jax2onnx", framework="jax2onnx", profile="flax_linen",
    family="jax2onnx", api="linen",
    description="flax.linen.BatchNorm train/eval functions (statistics in, updated statistics "
    "out) -> jax2onnx.to_onnx -> ONNX Runtime (envs/jax2onnx)",
)
