"""Conversion paths: does a converted BatchNorm still behave, in eval *and* training, like its
source? Each test runs the real converter in the path's worker (its own environment where the
converter's pins need one) and pins one measured property, so a converter upgrade that changes
behaviour changes a test rather than passing silently.

Findings are asserted as what they are: the declared profile is the source's (``pytorch``), and a
divergence is checked against the knob flip (or the documented conversion fact) that explains it.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from bnspec.adapter import CONVERSION_CHECKS, conversion_verdicts
from bnspec.attribution import Observation, explain
from bnspec.case import Case, ConversionChecks, Result, make_case
from bnspec.discovery import load_adapter_ref
from bnspec.errors import FrameworkError
from bnspec.profiles import get_semantics
from bnspec.records import Explanation
from bnspec.semantics import Semantics
from bnspec.tolerance import compare
from tests.harness import run

PYTORCH = get_semantics("pytorch")
TS_EVAL = "bnspec.adapters.converters.torch_onnx:TORCH_ONNX_TS_EVAL"
TS_TRAINING = "bnspec.adapters.converters.torch_onnx:TORCH_ONNX_TS_TRAINING"
DYNAMO = "bnspec.adapters.converters.torch_onnx:TORCH_ONNX_DYNAMO"
ONNX2TORCH = "bnspec.adapters.converters.onnx2torch:TORCH_ONNX_ONNX2TORCH"


def _needs(*modules: str) -> pytest.MarkDecorator:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def _needs_env(ref: str) -> pytest.MarkDecorator:
    from bnspec.envs import missing_hint

    adapter = load_adapter_ref(ref)
    return pytest.mark.skipif(not adapter.installed(),
                              reason=f"{adapter.name}: environment {adapter.python} not created "
                              f"({missing_hint(adapter) or 'bnspec envs create'})")


def _case(seed: int = 0, modes: tuple[str, ...] = ("train", "train", "eval"),
          shape: tuple[int, ...] = (6, 3, 4), **hyper: object) -> Case:
    rng = np.random.default_rng(seed)
    c = shape[1]
    affine = hyper.pop("affine", True)
    hyper.setdefault("eps", 1e-3)
    hyper.setdefault("momentum", 0.1)
    return make_case(
        [rng.normal(1.5, 2.0, size=shape) for _ in modes],
        modes=list(modes),  # type: ignore[arg-type]
        gamma=rng.uniform(0.5, 2.0, size=c) if affine else None,
        beta=rng.normal(size=c) if affine else None,
        running_mean=rng.normal(size=c),
        running_var=rng.uniform(0.5, 2.0, size=c),
        dtype="float32",
        **hyper,  # type: ignore[arg-type]
    )


def _conforms(case: Case, result: Result, semantics=PYTORCH) -> bool:  # type: ignore[no-untyped-def]
    return compare(case, semantics, result).ok


def _checks(result: Result) -> ConversionChecks:
    assert result.conversion is not None, "a conversion path reports its conversion checks"
    return result.conversion


def _explained(case: Case, semantics: Semantics, result: Result) -> Explanation:
    """The knob flips that explain the result, as an Explanation record (the alternatives
    ``explain`` finds, in whichever form it gives them)."""
    return Explanation.of(explain(case, semantics, Observation(result=result)))


def _all_eval(case: Case) -> Case:
    """The same case with every step in eval mode: what an inference-only artifact computes."""
    return case.replace(steps=tuple(s.__class__(mode="eval", x=s.x) for s in case.steps))


def _from_converted_state(case: Case, result: Result) -> Case:
    """The case started from the running statistics the artifact holds (not the source's)."""
    return case.replace(running_mean=np.array(result.meta["converted_running_mean"]),
                        running_var=np.array(result.meta["converted_running_var"]))


def test_conversion_checks_round_trip_with_the_result_and_read_as_verdicts() -> None:
    # The nobuco runner sends its Result as JSON; a lowered layer has no readable eps (None).
    import json

    checks = ConversionChecks(hyperparameters_preserved=None, state_preserved=np.bool_(True),
                              source_untouched=False, trainable_match=True,
                              converted={"eval": {"eps": 1e-3}}, source_changes=["running_mean"],
                              trainable_source={"weight": 3}, trainable_converted={"scale": 3})
    result = Result.from_dict(json.loads(json.dumps(Result([], {"torch": "2"}, checks).to_dict())))
    assert result.conversion == checks and result.meta == {"torch": "2"}
    assert result.conversion.source_changes == ("running_mean",)
    assert conversion_verdicts(result) == {"state_preserved": True, "source_untouched": False,
                                           "trainable_match": True}
    assert CONVERSION_CHECKS == ("hyperparameters_preserved", "state_preserved", "source_untouched",
                                 "trainable_match")
    assert conversion_verdicts(Result([], {"source_untouched": True})) == {}  # meta is not read


VARIANTS = {
    "momentum": {},
    "momentum_none": {"momentum": None},
    "affine_off": {"affine": False},
}


# -- torch.onnx.export, TorchScript exporter, TrainingMode.EVAL -----------------------------------

@_needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ts_eval_export_runs_train_steps_as_eval_steps_and_never_updates_running_stats(variant) -> None:
    case = _case(**VARIANTS[variant])  # type: ignore[arg-type]
    result = run(TS_EVAL, case)
    assert not _conforms(case, result)
    # An inference graph: a training batch is normalized with the running statistics, which stay.
    assert _conforms(_all_eval(case), result)
    for step in result.steps:
        np.testing.assert_array_equal(step.running_mean, case.running_mean)
        np.testing.assert_array_equal(step.running_var, case.running_var)
    assert _checks(result).source_untouched, _checks(result).source_changes
    assert _checks(result).state_preserved and _checks(result).trainable_match
    converted = _checks(result).converted["eval"]
    assert converted["training_mode"] == 0 and converted["has_state"]
    # momentum=None has no ONNX spelling: the attribute is 1.0 (a running average that never moves)
    assert _checks(result).hyperparameters_preserved is (variant != "momentum_none")
    if variant == "momentum_none":
        assert converted["onnx_momentum"] == 1.0


@_needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("ref", [TS_EVAL, TS_TRAINING, DYNAMO])
def test_export_without_running_stats_conforms_to_pytorch_in_train_and_eval(ref) -> None:
    # track_running_stats=False: the exporters compute the batch moments in the graph.
    case = _case(track_running_stats=False, modes=("train", "eval", "train"))
    result = run(ref, case)
    assert _conforms(case, result), compare(case, PYTORCH, result).describe()
    assert _checks(result).source_untouched and _checks(result).trainable_match


# -- torch.onnx.export, TorchScript exporter, TrainingMode.TRAINING --------------------------------

@_needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_ts_training_export_updates_the_source_running_stats_while_tracing(variant) -> None:
    case = _case(**VARIANTS[variant])  # type: ignore[arg-type]
    result = run(TS_TRAINING, case)
    # Tracing runs the module once in train mode on the example batch: the *source* module's
    # running statistics take one update, and the artifact starts from the updated ones.
    assert not _checks(result).source_untouched
    assert set(_checks(result).source_changes) == {"num_batches_tracked", "running_mean", "running_var"}
    assert not _checks(result).state_preserved
    assert _checks(result).trainable_match
    assert _checks(result).converted["train"]["training_mode"] == 1


@_needs("torch", "onnx", "onnxruntime")
@pytest.mark.parametrize("variant", ["momentum", "affine_off"])
def test_ts_training_export_updates_running_var_with_the_biased_variance(variant) -> None:
    case = _case(**VARIANTS[variant])  # type: ignore[arg-type]
    result = run(TS_TRAINING, case)
    start = _from_converted_state(case, result)
    assert not _conforms(start, result)
    assert _explained(start, PYTORCH, result) == Explanation.of([
        {"running_var_update": ("biased", "unbiased")}
    ])


@_needs("torch", "onnx", "onnxruntime")
def test_ts_training_export_of_momentum_none_replaces_the_running_stats_every_step() -> None:
    case = _case(momentum=None, modes=("train", "train", "train", "eval"))
    result = run(TS_TRAINING, case)
    assert _checks(result).converted["train"]["onnx_momentum"] == 0.0
    assert not _checks(result).hyperparameters_preserved
    start = _from_converted_state(case, result)
    # The cumulative average becomes momentum 1 (copy the batch), with the biased variance.
    assert _conforms(start.replace(momentum=1.0), result,
                     PYTORCH.replace(running_var_update="biased"))


# -- torch.onnx.export, dynamo exporter ------------------------------------------------------------

@_needs("torch", "onnx", "onnxruntime", "onnxscript")
@pytest.mark.parametrize("variant", ["momentum", "affine_off"])
def test_dynamo_export_of_a_training_module_is_an_inference_graph(variant) -> None:
    case = _case(**VARIANTS[variant])  # type: ignore[arg-type]
    result = run(DYNAMO, case)
    assert _checks(result).converted["train"]["training_mode"] == 0
    assert not _conforms(case, result)
    assert _conforms(_all_eval(case), result)
    assert _checks(result).source_untouched, _checks(result).source_changes
    assert _checks(result).state_preserved and _checks(result).hyperparameters_preserved


@_needs("torch", "onnx", "onnxruntime", "onnxscript")
def test_dynamo_export_turns_affine_off_into_parameter_like_initializers() -> None:
    result = run(DYNAMO, _case(affine=False))
    assert _checks(result).trainable_source == {}
    # ones/zeros for scale and B become initializers, indistinguishable from parameters.
    assert sum(_checks(result).trainable_converted.values()) == 6
    assert not _checks(result).trainable_match


@_needs("torch", "onnx", "onnxruntime", "onnxscript")
def test_dynamo_export_of_momentum_none_in_training_fails_in_torch_export() -> None:
    with pytest.raises(FrameworkError, match="TorchExportError"):
        run(DYNAMO, _case(momentum=None))


@_needs("torch", "onnx", "onnxruntime", "onnxscript")
def test_dynamo_export_of_momentum_none_runs_in_eval() -> None:
    case = _case(momentum=None, modes=("eval", "eval"))
    result = run(DYNAMO, case)
    assert _conforms(case, result)


# -- torch -> ONNX -> onnx2torch -> torch (envs/torchvision) ---------------------------------------
ONNX2TORCH_17 = "bnspec.adapters.converters.onnx2torch:TORCH_ONNX_ONNX2TORCH_OPSET17"


@_needs_env(ONNX2TORCH)
@pytest.mark.parametrize("ref", [ONNX2TORCH, ONNX2TORCH_17])
def test_onnx2torch_round_trip_trains_like_the_source(ref) -> None:
    case = _case(modes=("train", "eval", "train", "eval"))
    result = run(ref, case)
    assert _conforms(case, result), compare(case, PYTORCH, result).describe()
    assert _checks(result).converted["module"] == "BatchNorm1d"
    assert _checks(result).source_untouched and _checks(result).state_preserved
    assert _checks(result).trainable_match and _checks(result).hyperparameters_preserved


@_needs_env(ONNX2TORCH)
def test_onnx2torch_round_trip_of_momentum_none_freezes_the_running_stats() -> None:
    # The TorchScript export writes momentum=None as the ONNX attribute 1.0; onnx2torch reads
    # it back as torch momentum 1 - 1.0 = 0: training never moves the running statistics.
    case = _case(momentum=None, modes=("train", "train", "eval"))
    result = run(ONNX2TORCH, case)
    assert _checks(result).converted["momentum"] == 0.0
    assert not _checks(result).hyperparameters_preserved
    assert not _conforms(case, result)
    for step in result.steps:
        np.testing.assert_array_equal(step.running_mean, case.running_mean)
        np.testing.assert_array_equal(step.running_var, case.running_var)
    # The training batches are still normalized with their own moments: only the update is lost.
    for got, want in zip(result.steps[:2], _reference_steps(case.replace(momentum=1e-300)), strict=False):
        np.testing.assert_allclose(got.y, want.y, rtol=1e-5, atol=1e-5)


def _reference_steps(case: Case) -> list:  # type: ignore[type-arg]
    from bnspec.reference import reference

    return reference(case, PYTORCH).steps


@_needs_env(ONNX2TORCH)
@pytest.mark.parametrize("hyper,message", [
    ({"affine": False}, "Constant', version=19"),
    ({"track_running_stats": False}, "Constant', version=19"),
])
def test_onnx2torch_cannot_convert_the_default_opset_export_of_constants(hyper, message) -> None:
    with pytest.raises(FrameworkError, match=message):
        run(ONNX2TORCH, _case(**hyper))  # type: ignore[arg-type]


@_needs_env(ONNX2TORCH)
def test_onnx2torch_at_opset_17_trains_affine_off_through_its_functional_batchnorm() -> None:
    case = _case(affine=False, modes=("train", "eval", "train"))
    result = run(ONNX2TORCH_17, case)
    assert _checks(result).converted["module"] == "OnnxBatchNorm"
    assert _conforms(case, result), compare(case, PYTORCH, result).describe()
    assert _checks(result).trainable_converted == {}


@_needs_env(ONNX2TORCH)
def test_onnx2torch_cannot_convert_a_batchnorm_without_running_stats() -> None:
    # The export computes the batch moments and emits BatchNormalization with its mean/var outputs.
    with pytest.raises(FrameworkError, match="mean/var output is not implemented"):
        run(ONNX2TORCH_17, _case(track_running_stats=False))


# -- Flax -> jax2onnx -> ONNX Runtime (envs/jax2onnx) ----------------------------------------------
NNX_JAX2ONNX = "bnspec.adapters.converters.jax2onnx:FLAX_NNX_JAX2ONNX"
LINEN_JAX2ONNX = "bnspec.adapters.converters.jax2onnx:FLAX_LINEN_JAX2ONNX"


@_needs_env(NNX_JAX2ONNX)
@pytest.mark.parametrize("ref,profile", [(NNX_JAX2ONNX, "flax_nnx"), (LINEN_JAX2ONNX, "flax_linen")])
@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 4, 5)])
def test_jax2onnx_exports_a_training_batchnorm_as_inference(ref, profile, shape) -> None:
    # jax2onnx's BatchNorm plugins lower use_running_average=False to an inference
    # BatchNormalization (nnx warns "converting to inference mode"; linen's mutable batch_stats
    # outputs become the inputs passed through): train steps normalize with the running
    # statistics and never update them. Eval fidelity is intact.
    case = _case(shape=shape)
    result = run(ref, case)
    semantics = get_semantics(profile)
    assert not compare(case, semantics, result).ok
    assert compare(_all_eval(case), semantics, result).ok
    for step in result.steps:
        np.testing.assert_array_equal(step.running_mean, case.running_mean.astype(np.float32))
    assert _checks(result).converted["train"]["training_mode"] == 0
    assert _checks(result).source_untouched and _checks(result).hyperparameters_preserved
    assert _checks(result).trainable_match


@_needs_env(LINEN_JAX2ONNX)
def test_jax2onnx_linen_train_function_returns_its_input_statistics() -> None:
    result = run(LINEN_JAX2ONNX, _case())
    train = _checks(result).converted["train"]
    assert train["graph_outputs"][1:] == train["graph_inputs"][1:]


@_needs_env(NNX_JAX2ONNX)
@pytest.mark.parametrize("ref", [NNX_JAX2ONNX, LINEN_JAX2ONNX])
def test_jax2onnx_turns_affine_off_into_parameter_like_initializers(ref) -> None:
    case = _case(affine=False, modes=("eval", "eval"))
    result = run(ref, case)
    assert compare(case, get_semantics("flax_nnx" if ref == NNX_JAX2ONNX else "flax_linen"), result).ok
    assert _checks(result).trainable_source == {}
    assert sum(_checks(result).trainable_converted.values()) == 6
    assert not _checks(result).trainable_match


# -- Keras 3 / tf.keras -> tf2onnx -> ONNX Runtime (envs/tf2onnx) ---------------------------------
KERAS3_TF2ONNX = "bnspec.adapters.converters.tf2onnx:KERAS3_TF2ONNX"
TF_KERAS_TF2ONNX = "bnspec.adapters.converters.tf2onnx:TF_KERAS_TF2ONNX"
TF_KERAS_NONFUSED_TF2ONNX = "bnspec.adapters.converters.tf2onnx:TF_KERAS_NONFUSED_TF2ONNX"
IMAGES = (6, 3, 4, 5)


def _frozen_first(case: Case) -> Case:
    steps = case.steps
    return case.replace(steps=(steps[0].__class__(mode="train", x=steps[0].x, frozen=True),
                               *steps[1:]))


@_needs_env(TF_KERAS_TF2ONNX)
@pytest.mark.parametrize("variant", ["momentum", "affine_off"])
def test_tf2onnx_exports_a_fused_tf_keras_batchnorm_in_training_as_inference(variant) -> None:
    # tf2onnx converts FusedBatchNormV3(is_training=True) to an inference BatchNormalization
    # ("not supported", a logged warning): train steps normalize with the running statistics,
    # which never move. eps and momentum survive as attributes; eval fidelity is intact.
    case = _case(shape=IMAGES, **VARIANTS[variant])  # type: ignore[arg-type]
    result = run(TF_KERAS_TF2ONNX, case)
    semantics = get_semantics("tf_keras_fused")
    assert not compare(case, semantics, result).ok
    assert compare(_all_eval(case), semantics, result).ok
    assert _checks(result).converted["train"]["training_mode"] == 0
    assert result.meta["exporters"] == {"train": "from_function(training=True)", "eval": "from_keras"}
    assert _checks(result).hyperparameters_preserved and _checks(result).state_preserved
    assert _checks(result).source_untouched, _checks(result).source_changes
    # affine=False: scale/B become ones/zeros initializers, indistinguishable from parameters.
    assert _checks(result).trainable_match is (variant != "affine_off")


@_needs_env(TF_KERAS_TF2ONNX)
@pytest.mark.parametrize("ref,profile", [(TF_KERAS_TF2ONNX, "tf_keras_fused"),
                                         (TF_KERAS_NONFUSED_TF2ONNX, "tf_keras_nonfused"),
                                         (KERAS3_TF2ONNX, "keras")])
def test_tf2onnx_keeps_a_frozen_keras_batchnorm_in_inference(ref, profile) -> None:
    case = _frozen_first(_case(shape=IMAGES, modes=("train", "eval")))
    result = run(ref, case)
    assert compare(case, get_semantics(profile), result).ok
    assert _checks(result).source_untouched, _checks(result).source_changes


@_needs_env(KERAS3_TF2ONNX)
@pytest.mark.parametrize("ref,profile", [(KERAS3_TF2ONNX, "keras"),
                                         (TF_KERAS_NONFUSED_TF2ONNX, "tf_keras_nonfused")])
@pytest.mark.parametrize("variant", ["momentum", "affine_off"])
def test_tf2onnx_lowers_an_unfused_keras_batchnorm_to_arithmetic_that_drops_the_updates(
        ref, profile, variant) -> None:
    # Keras 3 and tf.keras fused=False become ReduceMean/Sub/Mul/Sqrt arithmetic: a train step
    # normalizes with its batch moments, but the moving-average assignments are dropped, so
    # the graph behaves as momentum 0 (the statistics stay where the source had them), and
    # neither eps, momentum nor the statistics are attributes any more.
    case = _case(shape=IMAGES, modes=("train", "train", "eval"), **VARIANTS[variant])  # type: ignore[arg-type]
    result = run(ref, case)
    semantics = get_semantics(profile)
    assert not compare(case, semantics, result).ok
    assert compare(case.replace(momentum=0.0), semantics, result).ok
    converted = _checks(result).converted
    assert converted["train"]["batchnorm_nodes"] == converted["eval"]["batchnorm_nodes"] == 0
    assert "ReduceMean" in converted["train"]["ops"] and converted["eval"]["ops"] == ["Add", "Mul"]
    assert _checks(result).hyperparameters_preserved is None and _checks(result).state_preserved is None
    assert _checks(result).source_untouched, _checks(result).source_changes
    # gamma and beta are folded into the Mul/Add constants: nothing left to train.
    assert _checks(result).trainable_converted == {}
    assert _checks(result).trainable_match is (variant == "affine_off")


@_needs_env(KERAS3_TF2ONNX)
def test_tf2onnx_from_keras_cannot_convert_a_keras3_model() -> None:
    result = run(KERAS3_TF2ONNX, _case(modes=("eval",)))
    assert result.meta["from_keras_error"].startswith("KeyError: 'keras_tensor")
    assert result.meta["exporters"]["eval"] == "from_function(training=False)"


# -- torch -> nobuco -> Keras 2.15 (envs/nobuco, a warm helper process of the worker) -------------
NOBUCO = "bnspec.adapters.converters.nobuco:TORCH_NOBUCO"


@_needs_env(NOBUCO)
def test_nobuco_keras_model_of_images_trains_like_the_source() -> None:
    # Rank 4: Keras 2 picks its fused kernel, whose running variance is the unbiased one.
    case = _case(shape=IMAGES, modes=("train", "eval", "train", "eval"))
    result = run(NOBUCO, case)
    assert _conforms(case, result), compare(case, PYTORCH, result).describe()
    assert _checks(result).source_untouched and _checks(result).trainable_match


@_needs_env(NOBUCO)
def test_nobuco_keras_model_of_features_updates_running_var_with_the_biased_variance() -> None:
    # Rank 2: Keras 2's unfused path, whose moving variance takes the biased batch variance.
    case = _case(shape=(6, 3), modes=("train", "eval", "train", "eval"))
    result = run(NOBUCO, case)
    assert not _conforms(case, result)
    assert _explained(case, PYTORCH, result) == Explanation.of([
        {"running_var_update": ("biased", "unbiased")}
    ])
    assert _checks(result).converted["keras_momentum"] == pytest.approx(0.9)
    assert _checks(result).hyperparameters_preserved and _checks(result).state_preserved
    assert _checks(result).source_untouched and _checks(result).trainable_match


@_needs_env(NOBUCO)
@pytest.mark.parametrize("variant", ["momentum_none", "affine_off", "untracked"])
def test_nobuco_cannot_convert_a_batchnorm_without_momentum_affine_or_running_stats(variant) -> None:
    hyper = {**VARIANTS, "untracked": {"track_running_stats": False}}[variant]
    with pytest.raises(FrameworkError, match="Failed conversion: BatchNorm1d"):
        run(NOBUCO, _case(**hyper))  # type: ignore[arg-type]


# -- flax.nnx -> jax2onnx -> ONNX -> onnx2torch -> torch (envs/jax2onnx, then envs/torchvision) ---
FLAX_ONNX2TORCH = "bnspec.adapters.converters.chains:FLAX_NNX_JAX2ONNX_ONNX2TORCH"


@_needs_env(FLAX_ONNX2TORCH)
@pytest.mark.parametrize("variant", ["momentum", "affine_off"])
def test_flax_to_torch_chain_trains_with_the_unbiased_running_var_of_torch(variant) -> None:
    # jax2onnx exports an inference BatchNormalization; onnx2torch rebuilds an nn.BatchNorm1d
    # from it, which trains again, with torch's unbiased running-variance update.
    case = _case(shape=(6, 3), modes=("train", "eval", "train", "eval"), **VARIANTS[variant])  # type: ignore[arg-type]
    result = run(FLAX_ONNX2TORCH, case)
    flax_nnx = get_semantics("flax_nnx")
    assert _explained(case, flax_nnx, result) == Explanation.of([
        {"running_var_update": ("unbiased", "biased")}
    ])
    assert _checks(result).converted["module"] == "BatchNorm1d"
    assert _checks(result).hyperparameters_preserved and _checks(result).state_preserved
    assert _checks(result).source_untouched
    # affine=False comes back as affine=True with ones/zeros weight and bias: trainable again.
    assert _checks(result).converted["affine"] is True
    assert _checks(result).trainable_match is (variant == "momentum")


@_needs_env(FLAX_ONNX2TORCH)
@pytest.mark.parametrize("shape", [(6, 3, 4), IMAGES])
def test_flax_to_torch_chain_cannot_convert_the_opset_23_transpose_of_channels_last(shape) -> None:
    # Ranks 3 to 5: jax2onnx moves channels-last to ONNX's channels-first with Transpose-23.
    with pytest.raises(FrameworkError, match="operation_type='Transpose', version=23"):
        run(FLAX_ONNX2TORCH, _case(shape=shape))


# -- torch -> ONNX -> onnx2tf -> TensorFlow (export in the main env, worker in envs/onnx2tf) ------
ONNX2TF = "bnspec.adapters.converters.onnx2tf:TORCH_ONNX_ONNX2TF"


@_needs_env(ONNX2TF)
@pytest.mark.parametrize("variant,shape", [
    ("momentum", (6, 3)), ("momentum", (6, 3, 4)), ("momentum", IMAGES),
    ("momentum_none", (6, 3, 4)), ("affine_off", (6, 3, 4)),
])
def test_onnx2tf_folds_the_batchnorm_into_constants_so_train_steps_run_as_eval_steps(
        variant, shape) -> None:
    # onnx2tf lowers BatchNormalization to tf.nn.batch_normalization over constants, folded into
    # one Mul and one Add: no weights, no state, and training=True changes nothing.
    case = _case(shape=shape, **VARIANTS[variant])  # type: ignore[arg-type]
    result = run(ONNX2TF, case)
    assert not _conforms(case, result)
    assert _conforms(_all_eval(case), result)
    assert _explained(case, PYTORCH, result) == Explanation.of([
        {"running_update": ("none", "ema"), "train_stats": ("running", "batch")}
    ])
    assert all(step.running_mean is None for step in result.steps)
    converted = _checks(result).converted
    assert converted["ops"] == ["multiply", "_add_dispatch"]
    assert converted["weights"] == {} and not converted["has_state"]
    # eps and the running statistics survive, folded: gamma * rsqrt(var + eps), beta - mean * that.
    assert result.meta["folded_constants_match"] and result.meta["folded_constants_match_onnx"]
    assert _checks(result).hyperparameters_preserved is None and _checks(result).state_preserved is None
    assert _checks(result).source_untouched, _checks(result).source_changes
    assert _checks(result).trainable_converted == {}
    assert _checks(result).trainable_match is (variant == "affine_off")
    assert result.meta["network_attempts"] == []


@_needs_env(ONNX2TF)
def test_onnx2tf_without_running_stats_conforms_to_pytorch_in_train_and_eval() -> None:
    # track_running_stats=False: the export computes the batch moments in the graph, which
    # onnx2tf keeps as ReduceMean arithmetic.
    case = _case(track_running_stats=False, modes=("train", "eval", "train"))
    result = run(ONNX2TF, case)
    assert _conforms(case, result), compare(case, PYTORCH, result).describe()
    assert "reduce_mean" in _checks(result).converted["ops"]
    assert result.meta["folded_constants_match"] is None
    assert _checks(result).source_untouched and not _checks(result).trainable_match


@_needs_env(ONNX2TF)
def test_onnx2tf_float64_model_normalizes_with_the_float32_eps_of_the_onnx_attribute() -> None:
    case = _case(modes=("eval", "eval")).replace(dtype="float64", param_dtype="float64")
    result = run(ONNX2TF, case)
    assert result.steps[0].y_dtype == "float64"
    assert not _conforms(case, result)
    assert _conforms(case.replace(eps=float(np.float32(case.eps))), result)
    # The export rounded eps; onnx2tf folded what the graph holds.
    assert not result.meta["folded_constants_match"] and result.meta["folded_constants_match_onnx"]


def test_onnx2tf_conversion_runs_with_outgoing_connections_refused_and_recorded() -> None:
    import socket

    from bnspec.adapters.converters.onnx2tf import _no_network

    with _no_network() as attempts, pytest.raises(ConnectionRefusedError):
        socket.create_connection(("192.0.2.1", 80), timeout=1)
    assert attempts == ["('192.0.2.1', 80)"]
    assert socket.socket.connect is not None and "refuse" not in socket.socket.connect.__name__
