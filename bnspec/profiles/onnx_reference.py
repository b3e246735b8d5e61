"""onnx.reference (onnx's own NumPy evaluator): the BatchNormalization versions it implements, as
they compute, measured by running ``onnx.reference.ReferenceEvaluator`` (adapters/onnx_reference.py).

The evaluator resolves a model's opset to the newest class at or below it in
onnx/reference/ops/op_batch_normalization.py: ``BatchNormalization_6`` (opsets 6-8),
``BatchNormalization_9`` (9-13), ``BatchNormalization_14`` (14 and later; 15 has no class). Two
behaviours follow:

- ``onnx_reference``: the training_mode operator (``BatchNormalization_14``, opsets 14 and 15)
  and the test mode of ``BatchNormalization_6`` (``is_test=1``), which is the same
  ``_batchnorm_test_mode``. Unlike the ``onnx`` profile (the operator text and ONNX Runtime) it
  computes float16 in float16, keeps the running statistics in X's dtype even where the
  operator types them T2, and normalizes in the centered form.
- ``onnx_reference_9``: ``BatchNormalization_9`` normalizes a test-mode node with statistics
  blended by momentum, which no knob value expresses (see its title).
"""

from __future__ import annotations

from bnspec.profiles.profile import Profile
from bnspec.semantics import Semantics

_OPS = "onnx/reference/ops/op_batch_normalization.py"
_TEST = f"{_OPS}::_batchnorm_test_mode"
_TRAIN = f"{_OPS}::_batchnorm_training_mode"
_RUN14 = f"{_OPS}::BatchNormalization_14._run"
_RUN9 = f"{_OPS}::BatchNormalization_9._run"
_ATTR = "onnx/reference/op_run.py::_attribute_conversion_function (FLOAT -> np.float32(att.f))"
_DEFAULTS = "onnx/reference/op_run.py::OpRun._load_attributes (fills the schema's default values)"
_DEFS = "onnx docs/Changelog.md BatchNormalization-{} (onnx/defs/nn/defs.cc)"
_NUMPY = "numpy/_core/_methods.py::_var (the mean and the squared deviations summed in the input dtype)"

_SEMANTICS = Semantics(
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
    running_update="ema",
    train_stats="batch",
    eval_stats="running",
    frozen_train_stats=None,
    variance_algorithm="two_pass",
    compute_dtype="input",
    normalize_dtype="input",
    output_dtype="input",
    state_dtype="input",
    single_value="allowed",
    affine_form="centered",
)

_CITE = {
    "eps": f"{_DEFS.format(15)} (epsilon, a FLOAT, default 1e-5f); {_ATTR}: held as np.float32",
    "eps_placement": f"{_TEST}: y = s * (x - mean) / np.sqrt(var + epsilon) + bias",
    "eps_floor": f"{_TEST}: epsilon added as given, no floor",
    "momentum": f"{_DEFS.format(15)} (momentum, a FLOAT, default 0.9f); {_DEFAULTS}",
    "momentum_weights": f"{_TRAIN}: output_mean = mean * momentum + saved_mean * (1 - momentum)",
    "normalize_var": f"{_TRAIN}: saved_var = x.var(axis=axis) (ddof 0) normalizes",
    "running_var_update": f"{_TRAIN}: output_var = var * momentum + saved_var * (1 - momentum), "
    "saved_var = x.var(axis) (population variance)",
    "ema_debias": f"{_TRAIN}: no debiasing",
    "initial_running": "an operator has no state: input_mean and input_var are inputs (the case "
    "loads them)",
    "first_update": f"{_TRAIN}: the same blend every call",
    "running_update": f"{_RUN14}: training_mode=1 returns output_mean, output_var",
    "train_stats": f"{_TRAIN}: y = _batchnorm_test_mode(x, s, bias, saved_mean, saved_var)",
    "eval_stats": f"{_RUN14}: training_mode=0 normalizes with the inputs mean, var; "
    f"{_OPS}::BatchNormalization_6._run with is_test=1 the same",
    "frozen_train_stats": "an operator: no frozen notion",
    "variance_algorithm": f"{_TRAIN}: x.var, two-pass ({_NUMPY})",
    "compute_dtype": f"{_TRAIN}: x.mean, x.var in x's dtype ({_NUMPY}; x.mean sums float16 in "
    "float32 and rounds the mean back to float16). The BatchNormalization-15 text says 'The "
    "computation of ReduceMean and ReduceVar uses float to avoid overflow for float16 inputs': "
    "here a float16 batch of 512 values near 1000 gives an infinite variance",
    "normalize_dtype": f"{_TEST}: x - mean and s * (x - mean) in x's dtype (np.sqrt(var + "
    "epsilon) is float32 for float16 input: epsilon is an np.float32)",
    "output_dtype": f"{_TEST}: y.astype(x.dtype)",
    "state_dtype": f"{_TRAIN}: output_mean.astype(x.dtype), output_var.astype(x.dtype): X's "
    f"dtype, also where {_DEFS.format(15)} types running_mean/running_var T2 (the input_mean's)",
    "single_value": f"{_TRAIN}: no check; x.var of one value is 0",
    "affine_form": f"{_TEST}: s * (x - mean) / np.sqrt(var + epsilon) + bias (centered: a "
    "constant channel equal to the mean gives bias exactly)",
}
_STATE_NAMES = {"running_mean": "input_mean", "running_var": "input_var", "gamma": "scale",
                "beta": "B"}

ONNX_REFERENCE = Profile(
    name="onnx_reference",
    framework="onnx",
    title="onnx.reference BatchNormalization_14 (opsets 14, 15; and opset 6's is_test=1 test "
    "mode): numerics in the input dtype, state in X's dtype, centered affine form",
    semantics=_SEMANTICS,
    cite=_CITE,
    confirmed="tests/test_adapter_onnx_reference.py runs onnx.reference.ReferenceEvaluator "
    "(adapters onnx_reference_6, _14, _15) on hand-computed cases and checks bnspec fingerprint",
    state_names=_STATE_NAMES,
)

_BLEND = (f"{_RUN9}: momentum is never None ({_DEFAULTS}), so a one-output node, test mode by "
          f"{_DEFS.format(9)}, runs the training branch: y = _batchnorm_test_mode(x, ..., "
          "output_mean, output_var) with output_mean = mean * momentum + batch_mean * "
          "(1 - momentum), output_var likewise with the biased batch variance; nothing is updated")
ONNX_REFERENCE_9 = Profile(
    name="onnx_reference_9",
    framework="onnx",
    title="onnx.reference BatchNormalization_9 (opsets 9-13), eval only. NOT EXPRESSIBLE: a "
    "test-mode node is normalized with momentum * input_mean + (1 - momentum) * batch_mean (and "
    "likewise the biased variances), not with input_mean/input_var; no eval_stats value says so, "
    "so the knobs state the operator text and onnx_reference_9 departs from them in every eval "
    "step with momentum < 1. Training nodes fail (only Y is returned)",
    semantics=_SEMANTICS,
    cite={
        **_CITE,
        "eval_stats": f"{_DEFS.format(9)}: 'Output case #2: Y (test mode)' normalizes with the "
        f"mean and var inputs; the evaluator does not ({_BLEND})",
        "running_update": f"{_DEFS.format(9)} (outputs mean, var in training mode); {_RUN9} "
        "returns Y only, so training nodes cannot run in onnx.reference",
        "train_stats": f"{_DEFS.format(9)} (training mode: the batch statistics); not runnable "
        f"in onnx.reference ({_RUN9} returns Y only)",
        "momentum": f"{_DEFS.format(9)} (momentum, a FLOAT, default 0.9f); {_RUN9} blends with it "
        "in test mode too",
    },
    confirmed="tests/test_adapter_onnx_reference.py runs onnx.reference.ReferenceEvaluator at "
    "opset 9 (adapter onnx_reference_9) and pins the blended test mode by hand",
    state_names=_STATE_NAMES,
)

PROFILES = [ONNX_REFERENCE, ONNX_REFERENCE_9]
