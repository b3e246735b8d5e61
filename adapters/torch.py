"""PyTorch: ``torch.nn.BatchNorm1d/2d/3d`` eager, ``torch.nn.functional.batch_norm``, and the
module under ``torch.compile`` (inductor, CPU).

PyTorch is channels-first, so canonical (N, C, *spatial) arrays go in as they are. The
``channels_last`` layout is the same logical tensor with channels-last *strides* (what
``x.to(memory_format=torch.channels_last)`` gives for rank 4), which sends the CPU kernel down
its channels-last path. Parameters and running buffers are created in ``case.param_dtype``: the
CPU kernel accepts that equal to the input's dtype, or float32 for float16/bfloat16 input.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, Step, StepResult
from bnspec.errors import UnsupportedFeature

_DTYPES = ("float64", "float32", "float16", "bfloat16")
_HALF = ("float16", "bfloat16")
_MODULE_CLASS = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


def _capabilities(**overrides: Any) -> Capabilities:
    base: dict[str, Any] = dict(
        ranks=(2, 3, 4, 5),
        dtypes=_DTYPES,
        layouts=("channels_first", "channels_last"),
        gradients=True,
        cumulative_momentum=True,
        frozen=False,  # requires_grad_(False) leaves module.training alone (pytorch#49229)
        affine_off=True,
        untracked=True,
        initial_running=True,
    )
    base.update(overrides)
    return Capabilities(**base)


_DTYPE_NOTE = (
    "parameters and running buffers in case.param_dtype; torch's CPU kernel accepts it equal "
    "to the input dtype, or float32 for float16/bfloat16 input (other mixes raise "
    "'mixed dtype (CPU)', reported as unsupported); channels_last = channels-last strides"
)


def _check_dtypes(case: Case) -> None:
    holds_tensors = case.affine or case.track_running_stats
    ok = case.param_dtype == case.dtype or (case.dtype in _HALF and case.param_dtype == "float32")
    if holds_tensors and not ok:
        raise UnsupportedFeature(
            f"{case.dtype} input with {case.param_dtype} parameters: torch's CPU batch_norm "
            "needs parameters in the input's dtype, or float32 for float16/bfloat16 input"
        )


def _tensor(torch: Any, a: np.ndarray, dtype: str) -> Any:
    return torch.from_numpy(np.array(a, dtype=np.float64)).to(getattr(torch, dtype))


def _input(torch: Any, x: np.ndarray, case: Case, requires_grad: bool) -> Any:
    if case.layout == "channels_last" and x.ndim > 2:
        # Channels-last strides over the same logical (N, C, *spatial) tensor.
        t = _tensor(torch, np.ascontiguousarray(np.moveaxis(x, 1, -1)), case.dtype).movedim(-1, 1)
    else:
        t = _tensor(torch, x, case.dtype)
    return t.requires_grad_(requires_grad)


def _numpy(t: Any) -> np.ndarray | None:
    if t is None:
        return None
    import torch

    return t.detach().to(torch.float64).cpu().numpy().copy()


def _name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def _array_src(a: np.ndarray) -> str:
    return f"np.array({np.asarray(a, dtype=np.float64).tolist()!r})"


def _x_src(case: Case, var: str = "x") -> str:
    if case.layout == "channels_last" and case.rank > 2:
        # channels-last strides; no comment inside the expression, which callers extend
        return f"torch.tensor(np.moveaxis({var}, 1, -1).copy(), dtype=torch.{case.dtype}).movedim(-1, 1)"
    return f"torch.tensor({var}, dtype=torch.{case.dtype})"


def _steps_src(case: Case) -> str:
    rows = []
    for s in case.steps:
        g = "None" if s.grad_output is None else _array_src(s.grad_output)
        rows.append(f"    ({s.mode!r}, {_array_src(s.x)}, {g}),")
    return "steps = [\n" + "\n".join(rows) + "\n]\n"


@dataclass
class TorchModuleAdapter(Adapter):
    """``torch.nn.BatchNorm{1,2,3}d`` (BatchNorm1d for ranks 2 and 3), eager or compiled."""

    compiled: bool = False

    def setup(self) -> None:
        import torch

        torch.set_num_threads(1)

    def build_module(self, case: Case) -> Any:
        """The torch.nn.BatchNorm*d of ``case`` (the conversion paths' torch source too)."""
        import torch

        cls = getattr(torch.nn, _MODULE_CLASS[case.rank])
        module = cls(
            case.num_features,
            eps=case.eps,
            momentum=case.momentum,
            affine=case.affine,
            track_running_stats=case.track_running_stats,
            dtype=getattr(torch, case.param_dtype),
        )
        with torch.no_grad():
            if case.affine:
                assert case.gamma is not None and case.beta is not None
                module.weight.copy_(_tensor(torch, case.gamma, case.param_dtype))
                module.bias.copy_(_tensor(torch, case.beta, case.param_dtype))
            if case.track_running_stats:
                module.running_mean.copy_(_tensor(torch, case.running_mean, case.param_dtype))
                module.running_var.copy_(_tensor(torch, case.running_var, case.param_dtype))
                module.num_batches_tracked.fill_(case.counter)
        return module

    def _forward(self, module: Any, case: Case) -> Any:
        return module

    def run(self, case: Case) -> Result:
        import torch

        self.check_supported(case)
        _check_dtypes(case)
        module = self.build_module(case)
        forward = self._forward(module, case)
        out: list[StepResult] = []
        for step in case.steps:
            module.train(step.mode == "train")
            for p in module.parameters():
                p.grad = None
            x = _input(torch, step.x, case, step.grad_output is not None)
            y = forward(x)
            res = StepResult(y=_numpy(y), y_dtype=_name(y.dtype))  # type: ignore[arg-type]
            if step.grad_output is not None:
                y.backward(_tensor(torch, step.grad_output, _name(y.dtype)))
                res.dx = _numpy(x.grad)
                if case.affine:
                    res.dgamma, res.dbeta = _numpy(module.weight.grad), _numpy(module.bias.grad)
            if case.track_running_stats:
                res.running_mean = _numpy(module.running_mean)
                res.running_var = _numpy(module.running_var)
                res.running_dtype = _name(module.running_mean.dtype)
            out.append(res)
        return Result(out, {"torch": torch.__version__, "compiled": self.compiled})

    def snippet(self, case: Case) -> str:
        cls = _MODULE_CLASS[case.rank]
        lines = [
            "import numpy as np",
            "import torch",
            "",
            f"bn = torch.nn.{cls}({case.num_features}, eps={case.eps!r}, "
            f"momentum={case.momentum!r}, "
            f"affine={case.affine}, track_running_stats={case.track_running_stats}, "
            f"dtype=torch.{case.param_dtype})",
        ]
        if case.affine or case.track_running_stats:
            lines.append("with torch.no_grad():")
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            lines += [
                f"    bn.weight.copy_(torch.tensor({_array_src(case.gamma)}))",
                f"    bn.bias.copy_(torch.tensor({_array_src(case.beta)}))",
            ]
        if case.track_running_stats:
            lines += [
                f"    bn.running_mean.copy_(torch.tensor({_array_src(case.running_mean)}))",
                f"    bn.running_var.copy_(torch.tensor({_array_src(case.running_var)}))",
            ]
            if case.counter:
                lines.append(f"    bn.num_batches_tracked.fill_({case.counter})")
        call = "bn"
        if self.compiled:
            lines.append(
                'cbn = torch.compile(bn, backend="inductor", dynamic=False, fullgraph=True)'
            )
            call = "cbn"
        lines.append(_steps_src(case))
        lines += [
            "for mode, x, dy in steps:",
            '    bn.train(mode == "train")',
            f"    x = {_x_src(case)}.requires_grad_(dy is not None)",
            f"    y = {call}(x)",
            "    if dy is not None:",
            "        y.backward(torch.tensor(dy, dtype=y.dtype))",
            "        print('dx', x.grad)",
            "    print(mode, y)",
        ]
        if case.track_running_stats:
            lines.append("    print('running', bn.running_mean, bn.running_var)")
        return "\n".join(lines) + "\n"


@dataclass
class TorchCompileAdapter(TorchModuleAdapter):
    """The module under ``torch.compile(backend="inductor", dynamic=False, fullgraph=True)``.

    ``fullgraph=True`` so that a graph break is an error rather than a silent eager fallback;
    ``dynamic=False`` so that each shape gets its own static kernel whatever ran before in the
    worker (results must not depend on the order of cases). Dynamo's caches are reset before
    they reach the recompile limit, where torch would otherwise fall back to eager.
    """

    compiled: bool = True
    _signatures: set[tuple[Any, ...]] = field(default_factory=set, repr=False)

    def setup(self) -> None:
        import torch
        import torch._dynamo

        torch.set_num_threads(1)
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.fail_on_recompile_limit_hit = True

    def _forward(self, module: Any, case: Case) -> Any:
        import torch
        import torch._dynamo

        signature = (
            case.rank, tuple(s.x.shape for s in case.steps), case.dtype, case.param_dtype,
            case.affine, case.track_running_stats, case.layout, case.needs_gradients,
        )
        if signature not in self._signatures and len(self._signatures) >= 16:
            torch._dynamo.reset()  # compiled kernels stay in TORCHINDUCTOR_CACHE_DIR
            self._signatures.clear()
        self._signatures.add(signature)
        return torch.compile(module, backend="inductor", dynamic=False, fullgraph=True)


@dataclass
class TorchFunctionalAdapter(Adapter):
    """``torch.nn.functional.batch_norm`` with the running statistics passed as tensors that it
    updates in place; ``training`` is the step's mode (always True without running statistics,
    the only way the functional form normalizes with batch statistics and no buffers)."""

    def setup(self) -> None:
        import torch

        torch.set_num_threads(1)

    def run(self, case: Case) -> Result:
        import torch
        import torch.nn.functional as F

        self.check_supported(case)
        _check_dtypes(case)
        if case.momentum is None:  # also guarded by the capabilities
            raise UnsupportedFeature("momentum=None: F.batch_norm takes a float momentum")
        pd = case.param_dtype
        weight = bias = running_mean = running_var = None
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            weight = _tensor(torch, case.gamma, pd).requires_grad_(case.needs_gradients)
            bias = _tensor(torch, case.beta, pd).requires_grad_(case.needs_gradients)
        if case.track_running_stats:
            running_mean = _tensor(torch, case.running_mean, pd)
            running_var = _tensor(torch, case.running_var, pd)
        out: list[StepResult] = []
        for step in case.steps:
            for p in (weight, bias):
                if p is not None:
                    p.grad = None
            x = _input(torch, step.x, case, step.grad_output is not None)
            y = F.batch_norm(
                x,
                running_mean,
                running_var,
                weight,
                bias,
                training=step.mode == "train" or not case.track_running_stats,
                momentum=case.momentum,
                eps=case.eps,
            )
            res = _step_result(torch, step, x, y, weight, bias)
            if running_mean is not None:
                res.running_mean, res.running_var = _numpy(running_mean), _numpy(running_var)
                res.running_dtype = _name(running_mean.dtype)
            out.append(res)
        return Result(out, {"torch": torch.__version__})

    def snippet(self, case: Case) -> str:
        pd = f"torch.{case.param_dtype}"
        lines = ["import numpy as np", "import torch", "import torch.nn.functional as F", ""]
        if case.affine:
            assert case.gamma is not None and case.beta is not None
            lines += [
                f"weight = torch.tensor({_array_src(case.gamma)}, dtype={pd}, requires_grad=True)",
                f"bias = torch.tensor({_array_src(case.beta)}, dtype={pd}, requires_grad=True)",
            ]
        else:
            lines.append("weight = bias = None")
        if case.track_running_stats:
            lines += [
                f"running_mean = torch.tensor({_array_src(case.running_mean)}, dtype={pd})",
                f"running_var = torch.tensor({_array_src(case.running_var)}, dtype={pd})",
            ]
        else:
            lines.append("running_mean = running_var = None")
        training = '(mode == "train")' if case.track_running_stats else "True"
        lines += [
            _steps_src(case),
            "for mode, x, dy in steps:",
            f"    x = {_x_src(case)}.requires_grad_(dy is not None)",
            f"    y = F.batch_norm(x, running_mean, running_var, weight, bias, "
            f"training={training}, momentum={case.momentum!r}, eps={case.eps!r})",
            "    if dy is not None:",
            "        y.backward(torch.tensor(dy, dtype=y.dtype))",
            "        print('dx', x.grad)",
            "    print(mode, y, running_mean, running_var)",
        ]
        return "\n".join(lines) + "\n"


def _step_result(torch: Any, step: Step, x: Any, y: Any, weight: Any, bias: Any) -> StepResult:
    res = StepResult(y=_numpy(y), y_dtype=_name(y.dtype))  # type: ignore[arg-type]
    if step.grad_output is not None:
        y.backward(_tensor(torch, step.grad_output, _name(y.dtype)))
        res.dx = _numpy(x.grad)
        if weight is not None:
            res.dgamma, res.dbeta = _numpy(weight.grad), _numpy(bias.grad)
    return res


_INDUCTOR_CACHE = os.path.join(tempfile.gettempdir(), "bnspec-torchinductor")

TORCH_MODULE = TorchModuleAdapter(
    name="torch",
    framework="torch",
    profile="pytorch",
    description="torch.nn.BatchNorm1d/2d/3d, eager, CPU",
    capabilities=_capabilities(counter=True, notes=_DTYPE_NOTE + "; Case.counter is num_batches_tracked"),
)

TORCH_FUNCTIONAL = TorchFunctionalAdapter(
    name="torch_functional",
    framework="torch",
    profile="pytorch",
    description="torch.nn.functional.batch_norm with running statistics passed as tensors, CPU",
    capabilities=_capabilities(
        cumulative_momentum=False,  # momentum is a float argument: no cumulative average
        notes=_DTYPE_NOTE + "; without running statistics every step calls training=True "
        "(the functional form cannot normalize in eval mode without them)",
    ),
)

TORCH_COMPILE = TorchCompileAdapter(
    name="torch_compile",
    framework="torch",
    profile="pytorch",
    description="torch.compile(BatchNorm, backend='inductor', dynamic=False, fullgraph=True), CPU",
    capabilities=_capabilities(
        # momentum=None reads float(num_batches_tracked) in _BatchNorm.forward: with fullgraph
        # dynamo fails (data-dependent guard), without it the graph breaks and the layer runs
        # eagerly, so nothing compiled would be tested.
        cumulative_momentum=False,
        notes=_DTYPE_NOTE + "; one static graph per shape, mode and dtype (dynamic=False); "
        "momentum=None is not capturable in one graph (float(num_batches_tracked))",
    ),
    worker_env={
        "TORCHINDUCTOR_CACHE_DIR": _INDUCTOR_CACHE,
        "TORCHINDUCTOR_COMPILE_THREADS": "1",
    },
)
