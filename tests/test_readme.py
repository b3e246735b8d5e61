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


def test_readme_headline_is_the_committed_reports_summary():
    import json

    from bnspec.reports import README_END, README_START, headline

    summary = json.loads((ROOT / "reports" / "summary.json").read_text())
    text = (ROOT / "README.md").read_text()
    block = text.split(README_START, 1)[1].split(README_END, 1)[0]
    assert block.strip() == headline(summary).strip(), "run `make report` (it rewrites README's headline)"
    # and the report covers every adapter this checkout registers and installs
    from bnspec.discovery import discover

    installed = {name for name, a in discover().items() if a.installed()}
    assert installed <= {a["name"] for a in summary["adapters"]}, "reports/ is older than the adapters"


def test_committed_report_has_all_five_files_and_the_minimal_cases_it_names():
    import json

    out = ROOT / "reports"
    for name in ("results.jsonl", "summary.json", "report.md", "report.html", "junit.xml"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    for a in summary["adapters"]:
        for nc in a["non_conformances"]:
            assert (out / "cases" / f"{nc['repro_id']}.json").exists(), nc["repro_id"]
