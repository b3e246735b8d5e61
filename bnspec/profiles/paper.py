"""Ioffe & Szegedy (2015), "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv:1502.03167."""

from __future__ import annotations

from bnspec.profiles import Profile
from bnspec.semantics import Semantics

_P = "Ioffe & Szegedy 2015 (arXiv:1502.03167)"

IOFFE2015 = Profile(
    name="ioffe2015",
    framework="paper",
    title="The paper: Algorithm 1 (training) and Algorithm 2 (inference)",
    semantics=Semantics(
        eps=1e-5,
        eps_placement="inside_sqrt",
        eps_floor=None,
        momentum=None,
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
        compute_dtype="input",
        normalize_dtype="compute",
        output_dtype="input",
        state_dtype="input",
        single_value="error",
        affine_form="centered",
    ),
    cite={
        "affine_form": f"{_P}, Algorithm 1 (x_hat = (x - mu) / sqrt(sigma^2 + eps); y = gamma x_hat + beta): "
        "centered",
        "eps": f"{_P}, Algorithm 1: 'epsilon is a constant added ... for numerical stability' "
        "(no value given; 1e-5 as in the reference implementations)",
        "eps_placement": f"{_P}, Algorithm 1: x_hat = (x - mu_B) / sqrt(sigma_B^2 + epsilon)",
        "eps_floor": f"{_P}: no floor",
        "momentum": f"{_P}, Algorithm 2 step 10: E[x] = E_B[mu_B], an average over all training "
        "mini-batches (cumulative)",
        "running_update": "every training step blends the batch statistics into the running "
                          "ones: the update cited under momentum_weights",
        "momentum_weights": f"{_P}: cumulative averages have no momentum convention; batch weight "
        "1/t",
        "normalize_var": f"{_P}, Algorithm 1: sigma_B^2 = 1/m sum (x_i - mu_B)^2",
        "running_var_update": f"{_P}, Algorithm 2 step 10: Var[x] = m/(m-1) E_B[sigma_B^2]",
        "ema_debias": f"{_P}: plain averages",
        "initial_running": f"{_P}: the averages start empty (the first batch replaces)",
        "first_update": f"{_P}: cumulative average: the first batch is the average",
        "train_stats": f"{_P}, Algorithm 1: mini-batch statistics",
        "eval_stats": f"{_P}, Algorithm 2 steps 10-11: population statistics",
        "frozen_train_stats": f"{_P}: no notion of a frozen layer",
        "variance_algorithm": f"{_P}, Algorithm 1 (mean of squared deviations)",
        "compute_dtype": f"{_P}: exact arithmetic",
        "normalize_dtype": f"{_P}: exact arithmetic",
        "output_dtype": f"{_P}: exact arithmetic",
        "state_dtype": f"{_P}: exact arithmetic",
        "single_value": f"{_P}: m/(m-1) is undefined for m = 1",
    },
    confirmed="the paper is not run; tests pin its knob values",
)

PROFILES = [IOFFE2015]
