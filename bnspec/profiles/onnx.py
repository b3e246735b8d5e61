"""The ONNX BatchNormalization operator (opset 15) as ONNX Runtime's CPU provider computes it.

onnx's own evaluator (onnx.reference) differs in its numerics and affine form: its profiles are in
bnspec/profiles/onnx_reference.py, confirmed by running it."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

# The operator text lives in onnx/defs/nn/defs.cc, compiled into the wheel; the same text is
# docs/Changelog.md "BatchNormalization-15" and onnx.defs.get_schema("BatchNormalization", 15).doc.
_DEFS = "onnx docs/Changelog.md BatchNormalization-15 (onnx/defs/nn/defs.cc)"
_ORT = "onnxruntime/core/providers/cpu/nn/batch_norm.h (BatchNorm<T>::Compute)"

ONNX = Profile(
    name="onnx",
    framework="onnx",
    title="ONNX BatchNormalization-15 as ONNX Runtime's CPU provider computes it",
    semantics=Semantics(
        eps=1e-5,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=0.9,
        momentum_weights="running",
        normalize_var="biased",
        running_var_update="biased",
        ema_debias=False,
        initial_running=(0.0, 1.0),
        first_update="ema",
        train_stats="batch",
        eval_stats="running",
        frozen_train_stats=None,
        variance_algorithm="two_pass",
        compute_dtype="promote_float32",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="input",
        single_value="allowed",
        affine_form="folded",
    ),
    cite={
        "affine_form": f"{_ORT} (new_scale = inv_std * scale, new_bias = bias - mean * new_scale, "
        "Y = X * new_scale + new_bias): folded; the operator's formula in {_DEFS} is centered "
        "(Y = (X - input_mean) / sqrt(input_var + epsilon) * scale + B)",
        "eps": f"{_DEFS} (attribute epsilon, a FLOAT: its default is float32(1e-5) = "
        "9.999999747378752e-06, and any value is held in float32)",
        "eps_placement": f"{_DEFS}: Y = (X - input_mean) / sqrt(input_var + epsilon) * scale + B",
        "eps_floor": f"{_ORT}: (var + epsilon_) used as given (no floor on the CPU provider; the CUDA "
        "provider's cuDNN path is another matter)",
        "momentum": f"{_DEFS} (attribute momentum, a FLOAT, default float32(0.9))",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_DEFS}: running_mean = input_mean * momentum + current_mean * "
        "(1 - momentum)",
        "normalize_var": f"{_DEFS}: Y = (X - current_mean) / sqrt(current_var + epsilon) with "
        f"current_var = ReduceVar(X); {_ORT} (saved_var_arr /= N * sample_size)",
        "running_var_update": f"{_DEFS}: 'ReduceVar refers to the population variance ... "
        "(this formula does not use sample size N - 1)'",
        "ema_debias": f"{_DEFS}: no debiasing",
        "initial_running": "an operator has no initial state: input_mean and input_var are inputs; "
        "converters export zeros/ones from the source layer",
        "first_update": f"{_DEFS}: the same blend every call",
        "train_stats": f"{_ORT} (is_train_: normalizes with saved_mean and saved_inv_std, this batch's)",
        "eval_stats": f"{_DEFS} (training_mode=0: input_mean, input_var)",
        "frozen_train_stats": "an operator: no frozen notion",
        "variance_algorithm": f"{_ORT} (saved_var += (X - saved_mean).squaredNorm(): two-pass)",
        "compute_dtype": f"{_DEFS}: 'The computation of ReduceMean and ReduceVar uses float "
        "to avoid overflow for float16 inputs', as ONNX Runtime does (tests/test_adapter_onnxruntime.py); "
        "onnx.reference sums float16 in float16 and overflows (profile onnx_reference)",
        "normalize_dtype": f"{_ORT}: inv_std, new_scale and new_bias kept in the kernel's type "
        "(onnx.reference rounds x - mean to X's dtype: profile onnx_reference)",
        "output_dtype": f"{_DEFS} (Y has type T)",
        "state_dtype": f"{_DEFS} (running_mean/var have type T2 = T1 or float)",
        "single_value": f"{_ORT}: no check; the population variance is 0",
    },
    confirmed="tests/test_onnx_vectors.py reproduces onnx's backend test vectors (node tests "
    "test_batchnorm_* and the pytorch-converted test_BatchNorm*_eval models); "
    "tests/test_adapter_onnxruntime.py runs ONNX Runtime's CPU provider against it",
    state_names={"running_mean": "input_mean", "running_var": "input_var",
                 "gamma": "scale", "beta": "B"},
)

PROFILES = [ONNX]
