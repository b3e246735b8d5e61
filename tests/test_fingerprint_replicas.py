"""The fingerprint decides the replica knobs of an adapter that runs replicas (issue 15): the
replica_uneven / replica_even / replica_offset probes, on bnspec's reference under every
data-parallel profile (exact), on hand-written wrong implementations (the flaw is found), and on
real engines (torch DDP, flax under pmap)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bnspec.adapters.reference import ADAPTER, ReferenceAdapter
from bnspec.discovery import load_adapter_ref
from bnspec.fingerprint import fingerprint
from bnspec.profiles import builtin_profiles
from bnspec.semantics import REPLICA_KNOBS, Semantics

ROOT = Path(__file__).parents[1]
DEFAULT = Semantics()
DATA_PARALLEL = sorted(n for n, p in builtin_profiles().items()
                       if any(getattr(p.semantics, k) != getattr(DEFAULT, k) for k in REPLICA_KNOBS))


def _replica_rows(fp):
    return {k: v for k, v in fp["knobs"].items() if k in REPLICA_KNOBS}


@pytest.mark.parametrize("profile", DATA_PARALLEL)
def test_the_reference_under_a_data_parallel_profile_agrees_on_every_replica_knob(profile):
    fp = fingerprint(ReferenceAdapter(name="ref", framework="bnspec", profile=profile), in_process=True)
    rows = _replica_rows(fp)
    assert set(rows) == set(REPLICA_KNOBS)
    assert all(r["agrees"] for r in rows.values()), {k: r["observed"] for k, r in rows.items() if not r["agrees"]}
    assert rows["replica_stats"]["status"] in ("decided", "equivalent")


def test_a_one_device_adapter_gets_no_replica_rows():
    one = dataclasses.replace(ADAPTER, capabilities=dataclasses.replace(ADAPTER.capabilities, replicas=False))
    fp = fingerprint(one, in_process=True)
    assert not _replica_rows(fp)
    assert "replica_uneven" in fp["probes"] and fp["probes"]["replica_uneven"].startswith("not run")


@pytest.mark.parametrize("attr, knob, value", [
    ("EQUAL_WEIGHTS", "replica_stats", "'equal_weighted'"),
    ("REPLICA0_RUNNING", "replica_running", "'replica0'"),
])
def test_the_fingerprint_finds_a_wrong_implementations_replica_knob(attr, knob, value):
    adapter = load_adapter_ref(f"{ROOT}/tests/fixtures/wrong_replicas.py:{attr}")
    row = _replica_rows(fingerprint(adapter, in_process=True))[knob]
    assert not row["agrees"] and row["observed"] == value, row


@pytest.mark.parametrize("ref, expected", [
    ("bnspec.adapters.torch_ddp:TORCH_DDP",
     {"replica_stats": "'none'", "replica_running": "'replica0'", "replica_param_grad": "'mean'"}),
    ("bnspec.adapters.jax_data_parallel:FLAX_LINEN_PMAP",
     {"replica_stats": "'equal_weighted'", "replica_running": "'synchronized'", "replica_param_grad": "'local'"}),
])
def test_a_real_engine_fingerprints_as_its_profile(ref, expected):
    pytest.importorskip("torch" if "torch" in ref else "flax")
    rows = _replica_rows(fingerprint(load_adapter_ref(ref)))
    assert all(r["agrees"] for r in rows.values()), {k: r["observed"] for k, r in rows.items() if not r["agrees"]}
    assert {k: rows[k]["observed"] for k in expected} == expected
