"""Accuracy as a finding: the error against the exact result where the tolerance model accepts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnspec.accuracy import ACCURACY_CASES, accuracy_error
from bnspec.adapter import Adapter
from bnspec.adapters.reference import _ALL
from bnspec.case import Case, Result
from bnspec.engine import RunOptions, run
from bnspec.profiles import get_semantics
from bnspec.reference import emulate, reference
from bnspec.reports import accuracy_markdown, markdown

PYTORCH = get_semantics("pytorch")


def test_the_exact_result_has_no_error_on_every_accuracy_case():
    for spec in ACCURACY_CASES.values():
        case = spec.build()
        assert accuracy_error(case, PYTORCH, reference(case, PYTORCH)) == 0.0, spec.name


def test_a_constant_training_channel_off_by_one_ulp_of_beta_is_about_one_roundoff_of_its_scale():
    case = ACCURACY_CASES["constant"].build()
    exact = reference(case, PYTORCH)
    y = exact.steps[0].y.copy()
    assert np.array_equal(y, np.broadcast_to(case.beta, y.shape))  # variance 0: y = beta exactly
    y[:, 3] = np.nextafter(np.float32(case.beta[3]), np.float32(np.inf))  # beta[3] = -0.2483
    err = accuracy_error(case, PYTORCH, Result([exact.steps[0].__class__(y=y)]))
    # one float32 ulp of beta (2^-26 at |beta| in [1/8, 1/4)) over u (2^-24) times |gamma| + |beta|
    assert math.isclose(err, 2.0**-26 / (2.0**-24 * (case.gamma[3] + abs(case.beta[3]))), rel_tol=1e-12)


def test_a_non_finite_output_where_the_exact_one_is_finite_is_an_infinite_error():
    case = ACCURACY_CASES["offset_eval"].build()
    exact = reference(case, PYTORCH)
    y = exact.steps[0].y.copy()
    y[0, 0] = np.nan
    assert accuracy_error(case, PYTORCH, Result([exact.steps[0].__class__(y=y)])) == math.inf


def test_the_folded_form_shows_on_the_constant_eval_channel_and_the_centered_one_does_not():
    case = ACCURACY_CASES["constant_eval"].build()
    folded, centered = PYTORCH, PYTORCH.replace(affine_form="centered")
    assert accuracy_error(case, centered, emulate(case, centered)) == 0.0
    assert accuracy_error(case, folded, emulate(case, folded)) > 1e3


@dataclass
class Emulated(Adapter):
    """Declares pytorch and computes it in its emulated float32 numerics: conforming, and less
    accurate than the exact reference."""

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        return emulate(case, get_semantics("pytorch"))


def test_a_run_measures_accuracy_per_adapter_and_the_report_ranks_them(tmp_path: Path):
    from bnspec.discovery import discover

    adapters = [EMULATED, discover(["reference"])["reference"]]
    summary = run(adapters, RunOptions(properties=["train_output"], examples=1), tmp_path / "out")
    by_name = {a["name"]: a for a in summary["adapters"]}
    assert set(by_name["emulated"]["accuracy"]) == set(ACCURACY_CASES)
    assert all(row["err_u"] == 0 for row in by_name["reference"]["accuracy"].values())
    assert float(by_name["emulated"]["accuracy"]["constant_eval"]["err_u"]) > 1e3  # pytorch folds
    table = accuracy_markdown(summary)
    rows = [line for line in table if line.startswith("| ") and not line.startswith("| adapter")]
    assert [r.split(" | ")[0] for r in rows] == ["| reference", "| emulated"]  # most accurate first
    assert "## Accuracy" in markdown(summary)
    json.dumps(summary, allow_nan=False)  # infinities are written as strings


# its worker imports it by this reference
EMULATED = Emulated(name="emulated", framework="bnspec", profile="pytorch", capabilities=_ALL,
                    ref="tests.test_accuracy:EMULATED")


def test_a_case_at_a_higher_rank_has_the_same_values_and_error():
    from bnspec.accuracy import at_rank

    case = ACCURACY_CASES["offset_eval"].build()
    high = at_rank(case, 4)
    assert high.steps[0].x.shape == (64, 8, 1, 1)
    result = emulate(high, PYTORCH)
    low = emulate(case, PYTORCH)
    assert accuracy_error(high, PYTORCH, result) == accuracy_error(case, PYTORCH, low)
