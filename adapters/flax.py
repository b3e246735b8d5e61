"""Flax: ``flax.linen.BatchNorm`` (jitted, eager, two-pass variance) and ``flax.nnx.BatchNorm``.

Flax normalizes the last axis: the canonical (N, C, *spatial) arrays are moved to
(N, *spatial, C) and ``axis=-1`` is passed explicitly. Every setting is passed explicitly, the
framework's defaults included: ``dtype=None`` (the output dtype is inferred from the input and
the parameters, Flax's documented default, which is what the profiles describe),
``param_dtype=case.param_dtype``, ``use_fast_variance``, ``use_bias``/``use_scale``.

The canonical momentum (weight of the batch statistic) becomes Flax's decay ``1 - momentum``.
Running statistics are set from the case in the dtype Flax itself creates them in (float32) and
read back after every step. float64 needs ``jax_enable_x64``, a per-process flag: the worker
sets ``JAX_ENABLE_X64=1`` and every result records ``meta["jax_enable_x64"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities, channels_first, channels_last
from bnspec.case import Case, Result, Step, StepResult
from bnspec.dtypes import name_of

_ENV = {"JAX_ENABLE_X64": "1"}  # float64 cases: read when jax is imported

_CAPS = Capabilities(
    ranks=(2, 3, 4, 5),
    dtypes=("float64", "float32", "float16", "bfloat16"),
    layouts=("channels_first",),
    gradients=True,
    cumulative_momentum=False,
    frozen=False,
    affine_off=True,
    untracked=False,
    initial_running=True,
    notes=(
        "Flax normalizes axis=-1: inputs are moved to channels-last. float64 runs with "
        "jax_enable_x64=True (set per worker process). Running statistics start in float32, "
        "the dtype Flax creates them in. No cumulative momentum, no frozen layer, no "
        "track_running_stats=False: Flax has no such settings."
    ),
)


def _caps() -> Capabilities:
    return _CAPS


def _jnp_dtype(name: str) -> Any:
    import jax.numpy as jnp

    return {"float64": jnp.float64, "float32": jnp.float32, "float16": jnp.float16,
            "bfloat16": jnp.bfloat16}[name]


def _to_numpy(a: Any) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def _flax_momentum(case: Case) -> float:
    assert case.momentum is not None  # check_supported: no cumulative momentum
    return 1.0 - case.momentum  # Flax: ra <- momentum * ra + (1 - momentum) * batch


@dataclass
class FlaxAdapterBase(Adapter):
    capabilities: Capabilities = field(default_factory=_caps)
    worker_env: dict[str, str] = field(default_factory=lambda: dict(_ENV))

    def setup(self) -> None:
        import jax

        # JAX_ENABLE_X64 is read at import; set it again for an already-imported jax.
        jax.config.update("jax_enable_x64", True)
        import flax  # noqa: F401

    def _inputs(self, case: Case, step: Step) -> tuple[Any, Any]:
        import jax.numpy as jnp

        dt = _jnp_dtype(case.dtype)
        x = jnp.asarray(channels_last(step.x, case.rank), dtype=dt)
        g = None
        if step.grad_output is not None:
            g = jnp.asarray(channels_last(step.grad_output, case.rank), dtype=dt)
        return x, g

    def _meta(self) -> dict[str, Any]:
        import jax

        return {"jax_enable_x64": bool(jax.config.read("jax_enable_x64")), "jax_version": jax.__version__}


@dataclass
class FlaxLinenAdapter(FlaxAdapterBase):
    """flax.linen.BatchNorm through ``Module.apply``, jitted (as users run it) or eager."""

    jit: bool = True
    use_fast_variance: bool = True

    def _module(self, case: Case) -> Any:
        import flax.linen as nn

        return nn.BatchNorm(
            use_running_average=None,  # given per call
            axis=-1,
            momentum=_flax_momentum(case),
            epsilon=case.eps,
            dtype=None,
            param_dtype=_jnp_dtype(case.param_dtype),
            use_bias=case.affine,
            use_scale=case.affine,
            axis_name=None,
            use_fast_variance=self.use_fast_variance,
            force_float32_reductions=True,
        )

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        import jax
        import jax.numpy as jnp

        bn = self._module(case)
        pdt = _jnp_dtype(case.param_dtype)
        # Flax's own init creates batch_stats in float32 (force_float32_reductions=True).
        batch_stats = {
            "mean": jnp.asarray(case.running_mean, jnp.float32),
            "var": jnp.asarray(case.running_var, jnp.float32),
        }
        params = {}
        if case.affine:
            params = {"scale": jnp.asarray(case.gamma, pdt), "bias": jnp.asarray(case.beta, pdt)}

        def forward(params: Any, stats: Any, x: Any, use_running_average: bool) -> Any:
            variables = {"batch_stats": stats, **({"params": params} if params else {})}
            y, updates = bn.apply(
                variables, x, use_running_average=use_running_average, mutable=["batch_stats"]
            )
            return y, updates["batch_stats"]

        def with_grads(params: Any, stats: Any, x: Any, g: Any, use_running_average: bool) -> Any:
            def loss(params: Any, x: Any) -> Any:
                y, new_stats = forward(params, stats, x, use_running_average)
                return jnp.sum(y * g), (y, new_stats)

            (_, (y, new_stats)), (dparams, dx) = jax.value_and_grad(
                loss, argnums=(0, 1), has_aux=True
            )(params, x)
            return y, new_stats, dparams, dx

        if self.jit:
            forward = jax.jit(forward, static_argnames="use_running_average")
            with_grads = jax.jit(with_grads, static_argnames="use_running_average")

        out: list[StepResult] = []
        for step in case.steps:
            x, g = self._inputs(case, step)
            use_ra = step.mode == "eval"
            dparams: Any = None
            dx: Any = None
            if g is None:
                y, new_stats = forward(params, batch_stats, x, use_running_average=use_ra)
            else:
                y, new_stats, dparams, dx = with_grads(
                    params, batch_stats, x, g, use_running_average=use_ra
                )
            batch_stats = new_stats
            res = StepResult(
                y=channels_first(_to_numpy(y), case.rank),
                running_mean=_to_numpy(batch_stats["mean"]),
                running_var=_to_numpy(batch_stats["var"]),
                y_dtype=name_of(y.dtype),
                running_dtype=name_of(batch_stats["var"].dtype),
            )
            if dx is not None:
                res.dx = channels_first(_to_numpy(dx), case.rank)
                if case.affine:
                    res.dgamma = _to_numpy(dparams["scale"])
                    res.dbeta = _to_numpy(dparams["bias"])
            out.append(res)
        meta = self._meta()
        meta["jit"] = self.jit
        return Result(out, meta)

    def snippet(self, case: Case) -> str:
        return _snippet(case, nnx=False, fast=self.use_fast_variance, jit=self.jit)


@dataclass
class FlaxNnxAdapter(FlaxAdapterBase):
    """flax.nnx.BatchNorm, called under ``nnx.jit``."""

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        import jax.numpy as jnp
        from flax import nnx

        pdt = _jnp_dtype(case.param_dtype)
        model = nnx.BatchNorm(
            case.num_features,
            use_running_average=False,  # overridden per call
            axis=-1,
            momentum=_flax_momentum(case),
            epsilon=case.eps,
            dtype=None,
            param_dtype=pdt,
            use_bias=case.affine,
            use_scale=case.affine,
            axis_name=None,
            use_fast_variance=True,
            rngs=nnx.Rngs(0),
        )
        # Assignment through [...] keeps the BatchStat's own dtype (float32), as a user's would.
        model.mean[...] = jnp.asarray(case.running_mean, jnp.float32)
        model.var[...] = jnp.asarray(case.running_var, jnp.float32)
        if case.affine:
            assert model.scale is not None and model.bias is not None  # use_scale, use_bias
            model.scale[...] = jnp.asarray(case.gamma, pdt)
            model.bias[...] = jnp.asarray(case.beta, pdt)

        @nnx.jit(static_argnames="use_running_average")
        def forward(model: Any, x: Any, use_running_average: bool) -> Any:
            return model(x, use_running_average=use_running_average)

        @nnx.jit(static_argnames="use_running_average")
        def with_grads(model: Any, x: Any, g: Any, use_running_average: bool) -> Any:
            def loss(model: Any, x: Any) -> Any:
                y = model(x, use_running_average=use_running_average)
                return jnp.sum(y * g), y

            (_, y), (dmodel, dx) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
                model, x
            )
            return y, dmodel, dx

        out: list[StepResult] = []
        for step in case.steps:
            x, g = self._inputs(case, step)
            use_ra = step.mode == "eval"
            dmodel: Any = None
            dx: Any = None
            if g is None:
                y = forward(model, x, use_running_average=use_ra)
            else:
                y, dmodel, dx = with_grads(model, x, g, use_running_average=use_ra)
            mean, var = model.mean[...], model.var[...]
            res = StepResult(
                y=channels_first(_to_numpy(y), case.rank),
                running_mean=_to_numpy(mean),
                running_var=_to_numpy(var),
                y_dtype=name_of(y.dtype),
                running_dtype=name_of(var.dtype),
            )
            if dx is not None:
                res.dx = channels_first(_to_numpy(dx), case.rank)
                if case.affine:
                    res.dgamma = _to_numpy(dmodel["scale"][...])
                    res.dbeta = _to_numpy(dmodel["bias"][...])
            out.append(res)
        meta = self._meta()
        meta["jit"] = True
        return Result(out, meta)

    def snippet(self, case: Case) -> str:
        return _snippet(case, nnx=True, fast=True, jit=True)


def _arr(a: np.ndarray | None) -> str:
    return "None" if a is None else f"np.array({np.asarray(a).tolist()!r})"


def _snippet(case: Case, *, nnx: bool, fast: bool, jit: bool) -> str:
    dt, pdt = f"jnp.{case.dtype}", f"jnp.{case.param_dtype}"
    m = None if case.momentum is None else 1.0 - case.momentum
    lines = [
        "import jax",
        'jax.config.update("jax_enable_x64", True)',
        "import jax.numpy as jnp",
        "import numpy as np",
        "from flax import nnx" if nnx else "import flax.linen as nn",
        "",
        "# canonical (N, C, *spatial) -> Flax's channels-last",
        "to_last = lambda a: np.moveaxis(a, 1, -1) if a.ndim > 2 else a",
        f"running_mean = jnp.asarray({_arr(case.running_mean)}, jnp.float32)",
        f"running_var = jnp.asarray({_arr(case.running_var)}, jnp.float32)",
    ]
    if case.affine:
        lines += [f"scale = jnp.asarray({_arr(case.gamma)}, {pdt})",
                  f"bias = jnp.asarray({_arr(case.beta)}, {pdt})"]
    common = (f"axis=-1, momentum={m!r}, epsilon={case.eps!r}, dtype=None, param_dtype={pdt}, "
              f"use_bias={case.affine}, use_scale={case.affine}, use_fast_variance={fast}")
    if nnx:
        lines += [
            f"bn = nnx.BatchNorm({case.num_features}, use_running_average=False, {common}, "
            "rngs=nnx.Rngs(0))",
            "bn.mean[...] = running_mean",
            "bn.var[...] = running_var",
        ]
        if case.affine:
            lines += ["bn.scale[...] = scale", "bn.bias[...] = bias"]
        lines += ["call = nnx.jit(lambda m, x, ura: m(x, use_running_average=ura), "
                  "static_argnums=2)"]
    else:
        lines += [
            f"bn = nn.BatchNorm({common})",
            'variables = {"batch_stats": {"mean": running_mean, "var": running_var}}',
        ]
        if case.affine:
            lines += ['variables["params"] = {"scale": scale, "bias": bias}']
        apply = ("lambda v, x, ura: bn.apply(v, x, use_running_average=ura, "
                 'mutable=["batch_stats"])')
        lines += [f"call = jax.jit({apply}, static_argnums=2)" if jit else f"call = {apply}"]
    for i, step in enumerate(case.steps):
        ura = step.mode == "eval"
        lines.append(f"x{i} = jnp.asarray(to_last({_arr(step.x)}), {dt})")
        if nnx:
            lines.append(f"y{i} = call(bn, x{i}, {ura})")
            lines.append(f"print('step {i}', y{i}, bn.mean[...], bn.var[...])")
        else:
            lines.append(f"y{i}, upd = call(variables, x{i}, {ura})")
            lines.append('variables = {**variables, **upd}')
            lines.append(f"print('step {i}', y{i}, variables['batch_stats'])")
    return "\n".join(lines) + "\n"


FLAX_LINEN = FlaxLinenAdapter(
    name="flax_linen",
    framework="flax",
    profile="flax_linen",
    description="flax.linen.BatchNorm under jax.jit (use_fast_variance=True)",
    extra_frameworks=("jax",),
)
FLAX_LINEN_EAGER = FlaxLinenAdapter(
    name="flax_linen_eager",
    framework="flax",
    profile="flax_linen",
    description="flax.linen.BatchNorm applied without jit (op by op)",
    extra_frameworks=("jax",),
    jit=False,
)
FLAX_LINEN_TWO_PASS = FlaxLinenAdapter(
    name="flax_linen_two_pass",
    framework="flax",
    profile="flax_linen_two_pass",
    description="flax.linen.BatchNorm(use_fast_variance=False) under jax.jit",
    extra_frameworks=("jax",),
    use_fast_variance=False,
)
FLAX_NNX = FlaxNnxAdapter(
    name="flax_nnx",
    framework="flax",
    profile="flax_nnx",
    description="flax.nnx.BatchNorm under nnx.jit",
    extra_frameworks=("jax",),
)
