"""torch.nn.BatchNorm*d -> ``nobuco.pytorch_to_keras`` -> a Keras 3 model (TensorFlow backend),
trained and evaluated in Keras: each step calls the converted model with ``training=`` the step's
mode, and the running statistics are read from its ``BatchNormalization`` layer.

Runs in ``envs/nobuco`` (nobuco imports torchvision: torch 2.14.1 + torchvision 0.29.1; nobuco
0.17.0 imports ``keras.src.engine``, so Keras 2.15 / TensorFlow 2.15 and numpy 1.26). The worker's
pickled protocol needs numpy 2 on both sides, so the worker runs in the CLI's environment and the
whole conversion and step plan run in a warm helper process of ``envs/nobuco`` (``_helper``: Case
and Result as JSON lines, :func:`handle`), started with the worker and kept across cases; each case
starts from a cleared Keras session, as in a fresh interpreter (the converted layers' names, which
the trainable weights are reported by, do not count on from the previous case's). The
module is converted in eval mode, as nobuco's README does (``.eval()`` before the conversion, its
mode restored afterwards); the Keras model takes and returns channels-last batches
(``ChannelOrder.TENSORFLOW``), as nobuco produces by default.
"""

from __future__ import annotations

import logging
import warnings
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
    state_matches,
)
from bnspec.case import Case, Result, StepResult
from bnspec.errors import FrameworkError, UnsupportedFeature
from bnspec.worker import DEFAULT_ENV

_ENV = {"KERAS_BACKEND": "tensorflow"}  # threads: bnspec.worker.DEFAULT_ENV
_NOTES = (
    "source: torch.nn.BatchNorm1d/2d/3d (converted in eval mode); nobuco.pytorch_to_keras with "
    "channels-last inputs/outputs; the Keras 2 model is called with training=<step mode> "
    "(envs/nobuco)."
)


@dataclass
class NobucoAdapter(ConverterAdapter):
    capabilities: Capabilities = field(default_factory=lambda: capabilities(
        dtypes=("float32",), counter=True, notes=_NOTES))
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_ENV))

    runner_family: str = "nobuco"

    def installed(self) -> bool:
        from pathlib import Path

        return Path(env_python(self.runner_family)).exists()

    def framework_version(self) -> str | None:
        # nobuco lives in envs/nobuco (the worker stays in the CLI's environment)
        from bnspec.adapter import version_in_env

        return version_in_env(env_python(self.runner_family), self.framework)

    def setup(self) -> None:
        if self.installed():
            self._helper().start()  # not waited for: the first case waits for its imports

    def _helper(self) -> Any:
        import os

        from bnspec.adapters.converters._helper import helper

        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update(DEFAULT_ENV, **_ENV)  # the conversion runs pinned like a worker
        return helper(env_python(self.runner_family), "bnspec.adapters.converters.nobuco:handle", (), env)

    def run(self, case: Case) -> Result:
        from bnspec.adapters.converters._helper import HelperDied

        self.check_convertible(case, traced=False)  # the runner checks the shapes
        try:
            answer = self._helper().call({"case": case.to_dict()}, timeout=600)
        except HelperDied as e:
            raise FrameworkError("RunnerFailure", f"nobuco runner: {e.last_line}") from None
        if "unsupported" in answer:
            raise UnsupportedFeature(answer["unsupported"])
        if "error" in answer:
            raise FrameworkError(answer["error_type"], answer["error"])
        return Result.from_dict(answer["result"])

    def setup_runner(self) -> None:
        import nobuco  # noqa: F401
        import tensorflow as tf
        import torch

        torch.set_num_threads(1)
        tf.config.threading.set_intra_op_parallelism_threads(1)
        logging.getLogger().setLevel(logging.ERROR)

    def run_here(self, case: Case) -> Result:
        import contextlib
        import io
        from importlib import metadata

        import keras
        import nobuco
        import torch
        from nobuco import ChannelOrder

        self.check_convertible(case, traced=True)
        module = src.source_module(case)
        before = src.snapshot(module)
        x0 = src.example_input(case, case.steps[0].x)
        was_training = module.training
        module.eval()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                converted = nobuco.pytorch_to_keras(
                    module, args=[x0], inputs_channel_order=ChannelOrder.TENSORFLOW,
                    outputs_channel_order=ChannelOrder.TENSORFLOW)
        finally:
            module.train(was_training)
        layers = [lay for lay in converted.layers
                  if isinstance(lay, keras.layers.BatchNormalization)]
        meta: dict[str, Any] = {"torch": torch.__version__, "nobuco": metadata.version("nobuco"),
                                "keras": keras.__version__}
        if len(layers) != 1:
            raise UnsupportedFeature(f"the converted model holds {len(layers)} BatchNormalization "
                                     f"layers ({[type(lay).__name__ for lay in converted.layers]})")
        bn = layers[0]
        momentum = 1.0 - float(bn.momentum)  # Keras weighs the running statistic
        converted_bn = {
            "layer": type(bn).__name__, "axis": bn.axis, "eps": float(bn.epsilon),
            "momentum": momentum, "keras_momentum": float(bn.momentum),
            "center": bn.center, "scale": bn.scale,
        }
        initial = (np.array(bn.moving_mean.numpy()), np.array(bn.moving_variance.numpy()))
        state_preserved = (not case.track_running_stats) or state_matches(case, initial, np.float32)
        out: list[StepResult] = []
        for step in case.steps:
            x = np.asarray(channels_last(step.x, case.rank), np.float32)
            y = np.asarray(converted(x, training=step.mode == "train"))
            res = StepResult(y=channels_first(y.astype(np.float64), case.rank), y_dtype=str(y.dtype))
            if case.track_running_stats:
                res.running_mean = np.array(bn.moving_mean.numpy(), np.float64)
                res.running_var = np.array(bn.moving_variance.numpy(), np.float64)
                res.running_dtype = bn.moving_mean.dtype.name
            out.append(res)
        checks = conversion_checks(
            converted=converted_bn,
            hyperparameters_preserved=hyperparameters_preserved(case, float(bn.epsilon), momentum),
            state_preserved=state_preserved, source_changes=src.changes(module, before),
            trainable_source=src.trainable(module),
            trainable_converted={w.name: int(np.prod(w.shape)) for w in converted.trainable_weights})
        return Result(out, meta, checks)


# -- the helper side (envs/nobuco) ----------------------------------------------------------------

def prepare() -> None:
    """The runner's imports and thread settings, before the first case arrives."""
    TORCH_NOBUCO.setup_runner()


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """One case (JSON) in the warm runner; the Result (JSON), or what stopped it."""
    import keras

    case = Case.from_dict(request["case"])
    TORCH_NOBUCO.setup_runner()
    # A fresh interpreter's Keras state: no layers yet, so the names start again from
    # "batch_normalization" (the converted weights are reported by name).
    keras.backend.clear_session()
    try:
        answer: dict[str, Any] = {"result": TORCH_NOBUCO.run_here(case).to_dict()}
    except UnsupportedFeature as e:
        answer = {"unsupported": str(e)}
    except Exception as e:  # noqa: BLE001 - the converter's failure is the finding
        answer = {"error_type": type(e).__name__, "error": str(e)}
    return answer


TORCH_NOBUCO = NobucoAdapter(
    name="torch_nobuco", framework="nobuco", profile="pytorch",
    extra_frameworks=(),
    description="torch.nn.BatchNorm -> nobuco.pytorch_to_keras -> Keras 2.15 (TensorFlow 2.15), "
    "trained and evaluated in Keras (envs/nobuco)",
)
