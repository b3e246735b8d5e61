"""The result cache (issue 14): a second run with nothing changed computes nothing and starts no
worker, and gives what the first gave; anything that can change a result misses; a corrupt entry is
recomputed; ``--no-cache`` neither reads nor writes; a run writes only under --out and the cache."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bnspec import attribution, cache, engine, shrink
from bnspec.discovery import load_adapter_ref
from bnspec.engine import RunOptions, load_records
from bnspec.known import load as load_known
from bnspec.records import Record, Status
from bnspec.worker import Worker

ROOT = Path(__file__).parents[1]
REFERENCE = "bnspec.adapters.reference:ADAPTER"
WRONG = "tests.fixtures.bad_adapters:BIASED_RUNNING_VAR"  # fails train_output and eps_placement
PROPERTIES = ["train_output", "eps_placement", "frozen_layer"]  # a pass, a shrunk failure, n/a: seconds


@pytest.fixture(autouse=True)
def _source_as_the_test_began(monkeypatch: pytest.MonkeyPatch) -> None:
    """bnspec's source hash, read once per test: the checkout may be edited while the suite
    runs, and a test's two runs must see one bnspec (an edit between them rightly misses)."""
    real = cache.source_hash
    once = real()
    monkeypatch.setattr(cache, "source_hash", lambda roots=None: once if roots is None else real(roots))


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("BNSPEC_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The adapters whose worker a run started, one entry per start."""
    started: list[str] = []
    real = Worker.start

    def counting(self: Worker) -> None:
        if self.proc is None or self.proc.poll() is not None:
            started.append(self.adapter.name)
        real(self)

    monkeypatch.setattr(Worker, "start", counting)
    return started


def _run(out: Path, refs: tuple[str, ...] = (REFERENCE, WRONG), **options: Any) -> dict[str, Any]:
    options = {"properties": PROPERTIES, "examples": 2, **options}
    adapters = [load_adapter_ref(r) if isinstance(r, str) else r for r in refs]
    return engine.run(adapters, RunOptions(**options), out)


def _records(out: Path) -> list[Record]:
    return load_records(out)


def _without_mark(recs: list[Record]) -> list[str]:
    return [dataclasses.replace(r, cached=False).to_json() for r in recs]


def _results(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary without its timing and without what says where its cases came from."""
    s = json.loads(json.dumps(summary))
    s.pop("timing")
    for a in s["adapters"]:
        a.pop("cached")
        for cell in a["cells"].values():
            cell.pop("cached")
    return s


def _files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


def test_a_second_run_computes_nothing_starts_no_worker_and_gives_the_first_runs_results(
        tmp_path, cache_dir, starts):
    first = _run(tmp_path / "first")
    assert sorted(set(starts)) == ["reference", "wrong_running_var_update"]
    assert not any(r.cached for r in _records(tmp_path / "first"))
    starts.clear()

    second = _run(tmp_path / "second")
    assert starts == [], "a run whose every case is cached started a worker"
    recs = _records(tmp_path / "second")
    assert all(r.cached for r in recs)
    assert _without_mark(recs) == _without_mark(_records(tmp_path / "first"))
    assert _files(tmp_path / "second" / "cases") == _files(tmp_path / "first" / "cases")
    assert _results(second) == _results(first)  # cells, findings, divergences, accuracy
    assert {a["name"]: a["cached"] for a in second["adapters"]} == {
        "reference": 6, "wrong_running_var_update": 6}
    assert all(c["cached"] == 2 for a in second["adapters"] for c in a["cells"].values())
    assert all(t["startup_seconds"] is None for t in second["timing"]["adapters"].values())


def test_the_reports_say_how_many_cases_came_from_the_cache_and_mark_their_cells(tmp_path, cache_dir):
    import jsonschema

    from bnspec.merge import merge_summaries
    from bnspec.reports import html, markdown, write_all

    fresh = _run(tmp_path / "first", (REFERENCE,))
    cached = _run(tmp_path / "second", (REFERENCE,))
    schema = json.loads((ROOT / "bnspec/schema/summary.schema.json").read_text())
    jsonschema.validate(json.loads(json.dumps(cached)), schema)
    md = markdown(cached)
    assert "↺: read from the result cache" in md and "6 of 6 case(s); reference 6/6." in md
    assert "| reference | 0.1.0 | pytorch | ✓ ↺ |" in md
    assert "result cache" not in markdown(fresh) and "↺" not in markdown(fresh)
    page = html(cached)
    assert 'id="cached"' in page and "reference 6/6" in page and 'class="pass cached"' in page
    write_all(cached, tmp_path / "second")
    # Merging a cached summary with a fresh one of the same adapter and version: the same results.
    merged, conflicts = merge_summaries([(Path("a.json"), fresh), (Path("b.json"), cached)])
    assert conflicts == [] and [a["name"] for a in merged["adapters"]] == ["reference"]
    jsonschema.validate(json.loads(json.dumps(merged)), schema)


def test_without_the_cache_a_run_neither_reads_nor_writes_it(tmp_path, cache_dir, starts):
    _run(tmp_path / "uncached", (REFERENCE,), cache=False)
    assert not cache_dir.exists() or not any(cache_dir.rglob("*.json")), "cache=False wrote the cache"
    _run(tmp_path / "first", (REFERENCE,))
    starts.clear()
    _run(tmp_path / "again", (REFERENCE,), cache=False)
    assert starts == ["reference"]
    assert not any(r.cached for r in _records(tmp_path / "again"))


def _misses(out: Path) -> int:
    return sum(not r.cached for r in _records(out))


def test_a_changed_case_misses_and_only_that_case(tmp_path, cache_dir, monkeypatch):
    _run(tmp_path / "first", (REFERENCE,))
    real = engine.generate

    def changed(prop: str, seed: int, index: int):  # same property and index, other content
        case = real(prop, seed, index)
        return case.replace(eps=case.eps * 2) if (prop, index) == ("eps_placement", 1) else case

    monkeypatch.setattr(engine, "generate", changed)
    _run(tmp_path / "second", (REFERENCE,))
    assert [(r.property, r.example) for r in _records(tmp_path / "second") if not r.cached] == [("eps_placement", 1)]


@pytest.mark.parametrize("option", [{"timeout": 60.0}, {"baseline": "keras"}, {"memory_limit_mb": 4096}])
def test_an_option_that_can_change_a_record_misses(tmp_path, cache_dir, option):
    _run(tmp_path / "first", (REFERENCE,))
    _run(tmp_path / "second", (REFERENCE,), **option)
    assert _misses(tmp_path / "second") == 6


def test_not_shrinking_misses_the_cases_that_would_be_shrunk_only(tmp_path, cache_dir):
    _run(tmp_path / "first", (WRONG,))
    _run(tmp_path / "second", (WRONG,), shrink=False)
    # a property's first failure is shrunk, so its first case is keyed by whether shrinking is on
    # (a later one is never shrunk)
    missed = {(r.property, r.example) for r in _records(tmp_path / "second") if not r.cached}
    assert {("eps_placement", 0), ("train_output", 0)} <= missed
    assert not missed & {("eps_placement", 1), ("train_output", 1)}


def test_options_that_cannot_change_a_record_hit(tmp_path, cache_dir):
    _run(tmp_path / "first", (REFERENCE,))
    _run(tmp_path / "second", (REFERENCE,), jobs=2, accuracy=False, known=load_known())
    assert _misses(tmp_path / "second") == 0


@pytest.mark.parametrize("change", ["name", "profile", "worker_env", "python", "capabilities"])
def test_a_changed_adapter_identity_misses(tmp_path, cache_dir, change):
    adapter = load_adapter_ref(REFERENCE)
    _run(tmp_path / "first", (adapter,))
    other = {
        "name": {"name": "reference_renamed"},
        "profile": {"profile": "keras"},
        "worker_env": {"worker_env": {"BNSPEC_SOMETHING": "1"}},
        "python": {"python": sys.executable},  # the same interpreter, named: another identity
        "capabilities": {"capabilities": dataclasses.replace(adapter.capabilities, dtypes=("float64",))},
    }[change]
    _run(tmp_path / "second", (dataclasses.replace(adapter, **other),))
    assert _misses(tmp_path / "second") == 6


def test_a_changed_environment_listing_misses(tmp_path, cache_dir, monkeypatch):
    _run(tmp_path / "first", (REFERENCE,))
    real = cache.environment
    monkeypatch.setattr(cache, "environment", lambda python: [*real(python), ["site", ["numpy-9.9.dist-info"]]])
    _run(tmp_path / "second", (REFERENCE,))
    assert _misses(tmp_path / "second") == 6


def test_an_environment_a_path_runs_part_of_its_work_in_is_in_the_key(tmp_path, monkeypatch):
    # torch_nobuco's worker runs in this interpreter and converts in envs/nobuco (runner_family):
    # an install there must miss like one here.
    from bnspec.adapter import Adapter

    @dataclasses.dataclass
    class Runner(Adapter):
        runner_family: str = "nobuco"

    monkeypatch.setenv("BNSPEC_ENVS", str(tmp_path / "envs"))
    adapter = Runner(name="runner", framework="bnspec", profile="pytorch")
    nobuco = str(tmp_path / "envs" / "nobuco" / ".venv" / "bin" / "python")
    assert cache.interpreters(adapter) == [None, nobuco]
    site = tmp_path / "envs" / "nobuco" / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "tensorflow_cpu-2.15.1.dist-info").mkdir(parents=True)
    before = cache.environment(nobuco)
    (site / "tensorflow_cpu-2.15.1.dist-info").rename(site / "tensorflow_cpu-2.16.0.dist-info")
    assert cache.environment(nobuco) != before


def test_the_environment_is_read_from_site_packages_without_importing(tmp_path):
    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.99" / "site-packages"
    (site / "torch-9.0.dist-info").mkdir(parents=True)
    (site / "torch").mkdir()
    listing = cache.environment(str(venv / "bin" / "python"))
    assert listing == [str(venv / "bin" / "python"), [str(site), ["torch-9.0.dist-info"]]]
    here = cache.environment(None)
    assert any(any(n.startswith("numpy-") for n in names) for _, names in here[1:])


def test_a_changed_bnspec_source_misses(tmp_path, cache_dir, monkeypatch):
    _run(tmp_path / "first", (REFERENCE,))
    monkeypatch.setattr(cache, "source_hash", lambda roots=None: "edited")
    _run(tmp_path / "second", (REFERENCE,))
    assert _misses(tmp_path / "second") == 6


def test_the_source_hash_covers_the_adapters_and_the_plugin_but_not_the_registry(tmp_path):
    roots = cache._package_roots()
    assert {p.name for p in roots} >= {"bnspec", "adapters", "conformance"} or len(roots) == 1
    before = cache.source_hash([tmp_path])
    (tmp_path / "known_divergences.toml").write_text("[[divergence]]\n")
    assert cache.source_hash([tmp_path]) == before
    (tmp_path / "mod.py").write_text("x = 1\n")
    after = cache.source_hash([tmp_path])
    (tmp_path / "mod.py").write_text("x = 2\n")
    assert len({before, after, cache.source_hash([tmp_path])}) == 3


def test_a_cached_record_is_matched_against_the_registry_as_it_is_now(tmp_path, cache_dir):
    registry = tmp_path / "known.toml"
    registry.write_text('[[divergence]]\nid = "biased-on-purpose"\nadapter = "wrong_running_var_update"\n'
                        'properties = ["eps_placement"]\nknob = "running_var_update"\n'
                        'reason = "a fixture that feeds the biased variance on purpose"\n'
                        'link = "tests/fixtures/bad_adapters.py"\n')
    _run(tmp_path / "first", (WRONG,))
    assert not any(r.known for r in _records(tmp_path / "first"))
    _run(tmp_path / "second", (WRONG,), known=load_known(registry))
    recs = _records(tmp_path / "second")
    assert all(r.cached for r in recs)
    assert {r.property for r in recs if r.known == "biased-on-purpose"} == {"eps_placement"}


def test_a_corrupt_or_foreign_entry_is_recomputed_not_an_error(tmp_path, cache_dir):
    _run(tmp_path / "first", (REFERENCE,))
    entries = sorted(cache_dir.rglob("*.json"))
    assert len(entries) == 7  # six cases and the accuracy measurement
    entries[0].write_text('{"format": 1, "key": "')  # cut short
    entries[1].write_bytes(b"\xff\xfe not text")
    entries[2].write_text(json.dumps({**json.loads(entries[3].read_text()), "key": "someone else's"}))
    broken = entries[4]
    entry = json.loads(broken.read_text())
    if entry["kind"] == "case":
        entry["record"] = '{"adapter": "reference"}'  # not a record
        broken.write_text(json.dumps(entry))
    _run(tmp_path / "second", (REFERENCE,))
    assert 3 <= _misses(tmp_path / "second") <= 4
    _run(tmp_path / "third", (REFERENCE,))  # recomputed entries were written again, whole
    assert _misses(tmp_path / "third") == 0


def test_concurrent_writers_of_one_entry_leave_it_whole(tmp_path):
    store = cache.ResultCache(tmp_path)
    rec = Record("a", "estimator", 0, "0123456789ab", "label", Status.CONFORMS, detail="x" * 100_000)
    key = "ab" + "0" * 62
    seen: list[object] = []

    def write_and_read() -> None:
        for _ in range(20):
            store.store_case(key, rec, [("c.json", "{}" * 1000)], 1.0)
            seen.append(store.load_case(key, "a", "estimator", 0, "0123456789ab"))

    threads = [threading.Thread(target=write_and_read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen and all(hit is not None and hit.record.detail == rec.detail for hit in seen)
    assert [p.name for p in (tmp_path / "results" / "ab").iterdir()] == [f"{key}.json"]  # no temporary left


def test_a_failure_is_not_cached_and_is_tried_again(tmp_path, cache_dir, starts):
    fault = "tests.fixtures.bad_adapters:IMPORT_ERROR"
    _run(tmp_path / "first", (fault,), properties=["train_output"], accuracy=False)
    assert {r.status for r in _records(tmp_path / "first")} == {Status.FAILURE}
    starts.clear()
    _run(tmp_path / "second", (fault,), properties=["train_output"], accuracy=False)
    assert starts and _misses(tmp_path / "second") == 2


def test_attribution_runs_once_per_failing_case(tmp_path, cache_dir, monkeypatch):
    explained: list[str] = []
    real = attribution.explain

    def counting(case, base, obs, **kwargs):
        explained.append(case.case_id())
        return real(case, base, obs, **kwargs)

    monkeypatch.setattr(attribution, "explain", counting)
    monkeypatch.setattr(shrink, "explain", counting)
    _run(tmp_path / "first", (WRONG,), accuracy=False)
    failing = [r.case_id for r in _records(tmp_path / "first") if r.status == Status.MISMATCH]
    assert failing
    assert all(explained.count(case_id) == 1 for case_id in failing), explained
    explained.clear()
    _run(tmp_path / "second", (WRONG,), accuracy=False)
    assert explained == []  # read from the cache: nothing judged, nothing explained


def test_the_default_cache_is_the_user_cache_directory(monkeypatch):
    import platformdirs

    monkeypatch.delenv("BNSPEC_CACHE_DIR")
    assert cache.cache_dir() == Path(platformdirs.user_cache_dir("bnspec"))
    monkeypatch.setenv("BNSPEC_CACHE_DIR", "/somewhere/else")
    assert cache.cache_dir() == Path("/somewhere/else")


def test_the_command_line_reads_the_cache_writes_only_out_and_the_cache_and_no_cache_recomputes(
        tmp_path, monkeypatch):
    from click.testing import CliRunner

    from bnspec.cli import cli

    cwd, cache_folder = tmp_path / "empty", tmp_path / "cache"
    cwd.mkdir()
    args = ["run", "--adapters", "reference", "--examples", "1", "--properties", "estimator,running_stats"]
    first = subprocess.run([sys.executable, "-m", "bnspec", *args, "--out", "first"], cwd=cwd, capture_output=True,
                           text=True, timeout=300, env={**os.environ, "BNSPEC_CACHE_DIR": str(cache_folder),
                                                        "PYTHONPATH": str(ROOT)})
    assert first.returncode == 0, first.stderr
    assert "from the result cache" not in first.stderr
    monkeypatch.setenv("BNSPEC_CACHE_DIR", str(cache_folder))
    monkeypatch.chdir(cwd)
    second = CliRunner().invoke(cli, [*args, "--out", "second"])
    assert second.exit_code == 0 and "2 case(s) from the result cache" in second.output, second.output
    assert json.loads((cwd / "second" / "summary.json").read_text())["adapters"][0]["cached"] == 2
    third = CliRunner().invoke(cli, [*args, "--out", "third", "--no-cache"])
    assert third.exit_code == 0 and "from the result cache" not in third.output, third.output
    assert json.loads((cwd / "third" / "summary.json").read_text())["adapters"][0]["cached"] == 0
    assert sorted(p.name for p in cwd.iterdir()) == ["first", "second", "third"]
    assert [p.name for p in cache_folder.iterdir()] == ["results"]
    assert len(list(cache_folder.rglob("*.json"))) == 3  # two cases, one accuracy measurement
