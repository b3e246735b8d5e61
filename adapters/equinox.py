"""Equinox: ``equinox.nn.BatchNorm`` in its two modes, ``mode="ema"`` and ``mode="batch"``.

Used as documented: ``jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))``
with an ``eqx.nn.State``, under ``eqx.filter_jit``; eval steps pass ``inference=True``.

Initial running statistics come from the case. In ``mode="ema"`` they are the running
statistics an eval step reads before any training (the first training step replaces them). In
``mode="batch"`` they are the hidden EMA state with counter 0, which inference reads unchanged
until the first update and then debiases (``hidden / (1 - momentum**counter)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, StepResult
from bnspec.errors import UnsupportedFeature

_JAX_ENV = {"JAX_ENABLE_X64": "1"}  # float64 cases: read when jax is imported


def _capabilities(mode: str) -> Capabilities:
    return Capabilities(
        ranks=(2, 3, 4, 5),
        dtypes=("float64", "float32", "float16", "bfloat16"),
        layouts=("channels_first",),
        gradients=True,
        cumulative_momentum=False,
        frozen=False,
        affine_off=True,
        untracked=False,
        initial_running=True,
        # mode='batch' counts its updates (batch_counter); mode='ema' keeps one bit of that
        # count, ema_first_time_index (True until the first update): a loaded counter k > 0 is
        # first_time=False.
        counter=True,
        notes="runs with JAX_ENABLE_X64=1 (float64 cases); running statistics and weights use "
        "BatchNorm(dtype=param_dtype). An input dtype that differs from it raises in the "
        "framework: mode='ema' always (lax.select of mixed dtypes), mode='batch' when the input "
        "is the more precise (State.set refuses the promoted running statistics). "
        "momentum=None has no equivalent"
        + ("; training batches are normalized with the updated running statistics"
           if mode == "ema" else ""),
    )


@dataclass
class EquinoxAdapter(Adapter):
    mode: Literal["ema", "batch"] = "batch"
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_JAX_ENV))

    def setup(self) -> None:
        import equinox as eqx
        import jax

        self._jax, self._eqx = jax, eqx

        def forward(bn: Any, state: Any, x: Any, inference: bool) -> Any:
            def call(xi: Any, st: Any) -> Any:
                return bn(xi, st, inference=inference)

            return jax.vmap(call, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
                x, state
            )

        def forward_grad(bn: Any, state: Any, x: Any, g: Any, inference: bool) -> Any:
            import jax.numpy as jnp

            affine = bn.weight is not None

            def loss(x: Any, w: Any, b: Any) -> Any:
                m = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (w, b)) if affine else bn
                y, st = forward(m, state, x, inference)
                return jnp.sum(y * g), (y, st)

            (dx, dw, db), (y, st) = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(
                x, bn.weight if affine else jnp.zeros(()), bn.bias if affine else jnp.zeros(())
            )
            return y, st, dx, dw, db

        # bool arguments are static under filter_jit (non-array leaves).
        self._forward = eqx.filter_jit(forward)
        self._forward_grad = eqx.filter_jit(forward_grad)

    def _build(self, case: Case) -> tuple[Any, Any]:
        import jax.numpy as jnp

        eqx = self._eqx
        pdt = jnp.dtype(case.param_dtype)
        bn = eqx.nn.BatchNorm(
            input_size=case.num_features,
            axis_name="batch",
            eps=case.eps,
            channelwise_affine=case.affine,
            momentum=1.0 - float(case.momentum),  # type: ignore[arg-type]
            inference=False,
            dtype=pdt,
            mode=self.mode,
        )
        if case.affine:
            bn = eqx.tree_at(
                lambda m: (m.weight, m.bias),
                bn,
                (jnp.asarray(case.gamma, pdt), jnp.asarray(case.beta, pdt)),
            )
        state = eqx.nn.State(bn)
        initial = (jnp.asarray(case.running_mean, pdt), jnp.asarray(case.running_var, pdt))
        if self.mode == "ema":
            state = state.set(bn.ema_state_index, initial)
            # equinox/nn/_batch_norm.py::BatchNorm.__init__: ema_first_time_index starts True;
            # the first training update copies the batch statistics (lax.select(first_time, ...))
            state = state.set(bn.ema_first_time_index, jnp.array(case.counter == 0))
        else:
            state = state.set(bn.batch_state_index, initial)
            counter = state.get(bn.batch_counter)
            state = state.set(bn.batch_counter, jnp.full_like(counter, case.counter))
        return bn, state

    def _running(self, bn: Any, state: Any) -> tuple[Any, Any]:
        """The statistics inference would normalize with, computed as equinox does."""
        import jax.numpy as jnp

        if self.mode == "ema":
            return state.get(bn.ema_state_index)
        counter = state.get(bn.batch_counter)
        hidden_mean, hidden_var = state.get(bn.batch_state_index)
        # equinox/nn/_batch_norm.py::BatchNorm.__call__ (mode='batch', inference)
        scale = jnp.where(counter == 0, 1, 1 - bn.momentum**counter)
        return hidden_mean / scale, hidden_var / scale

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        import jax.numpy as jnp

        dt = jnp.dtype(case.dtype)
        bn, state = self._build(case)
        out: list[StepResult] = []
        for step in case.steps:
            x = jnp.asarray(step.x, dt)
            inference = step.mode == "eval"
            if step.grad_output is None:
                y, state = self._forward(bn, state, x, inference)
                res = StepResult(y=_f64(y))
            else:
                g = jnp.asarray(step.grad_output, dt)
                y, state, dx, dw, db = self._forward_grad(bn, state, x, g, inference)
                res = StepResult(y=_f64(y), dx=_f64(dx))
                if case.affine:
                    res.dgamma, res.dbeta = _f64(dw), _f64(db)
            res.y_dtype = str(y.dtype)
            mean, var = self._running(bn, state)
            res.running_mean, res.running_var = _f64(mean), _f64(var)
            res.running_dtype = str(mean.dtype)
            out.append(res)
        return Result(out, {"jax_enable_x64": bool(self._jax.config.read("jax_enable_x64")),
                            "equinox_mode": self.mode})

    def check_supported(self, case: Case) -> None:
        super().check_supported(case)
        if not case.track_running_stats:
            raise UnsupportedFeature("track_running_stats=False: equinox.nn.BatchNorm always "
                                     "keeps running statistics")

    def snippet(self, case: Case) -> str:
        index = "ema_state_index" if self.mode == "ema" else "batch_state_index"
        lines = [
            "import os; os.environ['JAX_ENABLE_X64'] = '1'",
            "import equinox as eqx, jax, jax.numpy as jnp, numpy as np",
            f"dt, pdt = jnp.{case.dtype}, jnp.{case.param_dtype}",
            f"bn = eqx.nn.BatchNorm({case.num_features}, axis_name='batch', eps={case.eps!r}, "
            f"channelwise_affine={case.affine}, momentum={1.0 - float(case.momentum or 0.0)!r}, "
            f"dtype=pdt, mode={self.mode!r})",
        ]
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            lines.append(
                "bn = eqx.tree_at(lambda m: (m.weight, m.bias), bn, "
                f"(jnp.asarray({case.gamma.tolist()!r}, pdt), "
                f"jnp.asarray({case.beta.tolist()!r}, pdt)))")
        lines += [
            "state = eqx.nn.State(bn)",
            f"state = state.set(bn.{index}, (jnp.asarray({case.running_mean.tolist()!r}, pdt), "
            f"jnp.asarray({case.running_var.tolist()!r}, pdt)))",
            *([] if not case.counter else
              [f"state = state.set(bn.ema_first_time_index, jnp.array({case.counter == 0}))"]
              if self.mode == "ema" else
              [f"state = state.set(bn.batch_counter, jnp.array({case.counter}))"]),
            "step = eqx.filter_jit(lambda bn, st, x, inference: jax.vmap(",
            "    lambda xi, s: bn(xi, s, inference=inference), axis_name='batch',",
            "    in_axes=(0, None), out_axes=(0, None))(x, st))",
        ]
        for i, s in enumerate(case.steps):
            lines.append(f"x{i} = jnp.asarray(np.array({s.x.tolist()!r}), dt)")
            lines.append(f"y{i}, state = step(bn, state, x{i}, {s.mode == 'eval'})")
            lines.append(f"print(y{i}, state.get(bn.{index}))")
        return "\n".join(lines)


def _f64(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


EQUINOX_EMA = EquinoxAdapter(
    name="equinox_ema",
    framework="equinox",
    profile="equinox_ema",
    mode="ema",
    description="equinox.nn.BatchNorm(mode='ema') under jax.vmap(axis_name='batch')",
    capabilities=_capabilities("ema"),
    extra_frameworks=("jax",),
)

EQUINOX_BATCH = EquinoxAdapter(
    name="equinox_batch",
    framework="equinox",
    profile="equinox_batch",
    mode="batch",
    description="equinox.nn.BatchNorm(mode='batch') under jax.vmap(axis_name='batch')",
    capabilities=_capabilities("batch"),
    extra_frameworks=("jax",),
)
