"""A run leaves nothing behind but its --out folder (and the user cache), and the arithmetic of
its deliberate edge cases (NaN, Inf) stays out of the user's terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bnspec.properties import generate

ROOT = Path(__file__).parents[1]


def test_a_run_that_shrinks_in_an_empty_directory_leaves_only_its_out_folder_and_prints_no_warning(tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    # The user's terminal: Python's default warning filters, Hypothesis's default home (./.hypothesis).
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "HYPOTHESIS_STORAGE_DIRECTORY")}
    proc = subprocess.run(
        [sys.executable, "-m", "bnspec", "run", "--adapters", "reference",
         "--adapter-path", f"{ROOT}/tests/fixtures/bad_adapters.py:BIASED_RUNNING_VAR",
         # Against the keras baseline the conforming reference's differences are measured on every
         # case, the non-finite special_values ones too: where a RuntimeWarning used to escape.
         "--baseline", "keras", "--properties", "estimator,special_values", "--examples", "2", "--out", "out"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]  # the wrong implementation does not conform
    assert sorted(p.name for p in cwd.iterdir()) == ["out"]
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]
    shrunk = [p.name for p in (cwd / "out" / "cases").glob("*-wrong_running_var_update.json")
              if "[shrunk to" in p.read_text()]
    assert shrunk, "no failure was shrunk: the run did not exercise Hypothesis"


def test_shrinking_gives_hypothesis_a_home_of_its_own_and_gives_the_users_back(tmp_path):
    from hypothesis import configuration

    from bnspec.shrink import shrink

    def home() -> Path:
        return configuration.storage_directory("examples", intent_to_write=False).home_directory

    mine = tmp_path / "my-hypothesis-home"
    configuration.set_hypothesis_home_dir(mine)
    try:
        during: list[Path] = []

        def still_fails(candidate):  # every reduction fails: Hypothesis shrinks to the smallest
            during.append(home())
            return True

        minimal = shrink(generate("estimator", 0, 0), still_fails)
        assert len(minimal.steps) == 1 and during
        assert mine not in during and not any(h.exists() for h in during)  # bnspec's own, removed after
        assert home() == mine and not mine.exists()
    finally:
        configuration.set_hypothesis_home_dir(None)
