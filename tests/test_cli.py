"""The command line: the contract scripts and CI depend on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bnspec.records import SCHEMA_VERSION, Explanation

BNSPEC = [sys.executable, "-m", "bnspec"]


def bnspec(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BNSPEC, *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_list_imports_no_framework_and_shows_versions():
    code = ("import sys; from bnspec.cli import cli; "
            "cli.main(['list', '--json'], standalone_mode=False); "
            "assert not {'torch','tensorflow','jax','keras','onnxruntime'} & set(sys.modules), 'framework imported'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {"reference"} <= {r["name"] for r in rows}
    assert all("version" in r and "installed" in r for r in rows)


def test_import_bnspec_imports_no_framework():
    code = "import bnspec, sys; assert not {'torch','tensorflow','jax'} & set(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize(
    "args, needle",
    [
        (["run", "--adapters", "trch"], "unknown adapter 'trch'; available:"),
        (["run", "--adapters", "reference", "--baseline", "pytorhc"], "unknown profile 'pytorhc'"),
        (["run", "--adapters", "reference", "--examples", "-1"], "--examples must be at least 1"),
        (["run", "--adapter-path", "no_such_module:X"], "cannot import 'no_such_module'"),
        (["run", "--adapter-path", "nocolon"], "is not of the form module:attr"),
        (["run", "--adapters", "reference", "--properties", "nope"], "unknown property 'nope'"),
        (["diff", "pytorch", "kears"], "unknown profile or adapter 'kears'"),
        (["report", "merge", "missing.json", "--out", "x"], "does not exist"),
        (["repro", "deadbeef", "--dir", "nowhere"], "no stored case 'deadbeef'"),
        (["run", "--bogus-flag"], "No such option"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, needle, tmp_path):
    out = bnspec(*args, cwd=tmp_path)
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], out.stderr


def test_a_corrupt_summary_to_merge_exits_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = bnspec("report", "merge", str(bad), "--out", str(tmp_path / "m"))
    assert out.returncode == 2 and "not valid JSON" in out.stderr and "Traceback" not in out.stderr


def test_a_non_writable_out_exits_2(tmp_path):
    target = tmp_path / "file"
    target.write_text("")
    out = bnspec("run", "--adapters", "reference", "--out", str(target / "sub"))
    assert out.returncode == 2 and "not writable" in out.stderr


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    proc = bnspec("run", "--adapters", "reference", "--examples", "1", "--out", str(out))
    return proc, out


def test_run_on_a_conforming_adapter_exits_0_and_writes_five_files(reference_run):
    proc, out = reference_run
    assert proc.returncode == 0, proc.stderr
    for name in ("results.jsonl", "summary.json", "report.md", "report.html", "junit.xml"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["schema_version"] == SCHEMA_VERSION
    entry = summary["adapters"][0]
    for key in ("name", "framework", "framework_version", "declared_profile", "conforms",
                "non_conformances", "divergences"):
        assert key in entry


def test_summary_matches_its_json_schema(reference_run):
    jsonschema = pytest.importorskip("jsonschema")
    _, out = reference_run
    schema = json.loads((Path(__file__).parents[1] / "bnspec/schema/summary.schema.json").read_text())
    jsonschema.validate(json.loads((out / "summary.json").read_text()), schema)


def test_a_wrong_implementation_exits_1_and_its_case_replays(tmp_path):
    out = tmp_path / "o"
    proc = bnspec("run", "--adapter-path", "tests.fixtures.bad_adapters:BIASED_RUNNING_VAR",
                  "--examples", "1", "--properties", "estimator", "--out", str(out),
                  cwd=Path(__file__).parents[1])
    assert proc.returncode == 1, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    nc = summary["adapters"][0]["non_conformances"][0]
    assert any(flip["knob"] == "running_var_update" for alt in nc["explained_by"] for flip in alt)
    assert Explanation.from_json(nc["explained_by"]).flips("running_var_update")
    assert "running_var_update" in (out / "report.md").read_text()
    rep = bnspec("repro", nc["repro_id"], "--dir", str(out), cwd=Path(__file__).parents[1])
    assert rep.returncode == 1 and "running_var_update" in rep.stdout


def test_same_seed_gives_byte_identical_summary_apart_from_timing(tmp_path):
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        # --no-cache: the second run recomputes (a cached one would give the first's records back)
        assert bnspec("run", "--adapters", "reference", "--examples", "1", "--no-cache",
                      "--out", str(out)).returncode == 0
        s = json.loads((out / "summary.json").read_text())
        s.pop("timing")
        outs.append(json.dumps(s, sort_keys=True))
    assert outs[0] == outs[1]


def test_merge_combines_shards_and_reports_conflicts(reference_run, tmp_path):
    _, out = reference_run
    s = json.loads((out / "summary.json").read_text())
    other = json.loads(json.dumps(s))
    other["adapters"][0]["cells"]["train_output"]["status"] = "fail"
    b = tmp_path / "b.json"
    b.write_text(json.dumps(other))
    proc = bnspec("report", "merge", str(out / "summary.json"), str(b), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    assert "conflict" in proc.stderr
    merged = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert merged["conflicts"]


ROOT = Path(__file__).parents[1]


def test_merge_reads_a_version_1_summary_and_writes_the_current_version(tmp_path):
    """A version 1 summary (six adapters of the report committed before schema 2, explanations as
    rendered strings) merges into the current version."""
    from bnspec.reports import cell_text

    old = ROOT / "tests" / "fixtures" / "summary_v1.json"
    v1 = json.loads(old.read_text())
    assert v1["schema_version"] == 1
    proc = bnspec("report", "merge", str(old), "--out", str(tmp_path / "m"))
    assert proc.returncode == 0, proc.stderr
    merged = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert merged["schema_version"] == SCHEMA_VERSION
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(merged, json.loads((ROOT / "bnspec/schema/summary.schema.json").read_text()))
    explained = 0
    for a_old, a_new in zip(v1["adapters"], merged["adapters"], strict=True):
        for prop, cell in a_old["cells"].items():
            # the knobs version 1 rendered ("knob: 'a', observed; 'b', declared + ..."), as flips now
            knobs = sorted({part.split(":")[0].strip() for e in cell["explained_by"] for part in e.split(" + ")})
            new = a_new["cells"][prop]
            assert list(Explanation.from_json(new["explained_by"]).knobs) == knobs, (a_old["name"], prop)
            if cell["status"] in ("fail", "known"):
                mark = "✗ " if cell["status"] == "fail" else "◇ known: "
                assert cell_text(new) == mark + (", ".join(knobs) or "unexplained")
            explained += bool(knobs)
        for nc_old, nc_new in zip(a_old["non_conformances"], a_new["non_conformances"], strict=True):
            assert len(nc_new["explained_by"]) == len(nc_old["explained_by"])
    assert explained, "the committed summary explains nothing: the test reads nothing"
    # a version 1 summary and itself upgraded are the same shard: no conflict
    proc = bnspec("report", "merge", str(old), str(tmp_path / "m" / "summary.json"), "--out", str(tmp_path / "m2"))
    assert proc.returncode == 0 and "conflict" not in proc.stderr, proc.stderr


def test_merge_refuses_an_unknown_schema_version(tmp_path):
    bad = tmp_path / "future.json"
    bad.write_text(json.dumps({"schema_version": 99, "adapters": []}))
    proc = bnspec("report", "merge", str(bad), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "schema_version 1 or 2 expected" in proc.stderr, proc.stderr


def test_html_profile_table_shows_each_knob_values_citation():
    from html.parser import HTMLParser

    from bnspec.profiles import PROFILES
    from bnspec.reports import html

    summary = {"seed": 0, "examples": 1, "baseline": "pytorch", "properties": ["train_output"], "adapters": [
        {"name": "keras_tf", "framework_version": "3", "declared_profile": "keras", "cells": {},
         "non_conformances": [], "divergences": {}}]}

    class Knobs(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.rows: list[list[str]] = []
            self.depth = 0
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.depth = 1 if ("id", "knobs") in attrs else 0
            elif self.depth and tag == "tr":
                self.rows.append([])
            elif self.depth and tag in ("td", "th"):
                self.cell = []

        def handle_endtag(self, tag):
            if tag == "table":
                self.depth = 0
            elif self.depth and tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(" ".join("".join(self.cell).split()))
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Knobs()
    parser.feed(html(summary))
    header, *rows = parser.rows
    assert header == ["knob", "keras", "pytorch"]
    by_knob = {r[0]: r[1:] for r in rows}
    for knob in ("running_var_update", "momentum_weights", "eps"):
        for profile, text in zip(("keras", "pytorch"), by_knob[knob], strict=True):
            p = PROFILES[profile]
            assert text.startswith(repr(getattr(p.semantics, knob))), (knob, profile, text)
            assert " ".join(p.cite[knob].split()) in text, (knob, profile, text)


def test_html_report_escapes_untrusted_text(tmp_path):
    from bnspec.reports import html

    summary = {"seed": 0, "examples": 1, "baseline": "pytorch", "properties": ["train_output"],
               "adapters": [{"name": "<script>alert(1)</script>", "framework_version": "1",
                             "declared_profile": "pytorch", "cells": {"train_output": {
                                 "status": "fail", "detail": "<script>x</script>", "explained_by": [],
                                 "baseline_knobs": [], "max_err_u": 1.0}},
                             "non_conformances": [{"property": "train_output", "kind": "fail",
                                                   "detail": "<script>boom</script>", "explained_by": [],
                                                   "repro_id": "x"}]}]}
    text = html(summary)
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_diff_translates_momentum_and_measures_the_estimator_difference():
    out = bnspec("diff", "pytorch", "keras")
    assert out.returncode == 0, out.stderr
    assert "momentum: pytorch 0.1 (batch-weighted) -> keras 0.9 (running-weighted)" in out.stdout
    assert "running_var_update: 'unbiased' -> 'biased'" in out.stdout
    assert "running_var -> moving_variance" in out.stdout


def test_help_works_everywhere():
    for args in ([], ["run"], ["list"], ["diff"], ["report", "merge"], ["repro"], ["fingerprint"]):
        out = bnspec(*args, "--help")
        assert out.returncode == 0 and "Usage" in out.stdout, args


def _run_in_terminal(tmp_path, env_extra):
    """bnspec run under a pseudo-terminal: what a person at a terminal sees."""
    import pty
    import re

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update(env_extra, TERM="xterm-256color", COLUMNS="100")
    args = [*BNSPEC, "run", "--adapters", "reference", "--properties", "train_output,eval_output",
            "--examples", "1", "--out", str(tmp_path / "o")]
    chunks: list[bytes] = []

    def read(fd):
        data = os.read(fd, 4096)
        chunks.append(data)
        return data

    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        status = pty.spawn(args, read)
    finally:
        os.environ.clear()
        os.environ.update(old)
    text = b"".join(chunks).decode(errors="replace")
    colours = re.findall(r"\x1b\[[0-9;]*(?:3[0-7]|9[0-7]|38;[0-9;]+)m", text)
    return os.waitstatus_to_exitcode(status), text, colours


def test_progress_bars_on_a_terminal_and_no_colour_under_no_color(tmp_path):
    code, text, colours = _run_in_terminal(tmp_path / "a", {})
    assert code == 0 and "reference" in text and "2/2" in text, text[-500:]
    assert colours, "rich draws coloured bars on a terminal"
    code, text, colours = _run_in_terminal(tmp_path / "b", {"NO_COLOR": "1"})
    assert code == 0 and "2/2" in text
    assert not colours, f"colour codes under NO_COLOR: {colours[:3]}"
