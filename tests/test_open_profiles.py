"""Profiles are open: a package outside bnspec registers one through the ``bnspec.profiles``
entry-point group, and it is validated, listed, diffed and run like a built-in one.

The packages under tests/fixtures/ are really installed (pip, into a temporary folder) and used
through the command line with that folder on PYTHONPATH; the loading rules (duplicates, broken
profiles, caching) are also checked in process with entry points made by hand.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from bnspec import profiles
from bnspec.adapter import Adapter
from bnspec.errors import BnspecError, UnknownName
from bnspec.profiles import (
    InvalidProfile,
    Profile,
    ProfileLoadError,
    ProfileWarning,
    get_profile,
    profile_source,
    registry,
)
from bnspec.semantics import ALL_KNOBS, KNOBS

FIXTURES = Path(__file__).parent / "fixtures"


def pip_install(package: Path, target: Path) -> Path:
    """Install the package folder ``package`` (copied first: a build writes beside its sources)
    into ``target``, without dependencies, an index or build isolation."""
    source = target.parent / f"{package.name}-src"
    shutil.copytree(package, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=120)
    return target


def bnspec(*args: str, path: list[Path], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    return subprocess.run([sys.executable, "-m", "bnspec", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def mybn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install(FIXTURES / "mybn_profile", tmp_path_factory.mktemp("mybn") / "site")


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pip_install(FIXTURES / "broken_profiles", tmp_path_factory.mktemp("broken") / "site")


# -- a third-party profile, installed --
def test_an_installed_third_party_profile_is_listed_with_its_distribution_and_version(mybn):
    out, adapters = bnspec("list", "--profiles", "--json", path=[mybn]), bnspec("list", "--json", path=[mybn])
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr
    rows = {(r.get("kind"), r["name"]): r for r in json.loads(out.stdout) + json.loads(adapters.stdout)}
    assert {r["kind"] for r in json.loads(adapters.stdout)} == {"adapter"}  # the adapters' array, as before
    row = rows[("profile", "mybn")]
    assert (row["distribution"], row["version"], row["builtin"]) == ("bnspec-mybn", "0.3.1", False)
    assert row["entry_point"] == "mybn = bnspec_mybn:MYBN"
    assert rows[("profile", "pytorch")]["builtin"] is True
    assert rows[("adapter", "mybn_numpy")]["declared_profile"] == "mybn"
    text = bnspec("list", path=[mybn]).stdout
    assert "bnspec-mybn 0.3.1 (entry point mybn = bnspec_mybn:MYBN)" in text


def test_list_with_a_third_party_profile_imports_no_framework(mybn):
    code = ("import sys; from bnspec.cli import cli; "
            "cli.main(['list', '--profiles', '--json'], standalone_mode=False); "
            "assert not {'torch', 'tensorflow', 'jax', 'keras', 'onnxruntime'} & set(sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(mybn)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "mybn" in {r["name"] for r in json.loads(out.stdout)}


def test_diff_against_a_third_party_profile_cites_both_sides(mybn):
    out = bnspec("diff", "pytorch", "mybn", path=[mybn])
    assert out.returncode == 0, out.stderr
    assert "mybn: registered by bnspec-mybn 0.3.1" in out.stdout
    assert "running_var_update: 'unbiased' -> 'biased'" in out.stdout
    assert "mybn/batchnorm.py::BatchNorm.update (var_sum / n, like Keras)" in out.stdout
    assert "aten/src/ATen/native/Normalization.cpp" in out.stdout  # pytorch's side


def test_run_checks_an_adapter_against_the_third_party_profile_it_declares(mybn, tmp_path):
    (tmp_path / "mine.py").write_text("from bnspec_mybn.adapter import MyBatchNorm\n"
                                      "ADAPTER = MyBatchNorm(name='mine', framework='numpy', profile='mybn')\n")
    out = bnspec("run", "--adapter-path", "mine.py:ADAPTER", "--adapters", "mybn_numpy", "--examples", "1",
                 "--out", str(tmp_path / "out"), path=[mybn], cwd=tmp_path)
    assert out.returncode in (0, 1), out.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    entries = {a["name"]: a for a in summary["adapters"]}
    assert set(entries) == {"mine", "mybn_numpy"}  # a path, and the package's own adapter entry point
    for entry in entries.values():
        assert entry["declared_profile"] == "mybn"
        assert entry["conforms"], entry["non_conformances"]
        assert "running_var_update" in entry["divergences"]  # from the baseline, pytorch: mybn's knob
    assert out.returncode == 0


# -- broken third-party profiles --
def test_broken_third_party_profiles_are_one_line_warnings_when_listing(mybn, broken):
    out = bnspec("list", path=[mybn, broken])
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    warned = [line for line in out.stderr.splitlines() if "profile" in line]
    assert all(line.startswith("warning: ") for line in warned), out.stderr
    text = "\n".join(warned)
    assert "profile 'uncited' cites no source for knob(s) ['eps_floor', 'single_value']" in text
    assert "'not_a_profile' from bnspec-broken-profiles 0.0.1" in text and "loads a dict, not a bnspec.Profile" in text
    assert "loads profile 'not_misnamed'; the entry point's name must be the profile's name" in text
    assert "No module named 'bnspec_broken.no_such_module'" in text
    # a duplicate is refused, naming both sources
    assert ("profile 'pytorch' from bnspec-broken-profiles 0.0.1 (entry point pytorch = bnspec_broken.other:"
            "PYTORCH_AGAIN) is refused: the name is taken by a built-in profile (bnspec)") in text
    assert ("profile 'mybn' is registered twice, by bnspec-broken-profiles 0.0.1 (entry point mybn = "
            "bnspec_broken.other:MYBN_AGAIN) and by bnspec-mybn 0.3.1 (entry point mybn = bnspec_mybn:MYBN)") in text
    assert len(warned) == 6
    listed = out.stdout.split("profiles:", 1)[1]
    assert "uncited" not in listed and "mybn" not in listed and "built-in (bnspec)" in listed


def test_a_broken_profile_asked_for_by_name_is_one_line_error(broken):
    out = bnspec("diff", "pytorch", "uncited", path=[broken])
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: profile 'uncited' from bnspec-broken-profiles"), lines
    assert "cites no source for knob(s) ['eps_floor', 'single_value']" in lines[0]


def test_a_built_in_profile_is_used_while_a_third_party_one_shadowing_it_is_refused(broken):
    out = bnspec("diff", "pytorch", "keras", path=[broken])
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr  # by name: no entry point is loaded


# -- the rules, in process, with entry points made by hand --
class _Dist:
    def __init__(self, name: str, version: str) -> None:
        self.name, self.version = name, version


def _ep(name: str, value: str, dist: str = "thirdparty", version: str = "1.0") -> metadata.EntryPoint:
    ep = metadata.EntryPoint(name, value, registry.GROUP)
    return ep._for(_Dist(dist, version))  # type: ignore[arg-type]


MYBN = Profile(name="mybn", framework="mybn", title="mybn.BatchNorm",
               semantics=get_profile("pytorch").semantics.replace(eps=1e-3),
               cite={**get_profile("pytorch").cite, "eps": "mybn/nn.py::BatchNorm (eps=1e-3)"})
LOADS = {"count": 0}


def _counted() -> Profile:
    LOADS["count"] += 1
    return MYBN


@pytest.fixture
def entry_points(monkeypatch):
    """Replace the group's entry points; the registry forgets what it found before and after."""
    def install(*eps: metadata.EntryPoint) -> None:
        monkeypatch.setattr(metadata, "entry_points", lambda group=None: list(eps) if group == registry.GROUP else [])
        registry._clear_cache()

    yield install
    monkeypatch.undo()
    registry._clear_cache()


def test_built_ins_come_first_then_entry_points_by_name(entry_points):
    entry_points(_ep("mybn", f"{__name__}:MYBN"))
    names = list(profiles.PROFILES)
    assert names[:2] == ["pytorch", "pytorch_cumulative"] and names[-1] == "mybn"
    assert profiles.PROFILES["mybn"] is MYBN
    assert str(profile_source("mybn")) == f"thirdparty 1.0 (entry point mybn = {__name__}:MYBN)"
    assert profile_source("pytorch").builtin


def test_a_profile_is_loaded_once_and_cached(entry_points, monkeypatch):
    import types

    module = types.ModuleType("counted_profile")
    module.__getattr__ = lambda attr: _counted() if attr == "MYBN" else None  # type: ignore[assignment]
    monkeypatch.setitem(sys.modules, "counted_profile", module)
    entry_points(_ep("mybn", "counted_profile:MYBN"))
    LOADS["count"] = 0
    assert get_profile("mybn") is MYBN and profiles.PROFILES["mybn"] is MYBN and "mybn" in profiles.PROFILES
    assert LOADS["count"] == 1


def test_the_same_entry_point_installed_twice_is_one(entry_points):
    entry_points(_ep("mybn", f"{__name__}:MYBN"), _ep("mybn", f"{__name__}:MYBN"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert profiles.PROFILES["mybn"] is MYBN


def test_two_distributions_registering_one_name_are_both_refused(entry_points):
    entry_points(_ep("mybn", f"{__name__}:MYBN", dist="a"), _ep("mybn", f"{__name__}:MYBN", dist="b"))
    with pytest.warns(ProfileWarning, match=r"registered twice, by a 1.0 .* and by b 1.0 .*: both are refused"):
        assert "mybn" not in profiles.PROFILES
    with pytest.raises(ProfileLoadError, match="registered twice"):
        get_profile("mybn")


def test_a_broken_profile_is_a_warning_when_listing_and_an_error_by_name(entry_points):
    entry_points(_ep("mybn", "no_such_module_here:MYBN"))
    with pytest.warns(ProfileWarning, match="skipping profile 'mybn' from thirdparty 1.0"):
        assert "mybn" not in profiles.all_profiles()
    with pytest.raises(ProfileLoadError, match="ModuleNotFoundError: No module named 'no_such_module_here'"):
        get_profile("mybn")
    with pytest.raises(UnknownName, match="unknown profile 'mybm'; available: .*mybn"):
        get_profile("mybm")


def test_asking_for_a_built_in_profile_loads_no_entry_point(entry_points):
    entry_points(_ep("mybn", "no_such_module_here:MYBN"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert get_profile("keras").name == "keras"


# -- validation: the same for built-in and third-party profiles --
def _profile(**changes):
    base = dict(name="mybn", framework="mybn", title="t", semantics=MYBN.semantics, cite=dict(MYBN.cite))
    return Profile(**{**base, **changes})


@pytest.mark.parametrize("changes, message", [
    (dict(cite={k: v for k, v in MYBN.cite.items() if k != "eps"}),
     r"^profile 'mybn' cites no source for knob\(s\) \['eps'\]: every knob needs a citation"),
    (dict(cite={**MYBN.cite, "eps": "  "}), r"cites no source for knob\(s\) \['eps'\]"),
    (dict(cite={**MYBN.cite, "eps_placment": "x"}), r"cites unknown knob\(s\) \['eps_placment'\]"),
    (dict(semantics={"eps": 1e-3}), "semantics is a dict, not a bnspec.Semantics"),
    (dict(name="my bn"), "profile name 'my bn' is invalid"),
    (dict(title=""), "framework and title must not be empty"),
    (dict(state_names={"running_mean": 1}), "state_names must map str to str"),
])
def test_an_invalid_profile_is_refused_with_one_line_naming_it(changes, message):
    with pytest.raises(InvalidProfile, match=message) as info:
        _profile(**changes)
    assert isinstance(info.value, BnspecError) and "\n" not in str(info.value)


def test_invalid_semantics_inside_a_profile_name_the_profile_and_the_knob():
    sem = MYBN.semantics.replace()
    object.__setattr__(sem, "eps_placement", "in")  # built around the Semantics' own validation
    with pytest.raises(InvalidProfile, match=r"profile 'mybn': knob eps_placement='in' is invalid"):
        _profile(semantics=sem)


def test_every_built_in_profile_passes_the_third_party_validation():
    for profile in profiles.builtin_profiles().values():
        profiles.validate(profile)
        # every knob cited; the replica knobs where a data-parallel profile sets them
        assert set(KNOBS) <= set(profile.cite) <= set(ALL_KNOBS), profile.name


# -- an adapter carrying its own Profile --
def test_an_adapter_may_carry_its_own_profile_object():
    adapter = Adapter(name="mine", framework="numpy", profile=MYBN)
    assert adapter.declared_profile() is MYBN
    assert Adapter(name="byname", framework="numpy", profile="keras").declared_profile() is get_profile("keras")


def test_a_carried_profile_that_reuses_a_registered_name_must_be_that_profile():
    import dataclasses

    other = dataclasses.replace(get_profile("pytorch"), title="not torch's")
    with pytest.raises(BnspecError, match=r"declared profile 'pytorch' differs from the registered profile"):
        Adapter(name="mine", framework="numpy", profile=other).declared_profile()
    same = Adapter(name="ok", framework="numpy", profile=dataclasses.replace(get_profile("pytorch")))
    assert same.declared_profile() == get_profile("pytorch")


def test_diff_takes_a_carried_profile_object():
    from bnspec.porting import porting_guide

    text = porting_guide("pytorch", MYBN)
    assert "mybn: carried by its adapter" in text and "mybn/nn.py::BatchNorm (eps=1e-3)" in text
