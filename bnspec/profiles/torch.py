"""PyTorch profiles. Paths are relative to the installed ``torch`` package unless they start
with ``aten/`` (the pytorch/pytorch repository)."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_MOD = "torch/nn/modules/batchnorm.py"
_KERNEL = "aten/src/ATen/native/Normalization.cpp (batch_norm_cpu_update_stats_template)"

PYTORCH = Profile(
    name="pytorch",
    framework="torch",
    title="torch.nn.BatchNorm1d/2d/3d and torch.nn.functional.batch_norm",
    semantics=Semantics(
        eps=1e-5,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=0.1,
        momentum_weights="batch",
        normalize_var="biased",
        running_var_update="unbiased",
        ema_debias=False,
        initial_running=(0.0, 1.0),
        first_update="ema",
        train_stats="batch",
        eval_stats="running",
        frozen_train_stats=None,
        variance_algorithm="two_pass",
        compute_dtype="promote_float32",
        normalize_dtype="input",
        output_dtype="input",
        state_dtype="parameters",
        single_value="error",
        affine_form="folded",
    ),
    cite={
        "affine_form": "aten/src/ATen/native/cpu/batch_norm_kernel.cpp::"
        "batch_norm_cpu_collect_linear_and_constant_terms (alpha = invstd * weight, beta = bias - "
        "mean * alpha; output = input * alpha + beta): folded. torch.compile's decomposition "
        "(torch/_decomp/decompositions.py::native_batch_norm_helper: (input - mean) * invstd * "
        "weight + bias) is centered, more accurate than the folded bound requires",
        "eps": f"{_MOD}::_BatchNorm.__init__ (eps: float = 1e-5)",
        "eps_placement": "docs BatchNorm2d: y = (x - E[x]) / sqrt(Var[x] + eps) * gamma + beta",
        "eps_floor": f"{_KERNEL}: eps is used as given, no floor",
        "momentum": f"{_MOD}::_BatchNorm.__init__ (momentum: float | None = 0.1)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": "docs BatchNorm2d note: x_new = (1 - momentum) * x_hat + momentum * x_t",
        "normalize_var": "docs BatchNorm2d: 'calculated via the biased estimator'; "
        f"{_KERNEL} (save_var_transform(var_sum / n))",
        "running_var_update": "docs BatchNorm2d: running var 'calculated via the unbiased "
        f"estimator'; {_KERNEL} (var_sum / (n - 1))",
        "ema_debias": f"{_MOD}::_BatchNorm.forward: no debiasing of running statistics",
        "initial_running": f"{_MOD}::_NormBase.reset_running_stats (zero_, fill_(1))",
        "first_update": f"{_MOD}::_BatchNorm.forward: exponential_average_factor = momentum from "
        "the first step (momentum=None: 1/num_batches_tracked, i.e. replace then average)",
        "train_stats": f"{_MOD}::_BatchNorm.forward (bn_training = True in training)",
        "eval_stats": f"{_MOD}::_BatchNorm.forward (bn_training = False with running buffers)",
        "frozen_train_stats": "requires_grad_(False) does not change module.training "
        "(pytorch#49229): there is no frozen-layer notion",
        "variance_algorithm": "aten/src/ATen/native/cpu/batch_norm_kernel.cpp "
        "(batch_norm_cpu_collect_stats_contiguous_impl: the mean, then the sum of (x - mean)^2); "
        "torch.compile: torch/_decomp/decompositions.py::native_batch_norm_helper "
        "(torch.var_mean(correction=0))",
        "compute_dtype": "aten/src/ATen/native/cpu/batch_norm_kernel.cpp (reductions in "
        "at::opmath_type: float for Half/BFloat16, the input's own type for float/double); "
        "torch/_decomp/decompositions.py::native_batch_norm_helper "
        "(utils.get_computation_dtype(input.dtype))",
        "normalize_dtype": "aten/src/ATen/native/cpu/batch_norm_kernel.cpp "
        "(batch_norm_cpu_collect_linear_and_constant_terms: in training the batch mean and "
        "invstd are read back from save_mean/save_invstd, tensors of the *parameters'* dtype, "
        "before alpha = invstd * weight and beta = bias - mean * alpha are formed in opmath_t). "
        "So they are rounded to the input dtype when the parameters share it (float16 module "
        "fed float16), and kept in float32 with float32 parameters. 'input' is the bound that "
        "holds for both; the exact value is the parameters' dtype (no such knob value yet)",
        "output_dtype": "torch/nn/functional.py::batch_norm returns torch.batch_norm's output in "
        "the input's dtype, also for float16/bfloat16 input with float32 parameters",
        "state_dtype": f"{_MOD}::_NormBase.__init__ (buffers created with the module's factory "
        "kwargs dtype): float16 input with float32 parameters keeps float32 running statistics",
        "single_value": "torch/nn/functional.py::_verify_batch_size ('Expected more than 1 value "
        "per channel when training')",
    },
    confirmed="tests/test_adapter_torch.py runs torch.nn.BatchNorm1d/2d/3d (eager and under "
    "torch.compile) and torch.nn.functional.batch_norm against this profile, float64 to "
    "bfloat16, and pins the non-obvious knobs (unbiased running var, batch-weighted momentum, "
    "two-pass variance, half-precision rounding of the normalizing statistics, dtypes)",
    state_names={"running_mean": "running_mean", "running_var": "running_var",
                 "gamma": "weight", "beta": "bias", "counter": "num_batches_tracked"},
)

PYTORCH_CUMULATIVE = Profile(
    name="pytorch_cumulative",
    framework="torch",
    title="torch.nn.BatchNorm2d(momentum=None): cumulative moving average",
    semantics=PYTORCH.semantics.replace(momentum=None),
    cite={
        **PYTORCH.cite,
        "momentum": f"{_MOD}::_BatchNorm.forward: momentum=None uses "
        "exponential_average_factor = 1 / num_batches_tracked",
    },
    confirmed=PYTORCH.confirmed,
    state_names=PYTORCH.state_names,
)

PROFILES = [PYTORCH, PYTORCH_CUMULATIVE]
