"""Issue 15's done-when: a wrong data-parallel implementation declaring a count-weighted,
synchronized profile (pytorch_sync) is caught by ``bnspec run``'s default budget and attributed to
its knob: equal replica weights to replica_stats, replica 0's running statistics to
replica_running. Hand-written NumPy (tests/fixtures/wrong_replicas.py), run as a user runs an
adapter of their own (--adapter-path), through the real engine and its workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bnspec.cli import cli

ROOT = Path(__file__).parents[1]
PROPS = "replicas_even,replicas_uneven,replicas_one_sample,replicas_steps"


@pytest.mark.parametrize("attr, knob, value", [
    ("EQUAL_WEIGHTS", "replica_stats", "equal_weighted"),
    ("REPLICA0_RUNNING", "replica_running", "replica0"),
])
def test_a_wrong_data_parallel_implementation_is_caught_and_attributed(tmp_path, attr, knob, value):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["run", "--adapter-path", f"{ROOT}/tests/fixtures/wrong_replicas.py:{attr}",
                                    "--properties", PROPS, "--examples", "2", "--known", "none",
                                    "--no-shrink", "--out", str(out)])
    assert res.exit_code == 1, res.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    failing = [r for r in rows if r["status"] == "fail"]
    assert failing, "not caught"
    named = [r for r in failing if any(flip["knob"] == knob and flip["observed"] == value
                                       for alt in r["explanation"] for flip in alt)]
    assert named, [(r["property"], r["explanation"], r["detail"][:80]) for r in failing]
    # every failure names the knob; alone, but where a one-sample shard adds the fixture's other
    # flaw (its own shard's n/(n-1) with n = 1: NaN where the profile raises, single_value)
    for r in failing:
        flips = [{(f["knob"], f["observed"]) for f in alt} for alt in r["explanation"]]
        alone = {(knob, value)}
        assert flips and all((knob, value) in f for f in flips), (r["property"], r["explanation"])
        if r["property"] != "replicas_one_sample":
            assert flips == [alone], (r["property"], r["explanation"])
    # only uneven splits (or, for the running statistics, any split) can show it; on even shards
    # equal weights are count weights
    if attr == "EQUAL_WEIGHTS":
        assert all(r["property"] != "replicas_even" for r in failing)
