"""Robustness of a run (issue 6) and the known-divergence registry (issue 4): fault injection
through real runs, memory limits, resume after SIGKILL, untrusted text, minimal cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bnspec.case import make_case
from bnspec.discovery import load_adapter_ref
from bnspec.errors import AdapterFailure
from bnspec.worker import Worker

ROOT = Path(__file__).parents[1]
FIX = "tests.fixtures.bad_adapters"


def bnspec(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bnspec", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, **(env or {})})


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def cells(out: Path, adapter: str) -> dict:
    return next(a for a in summary_of(out)["adapters"] if a["name"] == adapter)["cells"]


def test_a_worker_leaking_past_the_memory_limit_is_stopped_and_the_next_case_runs():
    w = Worker(load_adapter_ref(f"{FIX}:LEAK"), memory_limit_mb=600)
    case = make_case(np.arange(6.0).reshape(3, 2))
    try:
        t0 = time.monotonic()
        with pytest.raises(AdapterFailure) as info:
            w.run(case, timeout=60)
        assert info.value.kind == "memory", info.value
        assert time.monotonic() - t0 < 30
        assert 600 < w.peak_rss_mb < 2000
        assert w.restarts == 1
    finally:
        w.close()


def test_memory_held_by_a_workers_helper_process_counts_and_the_helper_dies_with_it(tmp_path, monkeypatch):
    pid_file = tmp_path / "helper.pid"
    monkeypatch.setenv("BNSPEC_TEST_HELPER_PID", str(pid_file))
    w = Worker(load_adapter_ref(f"{FIX}:LEAK_IN_HELPER"), memory_limit_mb=600)
    case = make_case(np.arange(6.0).reshape(3, 2))
    try:
        with pytest.raises(AdapterFailure) as info:
            w.run(case, timeout=60)
        assert info.value.kind == "memory", info.value
        assert 600 < w.peak_rss_mb < 2000
        helper = int(pid_file.read_text())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{helper}").exists() \
                and "Z" not in Path(f"/proc/{helper}/stat").read_text().rsplit(")", 1)[1].split()[0]:
            time.sleep(0.05)
        alive = Path(f"/proc/{helper}").exists() and \
            "Z" not in Path(f"/proc/{helper}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert not alive, "the helper outlived its worker"
    finally:
        w.close()


def test_each_fault_costs_only_its_own_cells_and_is_reported_as_what_it_is(tmp_path):
    out = tmp_path / "o"
    proc = bnspec("run", "--adapters", "reference", "--properties", "train_output,eval_output",
                  "--examples", "1", "--timeout", "5", "--memory-limit", "600", "--no-shrink",
                  *[a for name in ("SEGFAULT", "HANG", "LEAK", "WRONG_SHAPE", "WRONG_DTYPE", "NAN_OUTPUT",
                                   "IMPORT_ERROR")
                    for a in ("--adapter-path", f"{FIX}:{name}")],
                  "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    s = summary_of(out)
    by = {a["name"]: a for a in s["adapters"]}
    assert by["reference"]["conforms"]
    assert all(c["status"] == "pass" for c in by["reference"]["cells"].values())

    def detail(name: str) -> str:
        return by[name]["cells"]["train_output"]["detail"]

    assert by["hang"]["cells"]["train_output"]["status"] == "failure" and detail("hang").startswith("timeout")
    assert detail("leak").startswith("memory")
    assert detail("wrong_shape").startswith("bad_output") and "shape" in detail("wrong_shape")
    assert detail("wrong_dtype").startswith("bad_output") and "int64" in detail("wrong_dtype")
    assert detail("import_error").startswith("import")
    # NaN where the reference has numbers is a wrong result (a non-conformance), not a crash.
    assert by["nan_output"]["cells"]["train_output"]["status"] == "fail"
    assert "non-finite" in detail("nan_output")
    # The segfaulting adapter crashes on rank 4-5 input only; its other cells still ran.
    seg = by["segfault"]["cells"]
    assert {c["status"] for c in seg.values()} <= {"pass", "failure"}
    assert any(c["status"] == "failure" and c["detail"].startswith("crash") for c in seg.values())
    junit = (out / "junit.xml").read_text()
    assert junit.count("<testcase") == len(by) * 2


def test_untrusted_adapter_names_and_framework_messages_are_escaped_in_the_html(tmp_path):
    out = tmp_path / "o"
    proc = bnspec("run", "--adapter-path", f"{FIX}:SCRIPT_NAME", "--properties", "train_output",
                  "--examples", "1", "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    text = (out / "report.html").read_text()
    assert "<script>alert(" not in text and "<b>bold</b>" not in text
    assert "&lt;script&gt;alert(&#39;name&#39;)&lt;/script&gt;" in text
    assert "&lt;script&gt;alert(&#39;framework message&#39;)" in text
    # The stored case's file name is made safe; its repro id finds it.
    nc = summary_of(out)["adapters"][0]["non_conformances"][0]
    assert "/" not in nc["repro_id"] and (out / "cases" / f"{nc['repro_id']}.json").exists()


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_a_run_killed_with_sigkill_resumes_without_redoing_work_and_matches_a_clean_run(tmp_path):
    # --no-cache: the killed run computes its cases (read from the clean run's cache, it would be
    # over before the kill)
    args = ["--adapters", "reference", "--adapter-path", f"{FIX}:BIASED_RUNNING_VAR", "--examples", "2", "--no-cache"]
    clean = tmp_path / "clean"
    assert bnspec("run", *args, "--out", str(clean)).returncode == 1

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bnspec", "run", *args, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        path = killed / "results.jsonl"
        if path.exists() and path.read_text().count("\n") >= 10:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its workers, mid-run
    proc.wait()
    before = _records(killed)
    assert 10 <= len(before) < len(_records(clean)), "the kill came too late to test a resume"
    assert not (killed / "summary.json").exists()

    resumed = bnspec("run", "--resume", str(killed))
    assert resumed.returncode == 1, resumed.stderr
    after = _records(killed)
    keys = [(r["adapter"], r["property"], r["example"]) for r in after]
    assert len(keys) == len(set(keys)) == len(_records(clean)), "a case was redone or lost"
    assert after[: len(before)] == before  # finished work was kept, not redone
    s_clean, s_resumed = summary_of(clean), summary_of(killed)
    s_clean.pop("timing")
    s_resumed.pop("timing")
    assert s_resumed == s_clean


def test_resume_of_a_directory_without_a_run_exits_2(tmp_path):
    proc = bnspec("run", "--resume", str(tmp_path))
    assert proc.returncode == 2 and "no bnspec run to resume" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_resume_refuses_options_that_would_change_the_run(tmp_path):
    proc = bnspec("run", "--resume", str(tmp_path), "--examples", "5")
    assert proc.returncode == 2 and "drop --examples" in proc.stderr


def test_a_failure_is_shrunk_by_hypothesis_to_a_minimal_case_that_still_fails_the_same_way(tmp_path):
    out = tmp_path / "o"
    proc = bnspec("run", "--adapter-path", f"{FIX}:BIASED_RUNNING_VAR", "--properties", "running_stats",
                  "--examples", "1", "--out", str(out))
    assert proc.returncode == 1
    nc = summary_of(out)["adapters"][0]["non_conformances"][0]
    stored = json.loads((out / "cases" / f"{nc['repro_id']}.json").read_text())
    from bnspec.case import Case

    case = Case.from_dict(stored["case"])
    assert stored["original_case_id"] == nc["case_id"] != case.case_id()
    # 200 steps of (4, 2) shrink to one training step of two samples in one channel.
    assert [(s.mode, s.x.shape) for s in case.steps] == [("train", (2, 1))]
    rep = bnspec("repro", nc["repro_id"], "--dir", str(out))
    assert rep.returncode == 1 and "running_var_update: 'biased', observed" in rep.stdout


REGISTRY = """
[[divergence]]
id = "biased-on-purpose"
adapter = "wrong_running_var_update"
properties = ["estimator"]
knob = "running_var_update"
reason = "a fixture that feeds the biased variance on purpose"
link = "tests/fixtures/bad_adapters.py"

[[divergence]]
id = "gone"
adapter = "reference"
properties = ["estimator"]
match = "never happens"
reason = "an entry that no longer matches anything"
link = "nowhere"

[[divergence]]
id = "any-property"
adapter = "reference"
match = "never happens"
reason = "names no property: only a run of every property can tell it vanished"
link = "nowhere"
"""


def test_a_known_divergence_passes_a_new_one_fails_and_a_vanished_one_is_reported(tmp_path):
    registry = tmp_path / "known.toml"
    registry.write_text(REGISTRY)
    base = ["--adapters", "reference", "--adapter-path", f"{FIX}:BIASED_RUNNING_VAR", "--no-shrink",
            "--examples", "1", "--known", str(registry)]
    out = tmp_path / "known"
    proc = bnspec("run", *base, "--properties", "estimator", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    s = summary_of(out)
    wrong = next(a for a in s["adapters"] if a["name"] == "wrong_running_var_update")
    assert wrong["conforms"] and wrong["known_divergences"] == ["biased-on-purpose"]
    assert wrong["cells"]["estimator"]["status"] == "known"
    assert [v["id"] for v in s["known_vanished"]] == ["gone"]
    assert "gone" in proc.stderr and "did not show" in (out / "report.md").read_text()

    out2 = tmp_path / "new"
    proc = bnspec("run", *base, "--properties", "estimator,running_stats", "--out", str(out2))
    assert proc.returncode == 1  # running_stats shows the same knob, but no entry covers it there
    cells2 = cells(out2, "wrong_running_var_update")
    assert cells2["estimator"]["status"] == "known" and cells2["running_stats"]["status"] == "fail"


@pytest.mark.parametrize("text, needle", [
    ("[[divergence]]\nid = 'x'\n", "needs a non-empty string 'reason'"),
    ("[[divergence\n", "not valid TOML"),
    ("[[divergence]]\nid='x'\nadapter='a'\nreason='r'\nlink='l'\nknob='momentm'\n", "unknown knob 'momentm'"),
    ("[[divergence]]\nid='x'\nadapter='a'\nreason='r'\nlink='l'\n", "needs an 'explanation' (or 'knob') or a 'match'"),
    ("[[divergence]]\nid='x'\nadapter='a'\nreason='r'\nlink='l'\nmatch='x'\nwhen='now'\n", "unknown key(s) ['when']"),
])
def test_a_bad_registry_exits_2_with_one_line(tmp_path, text, needle):
    registry = tmp_path / "known.toml"
    registry.write_text(text)
    proc = bnspec("run", "--adapters", "reference", "--known", str(registry), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_the_builtin_registry_is_valid_and_cites_every_entry():
    from bnspec.discovery import adapter_names
    from bnspec.known import load

    entries = load()
    assert entries
    names = adapter_names()
    for e in entries:
        assert e.reason and e.link
        assert any(e.covers(n) for n in names), f"{e.id} covers no registered adapter"


def test_a_known_divergence_is_identified_by_its_whole_explanation_not_by_text():
    from bnspec.known import KnownDivergence
    from bnspec.records import Explanation, Status

    entry = KnownDivergence(id="x", adapter=("conv*",), properties=(), reason="r", link="l",
                            explanations=(frozenset({"running_update=none", "train_stats"}),))
    pair = Explanation.of([{"running_update": ("none", "ema"), "train_stats": ("running", "batch")}])
    assert entry.matches("converter", "train_output", Status.MISMATCH, "", pair)
    assert not entry.matches("converter", "train_output", Status.FAILURE, "", pair)
    assert not entry.matches("other", "train_output", Status.MISMATCH, "", pair)
    # one more cause than the entry names is a new divergence, not this one
    triple = Explanation.of([{"running_update": ("none", "ema"), "train_stats": ("running", "batch"),
                              "eps": (9.99999975e-06, 1e-05)}])
    assert not entry.matches("converter", "train_output", Status.MISMATCH, "", triple)
    # nor is a part of it, or the same knobs with another value
    assert not entry.matches("converter", "train_output", Status.MISMATCH, "",
                             Explanation.of([{"running_update": ("none", "ema")}]))
    one_knob = KnownDivergence(id="y", adapter=("conv*",), properties=(), reason="r", link="l",
                               explanations=(frozenset({"running_update"}),))
    assert not one_knob.matches("converter", "train_output", Status.MISMATCH, "", pair)
    # the knob's name in the detail, or in a value, is not a flip of it
    assert not entry.matches("converter", "train_output", Status.MISMATCH, "running_update: 'none'", Explanation())
    assert not entry.matches("converter", "train_output", Status.MISMATCH, "",
                             Explanation.of([{"train_stats": ("running_update", "batch")}]))


def test_a_wrong_value_is_never_known_by_its_message_alone():
    from bnspec.known import KnownDivergence
    from bnspec.records import Explanation, Status

    entry = KnownDivergence(id="x", adapter=("*",), properties=(), reason="r", link="l", match="MISMATCH|raised")
    assert not entry.matches("a", "p", Status.MISMATCH, "running_var: MISMATCH at step 3", Explanation())
    assert entry.matches("a", "p", Status.MISMATCH, "raised ValueError: eps; the profile defines a result",
                         Explanation())
    assert entry.matches("a", "p", Status.FAILURE, "crash: MISMATCH", Explanation()) is False  # kind fail only


def test_a_float32_reading_term_matches_the_rounding_and_not_another_value():
    from bnspec.known import KnownDivergence
    from bnspec.records import Explanation, Status

    entry = KnownDivergence(id="x", adapter=("*",), properties=(), reason="r", link="l",
                            explanations=(frozenset({"momentum=float32"}),))
    rounded = Explanation.of([{"momentum": (1.0 - 0.9900000095367432, 0.01)}])  # 0.99 held as float32
    substituted = Explanation.of([{"momentum": (0.1, 0.01)}])  # a default in its place: another divergence
    assert entry.matches("a", "p", Status.MISMATCH, "", rounded)
    assert not entry.matches("a", "p", Status.MISMATCH, "", substituted)
