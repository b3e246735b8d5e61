"""Hand-computed small cases for the reference, one per knob (derivations in the comments).

Most use the batch x = [0, 2] on one channel (shape (2, 1)): batch mean 1, biased variance 1,
unbiased variance 2. Semantics are spelled out knob by knob, so a profile edit cannot move them.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import make_case
from bnspec.errors import SingleValueError
from bnspec.oracle import oracle
from bnspec.reference import emulate, reference
from bnspec.semantics import Semantics

X02 = np.array([[0.0], [2.0]])  # mean 1, biased var 1, unbiased var 2
X24 = np.array([[2.0], [4.0]])  # mean 3, biased var 1
BASE = Semantics(eps=0.0, momentum_weights="batch", running_var_update="biased",
                 normalize_var="biased", single_value="error")


def _both(case, sem, **kw):  # type: ignore[no-untyped-def]
    """The reference, checked to agree with the exact oracle on these exact small cases."""
    ref, exact = reference(case, sem, **kw), oracle(case, sem, **kw)
    for r, e in zip(ref.steps, exact.steps, strict=True):
        for q in r.QUANTITIES:
            if getattr(e, q) is not None:
                np.testing.assert_allclose(getattr(r, q), getattr(e, q), rtol=4e-16, atol=0)
    return ref


def test_onnx_documentation_example_1x2x1x3_in_eval_mode() -> None:
    # ONNX's BatchNormalization example: x = [[[-1, 0, 1]], [[2, 3, 4]]], scale [1, 1.5],
    # B [0, 1], mean [0, 3], var [1, 1.5], eps 1e-5.
    # channel 0: x / sqrt(1 + 1e-5)              = +-0.9999950000374997, 0
    # channel 1: 1.5 (x - 3) / sqrt(1.50001) + 1 = -0.22474078892909666, 1, 2.224740788929097
    x = np.array([[[[-1.0, 0.0, 1.0]], [[2.0, 3.0, 4.0]]]])
    case = make_case(x, modes="eval", gamma=np.array([1.0, 1.5]), beta=np.array([0.0, 1.0]),
                     running_mean=np.array([0.0, 3.0]), running_var=np.array([1.0, 1.5]), eps=1e-5)
    y = _both(case, BASE).steps[0].y
    np.testing.assert_allclose(
        y, [[[[-0.9999950000374997, 0.0, 0.9999950000374997]],
             [[-0.22474078892909666, 1.0, 2.224740788929097]]]], rtol=2**-52)


@pytest.mark.parametrize(("placement", "expected"),
                         [("inside_sqrt", 0.8944271909999159), ("outside_sqrt", 0.8)])
def test_eps_inside_or_outside_the_square_root(placement: str, expected: float) -> None:
    # eps 0.25, var 1: inside 1/sqrt(1.25) = 0.894427191; outside 1/(1 + 0.25) = 0.8.
    case = make_case(X02, eps=0.25, momentum=0.5)
    y = _both(case, BASE.replace(eps_placement=placement)).steps[0].y
    np.testing.assert_allclose(y[:, 0], [-expected, expected], rtol=2**-52)


@pytest.mark.parametrize(("estimator", "expected"), [("unbiased", 1.5), ("biased", 1.0)])
def test_running_var_estimator_n_over_n_minus_1(estimator: str, expected: float) -> None:
    # momentum 0.5 from var 1: unbiased 0.5*1 + 0.5*(2/1 * 1) = 1.5; biased 0.5*1 + 0.5*1 = 1.
    case = make_case(X02, eps=0.0, momentum=0.5)
    step = _both(case, BASE.replace(running_var_update=estimator)).steps[0]
    assert step.running_var.tolist() == [expected]
    assert step.running_mean.tolist() == [0.5]  # 0.5*0 + 0.5*1


def test_normalize_var_unbiased_divides_by_the_sample_std() -> None:
    # var 2 normalizes: y = (x - 1)/sqrt(2) = -+0.7071067811865475.
    y = _both(make_case(X02, eps=0.0), BASE.replace(normalize_var="unbiased")).steps[0].y
    np.testing.assert_allclose(y[:, 0], [-0.7071067811865475, 0.7071067811865475], rtol=2**-52)


def test_keras_and_pytorch_momentum_conventions() -> None:
    # Canonical momentum 0.25 is the batch weight; each profile translates it, so both give
    # 0.75*0 + 0.25*1 = 0.25. A Keras layer handed PyTorch's 0.25 unchanged (passed_as="batch")
    # weighs the *running* statistic by 0.25: 0.25*0 + 0.75*1 = 0.75.
    case = make_case(X02, eps=0.0, momentum=0.25)
    pytorch, keras = BASE, BASE.replace(momentum_weights="running")
    assert _both(case, pytorch).steps[0].running_mean.tolist() == [0.25]
    assert _both(case, keras).steps[0].running_mean.tolist() == [0.25]
    assert _both(case, keras, passed_as="batch").steps[0].running_mean.tolist() == [0.75]


def test_cumulative_momentum_averages_all_batches() -> None:
    # momentum None: after batch 1 the mean is 1; after batch 2, (1 + 3)/2 = 2.
    case = make_case([X02, X24], eps=0.0, momentum=None, running_mean=np.array([7.0]))
    steps = _both(case, BASE).steps
    assert [s.running_mean.tolist() for s in steps] == [[1.0], [2.0]]


def test_ema_debias_after_one_and_two_steps() -> None:
    # decay 0.5 (momentum 0.5), hidden mean starts at 0.
    # step 1: hidden 0.5*0 + 0.5*1 = 0.5, read 0.5/(1 - 0.5)    = 1
    # step 2: hidden 0.5*0.5 + 0.5*3 = 1.75, read 1.75/(1 - 0.25) = 7/3
    case = make_case([X02, X24], eps=0.0, momentum=0.5, running_mean=np.zeros(1),
                     running_var=np.zeros(1))
    steps = _both(case, BASE.replace(ema_debias=True)).steps
    assert steps[0].running_mean.tolist() == [1.0]
    assert steps[1].running_mean.tolist() == [2.3333333333333335]
    assert steps[1].running_var.tolist() == [1.0]  # (0.25*0 + 0.25*1 + 0.5*1)/0.75
    assert _both(case, BASE).steps[1].running_mean.tolist() == [1.75]  # undebiased


def test_first_update_replace_copies_the_batch_statistics() -> None:
    # running mean 5 is replaced by 1 at the first step, then blends: 0.5*1 + 0.5*3 = 2.
    case = make_case([X02, X24], eps=0.0, momentum=0.5, running_mean=np.array([5.0]))
    steps = _both(case, BASE.replace(first_update="replace")).steps
    assert [s.running_mean.tolist() for s in steps] == [[1.0], [2.0]]
    assert _both(case, BASE).steps[0].running_mean.tolist() == [3.0]  # ema: 0.5*5 + 0.5*1


def test_running_update_none_leaves_the_running_statistics_and_with_running_stats_is_eval() -> None:
    # An inference-only artifact: training steps do not move the running statistics; with
    # train_stats=running, a training step is an eval step: y = (x - 5) / sqrt(4) = [-2.5, -1.5].
    case = make_case([X02, X24], eps=0.0, momentum=0.5, running_mean=np.array([5.0]),
                     running_var=np.array([4.0]))
    steps = _both(case, BASE.replace(running_update="none")).steps
    assert [s.running_mean.tolist() for s in steps] == [[5.0], [5.0]]
    assert [s.running_var.tolist() for s in steps] == [[4.0], [4.0]]
    assert steps[0].y[:, 0].tolist() == [-1.0, 1.0]  # still normalized with the batch
    as_eval = _both(case, BASE.replace(running_update="none", train_stats="running")).steps
    assert as_eval[0].y[:, 0].tolist() == [-2.5, -1.5]


def test_equinox_ema_normalizes_training_batches_with_the_updated_running_stats() -> None:
    # first_update replace + train_stats running (equinox "ema"): step 1 normalizes with the
    # copied batch stats (mean 1, var 1): y = [-1, 1]. Step 2 (x = [2, 4]) with the blended
    # stats mean 0.5*1 + 0.5*3 = 2, var 0.5*1 + 0.5*1 = 1: y = [0, 2] (batch stats: [-1, 1]).
    case = make_case([X02, X24], eps=0.0, momentum=0.5)
    sem = BASE.replace(first_update="replace", train_stats="running")
    steps = _both(case, sem).steps
    assert steps[0].y[:, 0].tolist() == [-1.0, 1.0]
    assert steps[1].y[:, 0].tolist() == [0.0, 2.0]


def test_frozen_layer_uses_running_stats_and_does_not_update() -> None:
    # Keras trainable=False in training: running mean 0.5, var 4 -> y = (x - 0.5)/2.
    case = make_case(X02, eps=0.0, momentum=0.5, frozen=[True], running_mean=np.array([0.5]),
                     running_var=np.array([4.0]))
    step = _both(case, BASE.replace(frozen_train_stats="running")).steps[0]
    assert step.y[:, 0].tolist() == [-0.25, 0.75]
    assert (step.running_mean.tolist(), step.running_var.tolist()) == ([0.5], [4.0])


@pytest.mark.parametrize(("eps", "expected"), [(0.0, 0.8944271909999159), (1.0, 0.7071067811865475)])
def test_eps_floor_raises_a_smaller_eps(eps: float, expected: float) -> None:
    # floor 0.25: eps 0 becomes 0.25 (1/sqrt(1.25)); eps 1 stays 1 (1/sqrt(2)).
    case = make_case(X02, eps=eps)
    y = _both(case, BASE.replace(eps_floor=0.25)).steps[0].y
    np.testing.assert_allclose(y[:, 0], [-expected, expected], rtol=2**-52)


def test_untracked_layer_normalizes_eval_batches_with_batch_stats() -> None:
    case = make_case(X02, modes="eval", eps=0.0, track_running_stats=False)
    step = _both(case, BASE).steps[0]
    assert step.y[:, 0].tolist() == [-1.0, 1.0]
    assert step.running_mean is None


def test_single_value_error_allowed_or_nan() -> None:
    # one value per channel: x = [3], momentum 0.5 from var 1, unbiased running variance.
    # error: SingleValueError. allowed: factor 1, var 0.5*1 + 0.5*0 = 0.5, y = 0/sqrt(eps) + beta.
    # nan: factor 1/0 = inf, 0*inf = NaN.
    case = make_case(np.array([[3.0]]), eps=0.25, momentum=0.5, beta=np.array([0.5]))
    sem = BASE.replace(running_var_update="unbiased")
    with pytest.raises(SingleValueError):
        reference(case, sem)
    with pytest.raises(SingleValueError):
        oracle(case, sem)
    allowed = _both(case, sem.replace(single_value="allowed")).steps[0]
    assert (allowed.y.tolist(), allowed.running_var.tolist()) == ([[0.5]], [0.5])
    nan = reference(case, sem.replace(single_value="nan")).steps[0]
    assert np.isnan(nan.running_var).all() and nan.y.tolist() == [[0.5]]
    assert np.isnan(oracle(case, sem.replace(single_value="nan")).steps[0].running_var).all()


def test_folded_affine_form_keeps_the_rounding_of_the_shift_beta_minus_mean_s() -> None:
    # float32, eval with running mean 2^24 and variance 1, eps 0, gamma 1, beta 0.5: s = 1.
    # x = 2^24 + 2: centered (x - mean) s + beta = 2 + 0.5 = 2.5 exactly in float32.
    # folded: shift = 0.5 - 2^24 = -16777215.5, halfway between the float32 neighbours
    # -16777215 and -16777216 (spacing 1 below 2^24), rounds to even: -16777216; then
    # x s + shift = 16777218 - 16777216 = 2.0.
    case = make_case(np.array([[2.0**24 + 2]]), modes="eval", dtype="float32", eps=0.0,
                     running_mean=np.array([2.0**24]), running_var=np.array([1.0]),
                     gamma=np.array([1.0]), beta=np.array([0.5]))
    centered = BASE.replace(compute_dtype="float32", affine_form="centered")
    folded = centered.replace(affine_form="folded")
    assert emulate(case, centered).steps[0].y.item() == 2.5
    assert emulate(case, folded).steps[0].y.item() == 2.0
    # the two forms agree in exact arithmetic: the exact semantics are one
    assert reference(case, folded).steps[0].y.item() == reference(case, centered).steps[0].y.item() == 2.5
