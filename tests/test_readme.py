"""The README's examples run as written.

That README's headline is the committed report's is not checked here: reports/ is generated (by
`make report`), so it is `make check-report` (tests/check_report.py), a step of its own."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_readme_reference_example_runs_and_shows_the_bessel_factor(capsys):
    exec(_blocks()[0], {})
    printed = capsys.readouterr().out
    assert "1.1428" in printed  # 8/7


def test_readme_adapter_example_conforms_to_pytorch_through_the_cli(tmp_path):
    code = _blocks()[1]
    assert len(code.strip().splitlines()) <= 35
    (tmp_path / "mybn.py").write_text(code)
    out = subprocess.run([sys.executable, "-m", "bnspec", "run", "--adapter-path", "mybn.py:ADAPTER",
                          "--examples", "2", "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr + (tmp_path / "out" / "report.md").read_text()


def _block(language: str, marker: str) -> str:
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), re.S) if marker in b]
    assert len(found) == 1, f"README has {len(found)} {language} blocks containing {marker!r}"
    return found[0]


def test_readme_profile_package_registers_a_profile_that_list_and_diff_use(tmp_path):
    from tests.test_open_profiles import pip_install

    package = tmp_path / "mybn-bnspec"
    package.mkdir()
    (package / "pyproject.toml").write_text(_block("toml", '"bnspec.profiles"'))
    (package / "mybn_bnspec.py").write_text(_block("python", "# mybn_bnspec.py"))
    site = pip_install(package, tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": str(site)}
    listed = subprocess.run([sys.executable, "-m", "bnspec", "list", "--profiles", "--json"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert listed.returncode == 0 and not listed.stderr.strip(), listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r.get("kind") == "profile" and r["name"] == "mybn"]
    assert [(r["distribution"], r["version"]) for r in rows] == [("mybn-bnspec", "1.0")]
    diff = subprocess.run([sys.executable, "-m", "bnspec", "diff", "pytorch", "mybn"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert diff.returncode == 0, diff.stderr
    assert "mybn/nn/batchnorm.py::BatchNorm.forward (var_sum / n)" in diff.stdout
    assert "eps: pass 1e-05 explicitly (the mybn default is 0.001)" in diff.stdout
