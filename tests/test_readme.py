"""The README's examples run as written."""

from __future__ import annotations

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
