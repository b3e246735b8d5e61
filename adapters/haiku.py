"""dm-haiku: ``haiku.BatchNorm`` under ``hk.transform_with_state``.

The running statistics are two ``hk.ExponentialMovingAverage`` modules (``mean_ema`` and
``var_ema``) with Haiku's defaults (``zero_debias=True``, no warmup): eval mode reads their
``average``, the zero-debiased ``hidden / (1 - decay^counter)``. The case's running statistics
become both the hidden state and the average (counter 0), so an eval step before any training
reads them unchanged and the first update blends into them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, StepResult
from bnspec.errors import UnsupportedFeature

_JAX_ENV = {"JAX_ENABLE_X64": "1"}  # float64 cases: read when jax is imported

_NAME = "batch_norm"  # the module name: state keys are batch_norm/~/mean_ema, ...


@dataclass
class HaikuAdapter(Adapter):
    capabilities: Capabilities = field(
        default_factory=lambda: Capabilities(
            ranks=(2, 3, 4, 5),
            dtypes=("float64", "float32", "float16", "bfloat16"),
            layouts=("channels_first", "channels_last"),
            gradients=True,
            cumulative_momentum=False,
            frozen=False,
            affine_off=True,
            untracked=False,
            initial_running=True,
            counter=True,
            notes="runs with JAX_ENABLE_X64=1 (float64 cases); scale/offset and the EMA state "
            "are created in the input's dtype, so param_dtype must equal dtype; momentum=None "
            "has no equivalent (decay_rate is a fixed float)",
        )
    )
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_JAX_ENV))

    def setup(self) -> None:
        import haiku as hk  # noqa: F401
        import jax

        self._jax = jax
        self._apply: dict[tuple[Any, ...], Any] = {}

    def _functions(self, case: Case, data_format: str) -> tuple[Any, Any]:
        """Jitted forward and forward-with-gradients, cached per module hyperparameters."""
        key = (case.affine, case.momentum, case.eps, data_format)
        if key in self._apply:
            return self._apply[key]
        import haiku as hk
        import jax.numpy as jnp

        jax = self._jax
        affine, eps = case.affine, case.eps
        decay_rate = 1.0 - float(case.momentum)  # type: ignore[arg-type]

        def forward(x: Any, is_training: bool) -> Any:
            bn = hk.BatchNorm(
                create_scale=affine,
                create_offset=affine,
                decay_rate=decay_rate,
                eps=eps,
                data_format=data_format,
                name=_NAME,
            )
            return bn(x, is_training=is_training, test_local_stats=False)

        transformed = hk.transform_with_state(forward)

        def forward_grad(params: Any, state: Any, x: Any, g: Any, is_training: bool) -> Any:
            def loss(p: Any, xx: Any) -> Any:
                y, new_state = transformed.apply(p, state, None, xx, is_training)
                return jnp.sum(y * g), (y, new_state)

            (dp, dx), (y, new_state) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
            return y, new_state, dp, dx

        fns = (jax.jit(transformed.apply, static_argnums=(4,)),
               jax.jit(forward_grad, static_argnums=(4,)))
        self._apply[key] = fns
        return fns

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature(
                "param_dtype different from dtype: haiku.BatchNorm creates scale/offset and its "
                "EMA state in the input's dtype"
            )
        jax = self._jax
        import jax.numpy as jnp

        dt = jnp.dtype(case.dtype)
        last = case.layout == "channels_last"
        data_format = "channels_last" if last else "channels_first"
        apply, apply_grad = self._functions(case, data_format)
        c = case.num_features

        # Carried as (C,) vectors in the framework's dtype, reshaped per step to Haiku's
        # broadcast shape (which depends on the rank and the channel axis).
        # With a counter k > 0 the case's statistics are the hidden state and the average is
        # its debiased reading, hidden / (1 - decay^k), as haiku.ExponentialMovingAverage keeps it.
        debias = 1.0 - (1.0 - float(case.momentum or 0.0)) ** case.counter if case.counter else 1.0
        mean_ema = {"hidden": jnp.asarray(case.running_mean, dt),
                    "average": jnp.asarray(case.running_mean / debias, dt),
                    "counter": jnp.asarray(case.counter, jnp.int32)}
        var_ema = {"hidden": jnp.asarray(case.running_var, dt),
                   "average": jnp.asarray(case.running_var / debias, dt),
                   "counter": jnp.asarray(case.counter, jnp.int32)}
        gamma = None if case.gamma is None else jnp.asarray(case.gamma, dt)
        beta = None if case.beta is None else jnp.asarray(case.beta, dt)

        out: list[StepResult] = []
        for step in case.steps:
            rank = step.x.ndim
            x = jnp.asarray(channels_last(step.x, rank) if last else step.x, dt)
            shape = [1] * rank
            shape[rank - 1 if last and rank > 2 else 1] = c

            def shaped(ema: dict[str, Any], shape: list[int] = shape) -> dict[str, Any]:
                return {k: v if k == "counter" else v.reshape(shape) for k, v in ema.items()}

            state = {f"{_NAME}/~/mean_ema": shaped(mean_ema), f"{_NAME}/~/var_ema": shaped(var_ema)}
            params = {} if gamma is None or beta is None else {
                _NAME: {"scale": gamma.reshape(shape), "offset": beta.reshape(shape)}}
            training = step.mode == "train"
            if step.grad_output is None:
                y, new_state = apply(params, state, None, x, training)
            else:
                g = jnp.asarray(channels_last(step.grad_output, rank) if last else step.grad_output, dt)
                y, new_state, dp, dx = apply_grad(params, state, x, g, training)
            res = StepResult(y=_canonical(y, rank, last), y_dtype=str(y.dtype))
            if step.grad_output is not None:
                res.dx = _canonical(dx, rank, last)
                if gamma is not None:
                    res.dgamma = np.asarray(dp[_NAME]["scale"], np.float64).reshape(-1)
                    res.dbeta = np.asarray(dp[_NAME]["offset"], np.float64).reshape(-1)
            mean_ema = {k: v if k == "counter" else v.reshape(-1)
                        for k, v in new_state[f"{_NAME}/~/mean_ema"].items()}
            var_ema = {k: v if k == "counter" else v.reshape(-1)
                       for k, v in new_state[f"{_NAME}/~/var_ema"].items()}
            # Eval mode normalizes with mean_ema.average / var_ema.average (the debiased EMA).
            res.running_mean = np.asarray(mean_ema["average"], np.float64)
            res.running_var = np.asarray(var_ema["average"], np.float64)
            res.running_dtype = str(mean_ema["average"].dtype)
            out.append(res)
        return Result(out, {"jax_enable_x64": bool(jax.config.read("jax_enable_x64")),
                            "haiku_ema_counter": int(mean_ema["counter"])})

    def check_supported(self, case: Case) -> None:
        super().check_supported(case)
        if not case.track_running_stats:
            raise UnsupportedFeature("track_running_stats=False: haiku.BatchNorm always has EMAs")

    def snippet(self, case: Case) -> str:
        last = case.layout == "channels_last"
        lines = [
            "import os; os.environ['JAX_ENABLE_X64'] = '1'",
            "import haiku as hk, jax, jax.numpy as jnp, numpy as np",
            f"dt = jnp.{case.dtype}",
            "def forward(x, is_training):",
            f"    return hk.BatchNorm(create_scale={case.affine}, create_offset={case.affine}, "
            f"decay_rate={1.0 - float(case.momentum or 0.0)!r}, eps={case.eps!r}, "
            f"data_format={'channels_last' if last else 'channels_first'!r}, "
            f"name='batch_norm')(x, is_training)",
            "f = hk.transform_with_state(forward)",
        ]
        c = case.num_features
        rank = case.rank
        shape = [1] * rank
        shape[rank - 1 if last and rank > 2 else 1] = c
        lines.append(f"shape = {tuple(shape)!r}")
        debias = 1.0 - (1.0 - float(case.momentum or 0.0)) ** case.counter if case.counter else 1.0
        lines.append(
            "ema = lambda v: {'hidden': jnp.asarray(v, dt).reshape(shape), "
            f"'average': jnp.asarray(np.asarray(v) / {debias!r}, dt).reshape(shape), "
            f"'counter': jnp.asarray({case.counter}, jnp.int32)}}")
        lines.append(
            f"state = {{'batch_norm/~/mean_ema': ema({case.running_mean.tolist()!r}), "
            f"'batch_norm/~/var_ema': ema({case.running_var.tolist()!r})}}")
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            lines.append(
                f"params = {{'batch_norm': {{'scale': jnp.asarray({case.gamma.tolist()!r}, dt)"
                f".reshape(shape), 'offset': jnp.asarray({case.beta.tolist()!r}, dt)"
                ".reshape(shape)}}")
        else:
            lines.append("params = {}")
        for i, step in enumerate(case.steps):
            x = channels_last(step.x, step.x.ndim) if last else step.x
            lines.append(f"x{i} = jnp.asarray(np.array({x.tolist()!r}), dt)")
            lines.append(
                f"y{i}, state = f.apply(params, state, None, x{i}, {step.mode == 'train'})")
            lines.append(f"print(y{i}, state['batch_norm/~/mean_ema']['average'], "
                         "state['batch_norm/~/var_ema']['average'])")
        return "\n".join(lines)


def _canonical(a: Any, rank: int, last: bool) -> np.ndarray:
    arr = np.asarray(np.asarray(a).astype(np.float64))
    return channels_first(arr, rank) if last else arr


HAIKU = HaikuAdapter(
    name="haiku",
    framework="dm-haiku",
    profile="haiku",
    description="haiku.BatchNorm under hk.transform_with_state (zero-debiased EMA state)",
    extra_frameworks=("jax",),
)
