"""Converter environments (``bnspec envs``): where they live, the specs the package ships, the
steps that build them (prune, seed, dedupe) on small folders, idempotence, the errors, and one real
build of a tiny family that a worker then runs in."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from bnspec import envpaths, envs
from bnspec.case import make_case
from bnspec.discovery import load_adapter_ref
from bnspec.worker import Worker

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["jax2onnx", "nobuco", "onnx2tf", "tf2onnx", "torchvision"]
REFERENCE = "bnspec.adapters.reference:ADAPTER"


@pytest.fixture
def no_location(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No BNSPEC_ENVS, no checkout, and a prefix that is no environment of bnspec's."""
    monkeypatch.delenv(envs.ENVS_VAR, raising=False)
    monkeypatch.setattr(envs, "checkout", lambda: None)
    monkeypatch.setattr(envpaths, "checkout", lambda: None)
    monkeypatch.setattr(sys, "prefix", "/nonexistent/prefix")
    return monkeypatch


def _spec(tmp_path: Path, files: dict[str, str] | None = None, family: str = "tiny") -> Path:
    """A folder of specs holding one family: its files by name (requirements.txt: numpy only)."""
    folder = tmp_path / "specs" / family
    folder.mkdir(parents=True)
    for name, text in {"requirements.txt": "numpy==2.4.6\n", **(files or {})}.items():
        (folder / name).write_text(text)
    return folder.parent


def _big(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _same_file(a: Path, b: Path) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# -- where they live ---------------------------------------------------------------------------

def test_bnspec_envs_names_the_folder_over_everything_else(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(envs.ENVS_VAR, str(tmp_path / "mine"))
    assert envs.envs_root() == tmp_path / "mine"
    assert envs.env_python("nobuco") == tmp_path / "mine" / "nobuco" / ".venv" / "bin" / "python"


def test_a_relative_bnspec_envs_is_made_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(envs.ENVS_VAR, "envs")
    assert envs.envs_root() == tmp_path / "envs"


def test_a_checkout_keeps_its_environments_in_its_envs_folder(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(envs.ENVS_VAR, raising=False)
    assert envs.checkout() == ROOT  # these tests run from the checkout (an editable install)
    assert envs.envs_root() == ROOT / "envs"


def test_an_installed_bnspec_keeps_them_in_the_user_data_folder(no_location: pytest.MonkeyPatch, tmp_path: Path):
    import platformdirs

    no_location.setattr(platformdirs, "user_data_dir", lambda app: str(tmp_path / "data" / app))
    assert envs.envs_root() == tmp_path / "data" / "bnspec" / "envs"


def test_inside_an_environment_the_root_is_the_folder_it_lives_in(no_location: pytest.MonkeyPatch, tmp_path: Path):
    """The environments hold no platformdirs: a worker there finds the others beside its own."""
    venv = tmp_path / "root" / "jax2onnx" / ".venv"
    venv.mkdir(parents=True)
    (venv / envs.STAMP).write_text(json.dumps({"family": "jax2onnx"}))
    no_location.setattr(sys, "prefix", str(venv))
    assert envs.envs_root() == tmp_path / "root"


def test_the_converter_adapters_find_their_interpreter_by_the_same_rule(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path):
    from bnspec.adapters.converters._common import env_python

    monkeypatch.setenv(envs.ENVS_VAR, str(tmp_path))
    assert env_python("tf2onnx") == str(tmp_path / "tf2onnx" / ".venv" / "bin" / "python")


def test_a_missing_environment_names_the_command_that_builds_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(envs.ENVS_VAR, str(tmp_path))
    nobuco = load_adapter_ref("bnspec.adapters.converters.nobuco:TORCH_NOBUCO")
    chain = load_adapter_ref("bnspec.adapters.converters.chains:FLAX_NNX_JAX2ONNX_ONNX2TORCH")
    assert not nobuco.installed()
    assert envs.missing_hint(nobuco) == "bnspec envs create nobuco"
    assert envs.families_of(chain) == ["torchvision", "jax2onnx"]
    assert envs.missing_hint(chain) == "bnspec envs create torchvision jax2onnx"


# -- the specs the package ships ---------------------------------------------------------------

def test_the_package_ships_a_pinned_spec_for_every_family():
    assert envs.families() == FAMILIES
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "envspecs/*/*" in package_data["bnspec"]
    for family in FAMILIES:
        spec = envs.load_spec(family)
        assert spec.directory == ROOT / "bnspec" / "envspecs" / family
        assert all(p.name in envs.SPEC_FILES for p in spec.directory.iterdir() if p.name != "__pycache__")
        for name in ("requirements.txt", "requirements.lock.txt", "requirements.nodeps.txt"):
            path = spec.path(name)
            lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()] if path else []
            assert all("==" in ln for ln in lines if ln), f"{family}/{name}: every version pinned"
        assert {"numpy", "click"} <= spec.names(), family
    assert envs.load_spec("nobuco").seed == "torchvision"
    assert envs.load_spec("onnx2tf").python_version == "3.12"
    assert envs.load_spec("jax2onnx").python_version is None


def test_a_seed_is_built_first():
    assert envs.in_build_order(["nobuco", "onnx2tf", "torchvision"]) == ["torchvision", "nobuco", "onnx2tf"]
    assert envs.in_build_order(["nobuco"]) == ["nobuco"]  # alone: built without its seed


def test_every_family_pins_what_a_worker_of_bnspec_imports(tmp_path: Path):
    """The worker and the converter adapters, imported as a worker does, use no dependency of
    bnspec's that a family does not pin (click, through bnspec.envs; never rich, platformdirs)."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = {envs._norm(re.split(r"[<>=!~ \[]", d)[0]) for d in declared}
    modules = ["bnspec.worker", *(f"bnspec.adapters.converters.{m}" for m in (
        "_common", "_helper", "chains", "jax2onnx", "nobuco", "onnx2tf", "onnx2torch", "tf2onnx", "torch_onnx"))]
    code = f"import sys, {', '.join(modules)}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    env = {**os.environ, envs.ENVS_VAR: str(tmp_path)}  # as in an environment: no platformdirs needed
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    imported = {envs._norm(m) for m in out.stdout.split()} & deps
    assert imported <= {"numpy", "click"}, imported
    for family in FAMILIES:
        assert imported <= envs.load_spec(family).names(), family


def test_requirement_names_reads_names_not_options_comments_or_extras():
    text = "# a comment\nJinja2==3.1.6  # why\n-c other.txt\n  ml_dtypes[x]>=0.4\n\n--no-deps\n"
    assert envs.requirement_names(text) == {"jinja2", "ml-dtypes"}


# -- the steps on small folders ----------------------------------------------------------------

def test_prune_removes_what_the_spec_does_not_name_and_keeps_bnspec_and_pip():
    installed = ["numpy", "Click", "six", "pip", "setuptools", "bnspec", "ML-Dtypes", "tensorflow"]
    assert envs.prune_list(installed, {"click", "numpy", "ml_dtypes"}) == ["six", "tensorflow"]


def test_dedupe_links_identical_files_and_nothing_else(tmp_path: Path):
    data = os.urandom(envs.DEDUPE_MIN_SIZE + 1)
    other, new = tmp_path / "other", tmp_path / "new"
    shared = _big(other / "lib" / "torch.so", data)
    same = _big(new / "lib" / "torch.so", data)
    renamed = _big(new / "lib" / "renamed.so", data)  # candidates go by name and size
    _big(other / "lib" / "differs.so", data)
    differs = _big(new / "lib" / "differs.so", data[:-1] + bytes([data[-1] ^ 1]))
    _big(other / "bin" / "tool", data, 0o755)
    mode = _big(new / "bin" / "tool", data, 0o644)  # a link would share the mode
    _big(other / "small.py", data[:100])
    small = _big(new / "small.py", data[:100])
    assert envs.dedupe(new, [other, new, tmp_path / "absent"]) == (1, len(data))
    assert _same_file(same, shared)
    assert same.read_bytes() == data
    assert not any(_same_file(p, q) for p, q in [(renamed, shared), (differs, other / "lib" / "differs.so"),
                                                (mode, other / "bin" / "tool"), (small, other / "small.py")])
    assert envs.dedupe(new, [other]) == (0, 0)  # already linked


def test_a_seed_is_hard_links_with_its_own_path_rewritten_in_new_files(tmp_path: Path):
    source, venv = tmp_path / "torchvision" / ".venv", tmp_path / "nobuco" / ".venv"
    lib = _big(source / "lib" / "python3.11" / "site-packages" / "torch" / "lib.so", os.urandom(1000))
    activate = source / "bin" / "activate"
    _big(activate, f'VIRTUAL_ENV="{source}"\n'.encode(), 0o755)
    (source / "pyvenv.cfg").write_text(f"command = python -m venv {source}\n")
    (source / "bin" / "python").symlink_to("/usr/bin/python3")
    (source / envs.STAMP).write_text("{}")
    venv.parent.mkdir()
    envs.seed_from(source, venv)
    assert _same_file(venv / lib.relative_to(source), lib)
    assert (venv / "bin" / "python").readlink() == Path("/usr/bin/python3")
    assert (venv / "bin" / "activate").read_text() == f'VIRTUAL_ENV="{venv}"\n'
    assert stat.S_IMODE((venv / "bin" / "activate").stat().st_mode) == 0o755
    assert activate.read_text() == f'VIRTUAL_ENV="{source}"\n', "the seed's own file is not written through"
    assert str(venv) in (venv / "pyvenv.cfg").read_text() and str(source) in (source / "pyvenv.cfg").read_text()
    assert not (venv / envs.STAMP).exists()


def test_disk_usage_counts_a_hard_linked_file_once(tmp_path: Path):
    one = _big(tmp_path / "a" / "f", os.urandom(1 << 20))
    os.link(one, tmp_path / "a" / "g")
    os.link(one, tmp_path / "b")
    inside = envs.disk_usage(tmp_path / "a")
    assert (os.stat(one).st_dev, os.stat(one).st_ino) in inside
    assert 1 << 20 <= sum(inside.values()) < 1.2 * (1 << 20)
    assert {**inside, **envs.disk_usage(tmp_path)}.keys() == envs.disk_usage(tmp_path).keys()


def test_list_reads_the_adapters_of_each_family_without_importing_a_framework():
    code = ("import sys; from bnspec.envs import adapters_by_family as a; found = a(); "
            "print(sorted(found['nobuco'])); print(sorted(set(sys.modules) & {'torch', 'tensorflow', 'jax', "
            "'onnx', 'keras', 'nobuco', 'onnx2torch', 'tf2onnx', 'jax2onnx', 'onnx2tf'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["['torch_nobuco']", "[]"]


# -- create, list, remove ----------------------------------------------------------------------

def _fake_built(tmp_path: Path, specs: Path, family: str = "tiny") -> Path:
    """An environment whose stamp says it was built from ``specs`` by this bnspec."""
    venv = tmp_path / "root" / family / ".venv"
    _big(venv / "bin" / "python", b"")
    how, source = envs.bnspec_source()
    digest = envs.load_spec(family, specs).digest()
    (venv / envs.STAMP).write_text(json.dumps({"family": family, "spec": digest, "bnspec": f"{how}:{source}"}))
    return venv


def test_an_unchanged_environment_is_skipped_and_a_changed_spec_is_stale(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    specs = _spec(tmp_path)
    venv = _fake_built(tmp_path, specs)
    os.utime(venv / envs.STAMP, (0, 0))
    lines: list[str] = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail(f"ran {a}"))  # nothing is run
    assert envs.create("tiny", root=tmp_path / "root", specs=specs, echo=lines.append) is False
    assert lines == [f"tiny: up to date ({venv})"]
    assert (venv / envs.STAMP).stat().st_mtime > time.time() - 60, "make's target is fresh again"
    assert envs.status("tiny", tmp_path / "root", specs) == "built"
    (specs / "tiny" / "requirements.txt").write_text("numpy==2.4.6\nclick==8.5.0\n")
    assert envs.status("tiny", tmp_path / "root", specs) == "stale"
    (venv / envs.STAMP).write_text("")  # the shell script's empty stamp
    assert envs.status("tiny", tmp_path / "root", specs) == "stale"
    (venv / envs.STAMP).unlink()
    assert envs.status("tiny", tmp_path / "root", specs) == "incomplete"
    assert envs.status("other", tmp_path / "root", specs) == "missing"


def _invoke(args: list[str], tmp_path: Path, specs: Path | None = None):  # type: ignore[no-untyped-def]
    env = {envs.ENVS_VAR: str(tmp_path / "root"), **({envs.SPECS_VAR: str(specs)} if specs else {})}
    return CliRunner().invoke(envs.cli, args, env=env)


def test_an_unknown_family_is_exit_2_and_one_line_naming_the_families(tmp_path: Path):
    for command in (["create", "nobuco", "nosuch"], ["list", "nosuch"], ["remove", "nosuch"]):
        result = _invoke(command, tmp_path)
        assert result.exit_code == 2, result.output
        assert result.output == (f"error: unknown environment family 'nosuch'; available: {', '.join(FAMILIES)}\n")
    assert not (tmp_path / "root").exists()


def test_a_family_whose_python_is_nowhere_is_exit_2_and_one_line(tmp_path: Path):
    specs = _spec(tmp_path, {"python-version": "2.99\n"})
    result = _invoke(["create", "tiny"], tmp_path, specs)
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: tiny needs Python 2.99"), result.output
    assert "pyenv install 2.99" in result.output


def test_remove_needs_a_name_and_deletes_only_that_environment(tmp_path: Path):
    specs = _spec(tmp_path)
    venv = _fake_built(tmp_path, specs)
    assert _invoke(["remove"], tmp_path, specs).exit_code == 2
    result = _invoke(["remove", "tiny"], tmp_path, specs)
    assert result.exit_code == 0 and result.output == f"tiny: removed {venv}\n"
    assert not venv.parent.exists() and (tmp_path / "root").is_dir()
    assert _invoke(["remove", "tiny"], tmp_path, specs).output == "tiny: not built\n"


def test_list_shows_status_place_size_and_adapters(tmp_path: Path):
    result = _invoke(["list", "--json", "nobuco"], tmp_path)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row == {"family": "nobuco", "path": str(tmp_path / "root" / "nobuco" / ".venv"), "status": "missing",
                   "size_bytes": 0, "python_version": None, "adapters": ["torch_nobuco"]}
    text = _invoke(["list"], tmp_path).output.splitlines()
    assert [ln.split()[:2] for ln in text[:-1]] == [[f, "missing"] for f in FAMILIES]
    assert text[-1].endswith("on disk in all (a file shared by environments counted once)")


# -- one real build --------------------------------------------------------------------------------

TINY_CHECK = "import bnspec.worker\nimport bnspec.adapters.reference\nprint('tiny env ok')\n"


def test_a_real_build_holds_the_callers_bnspec_and_a_worker_runs_in_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    """The installed-package way (a link to the package, not an editable install): the env
    imports the caller's bnspec, none of the caller's other packages, and runs a worker. (Not
    from the checkout's folder: ``python -m`` would find its bnspec/, which lacks the adapters.)"""
    monkeypatch.chdir(tmp_path)
    specs = _spec(tmp_path, {"requirements.txt": "numpy==2.4.6\nclick==8.5.0\n",
                             "requirements.lock.txt": "numpy==2.4.6\n", "check.py": TINY_CHECK})
    root = tmp_path / "root"
    lines: list[str] = []
    assert envs.create("tiny", root=root, specs=specs, mode="link", echo=lines.append) is True
    assert any(ln.startswith("tiny: check.py: tiny env ok") for ln in lines), lines
    assert lines[-1].startswith("tiny: ready in ")
    python = str(envs.env_python("tiny", root))
    code = "import bnspec, bnspec.worker, importlib.util as u; print(bnspec.__file__, u.find_spec('platformdirs'))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env={})
    where, platformdirs = out.stdout.split()
    assert Path(where).resolve() == ROOT / "bnspec" / "__init__.py" and platformdirs == "None"
    assert sorted(envs._norm(n) for n in envs.installed_distributions(root / "tiny" / ".venv")) == [
        "click", "numpy", "pip", "setuptools"]

    adapter = replace(load_adapter_ref(REFERENCE), python=python)
    adapter.ref = REFERENCE
    worker = Worker(adapter)
    try:
        x = np.arange(12.0).reshape(4, 3)
        result = worker.run(make_case([x], modes=["train"], eps=1e-5, momentum=0.1))
        assert worker.meta["python"] == sys.version.split()[0]
        assert result.steps[0].y.shape == (4, 3)
    finally:
        worker.close()

    t0 = time.monotonic()
    again: list[str] = []
    assert envs.create("tiny", root=root, specs=specs, mode="link", echo=again.append) is False
    assert again == [f"tiny: up to date ({root / 'tiny' / '.venv'})"] and time.monotonic() - t0 < 2

    (specs / "tiny" / "requirements.txt").write_text("numpy==2.4.6\nclick=8.5.0\n")  # not a requirement
    result = _invoke(["create", "tiny"], tmp_path, specs)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("error: tiny: pip install -r requirements.txt failed")
    assert "Traceback" not in result.output
