"""The pytest plugin: a port project gates its CI on "my BatchNorm behaves like PyTorch's"."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from bnspec.case import make_case
from bnspec.repro import python_repro

ROOT = Path(__file__).parents[1]
BIASED = f"{ROOT}/tests/fixtures/bad_adapters.py:BIASED_RUNNING_VAR"
CLONE = f"{ROOT}/tests/fixtures/torch_clone.py:ADAPTER"
CLONE_KNOWN = f"{ROOT}/tests/fixtures/torch_clone_known.toml"


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "--rootdir", str(tmp_path), *args], capture_output=True, text=True, cwd=tmp_path,
                          timeout=600)


def _failures(stdout: str) -> dict[str, str]:
    """Each failing item's report (the text under its ``___ name ___`` header)."""
    body = re.split(r"^=+ .* =+$", stdout.split("= FAILURES =", 1)[1].split("\n", 1)[1], flags=re.M)[0]
    parts = re.split(r"^_+ (bnspec\[.+?\]) _+$", body, flags=re.M)
    return {name: text.strip("\n") for name, text in zip(parts[1::2], parts[2::2], strict=True)}


def test_plugin_is_inert_without_its_options(tmp_path):
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    out = _pytest(tmp_path)
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout


def test_a_conforming_adapter_passes_the_properties_and_the_drawn_cases(tmp_path):
    out = _pytest(tmp_path, "--bnspec-adapter", f"{ROOT}/adapters/reference.py:ADAPTER",
                  "--bnspec-examples", "1", "--bnspec-hypothesis", "25")
    assert out.returncode == 0, out.stdout[-3000:]
    # 21 properties (the reference runs the replicas_* ones too) + the Hypothesis item; frozen: n/a
    assert "22 passed, 1 skipped" in out.stdout


def test_a_wrong_adapter_fails_with_the_finding_its_knob_and_a_minimal_case_in_a_few_lines(tmp_path):
    # 40 draws: most drawn cases of these capabilities hold a frozen step, which the pytorch
    # profile cannot express (skipped); 25 were enough only by the luck of an earlier draw order.
    out = _pytest(tmp_path, "--bnspec-adapter", BIASED, "--bnspec-examples", "1", "--bnspec-hypothesis", "40",
                  "-k", "estimator or hypothesis")
    assert out.returncode == 1
    assert "2 failed" in out.stdout, out.stdout[-3000:]
    failures = _failures(out.stdout)
    assert len(failures) == 2, list(failures)
    for name, text in failures.items():
        lines = text.splitlines()
        assert len(lines) <= 40, f"{name}: {len(lines)} lines\n{text}"
        assert lines[0].startswith("bnspec: wrong_running_var_update does not conform to pytorch"), text
        assert "finding: step 0 running_var: MISMATCH" in text, text
        assert "explained by: running_var_update: 'biased', observed; 'unbiased', pytorch" in text, text
        assert "minimal case: 1 step(s) of" in text, text  # shrunk: one step is all it takes
        assert "----- repro.py -----" in text, text  # the adapter has no snippet: bnspec's repro
        for internal in ("Traceback", "_pytest", "pluggy", "hypothesis/", "site-packages", "# no snippet"):
            assert internal not in text, f"{name}: {internal!r} in\n{text}"
    assert "shrunk by Hypothesis" in failures[f"bnspec[{BIASED}][hypothesis]"]


def test_the_printed_repro_runs_as_printed_and_reproduces_the_mismatch(tmp_path):
    out = _pytest(tmp_path, "--bnspec-adapter", BIASED, "--bnspec-examples", "1", "-k", "estimator")
    assert out.returncode == 1, out.stdout[-3000:]
    text = next(iter(_failures(out.stdout).values()))
    repro = text.split("----- repro.py -----\n", 1)[1].split("\n----- end repro.py -----", 1)[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "repro.py").write_text(repro + "\n")
    run = subprocess.run([sys.executable, "repro.py"], capture_output=True, text=True, cwd=elsewhere, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    finding = re.search(r"finding: (step \d+ \w+): MISMATCH", text)
    assert finding is not None
    assert f"does not conform to pytorch: {finding.group(1)}: MISMATCH" in run.stdout, run.stdout + run.stderr


def test_python_repro_rebuilds_the_case_exactly():
    """NaN, +-inf, -0.0, subnormals, frozen steps, gradients and every setting survive the
    printed program (float64 reprs of values the case's dtypes hold)."""
    x0 = np.array([[1.5, -0.0], [np.nan, 2.0**-1070], [np.inf, -np.inf]])
    x1 = np.array([[3.0, 4.0], [5.0, -6.0], [7.0, 8.0]])
    case = make_case([x0, x1], modes=["train", "eval"], frozen=[False, True], grad_outputs=[None, x1 / 8],
                     gamma=np.array([0.5, -2.0]), beta=None if False else np.array([1.0, 0.0]),
                     running_mean=np.array([0.25, -1.0]), running_var=np.array([0.0, 4.0]), eps=1e-3,
                     momentum=None, dtype="float64", track_running_stats=True)
    source = python_repro(case, "no.such.module:ADAPTER", "pytorch")
    built: dict[str, object] = {}
    exec(source.split("adapter = load_adapter_ref", 1)[0], built)  # everything up to running it
    again = built["case"]
    assert again.to_dict() == {**case.to_dict(), "label": ""}
    assert math.copysign(1.0, again.steps[0].x[0, 1]) == -1.0


def test_known_divergences_from_a_registry_are_known_not_failures(tmp_path):
    # The clone of torch.nn.functional.batch_norm keeps torch's rejection of eps=0 in training
    # (eps_small[1] and [4]: eps cycles 1e-7, 0, 1e-6; and drawn cases), which the pytorch profile
    # defines a result for.
    args = ["--bnspec-adapter", CLONE, "--bnspec-profile", "pytorch", "--bnspec-examples", "5",
            "--bnspec-hypothesis", "100", "-k", "eps_small or hypothesis", "-rx"]
    bare = _pytest(tmp_path, *args)
    assert bare.returncode == 1, bare.stdout[-3000:]
    assert "raised ValueError: batch_norm eps must be positive during training" in bare.stdout
    declared = _pytest(tmp_path, *args, "--bnspec-known", CLONE_KNOWN)
    assert declared.returncode == 0, declared.stdout[-3000:]
    assert re.search(r"4 passed, \d+ deselected, 2 xfailed", declared.stdout), declared.stdout[-3000:]
    assert "known divergence torch-clone-eps-zero-rejected" in declared.stdout  # the xfail's reason
    assert "bnspec: known divergences seen: torch-clone-eps-zero-rejected" in declared.stdout


def test_an_invalid_registry_is_one_line(tmp_path):
    bad = tmp_path / "known.toml"
    bad.write_text("[[divergence]]\nid = 'x'\n")
    out = _pytest(tmp_path, "--bnspec-adapter", CLONE, "--bnspec-examples", "1", "-k", "estimator",
                  "--bnspec-known", str(bad))
    assert out.returncode == 1
    text = next(iter(_failures(out.stdout).values()))
    assert text.startswith(f"bnspec: {CLONE}: ") and "needs a non-empty string" in text and len(text.splitlines()) == 1
