"""Converter environments: ``bnspec envs create|list|remove [FAMILY...]``.

A converter family whose pins fight the main environment (torch 2.14.1 + torchvision for onnx2torch,
TensorFlow 2.15 + Keras 2 for nobuco, ...) runs in a virtualenv of its own, ``<root>/FAMILY/.venv``
(:func:`envs_root` says where), built from the spec shipped in the package, ``bnspec/envspecs/FAMILY/``:

- ``requirements.txt``: every version pinned; ``requirements.lock.txt``: the measured transitive
  versions (a pip freeze of the environment the findings came from), installed as constraints;
- ``requirements.nodeps.txt``: distributions whose metadata names one the environment replaces
  (tf-keras asks for the full ``tensorflow``, tensorflow-cpu provides it), installed without deps;
- ``python-version``: the Python it needs (``X.Y``; absent: the caller's); ``seed``: a sibling
  environment it starts from as hard links (nobuco from torchvision: the same 5 GB torch build);
- ``check.py``: run in the built environment.

The environment holds bnspec itself, the caller's (the worker, ``python -m bnspec.worker
module:attr``, must import the same code), and nothing else its spec files do not name.
``BNSPEC_ENV_SPECS`` points at another folder of specs (the tests' tiny family).
"""

from __future__ import annotations

import filecmp
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from bnspec.envpaths import ENVS_VAR, STAMP, checkout, env_python, envs_root, venv_of
from bnspec.errors import BnspecError, UnknownName

SPECS_VAR = "BNSPEC_ENV_SPECS"
SPEC_FILES = ("requirements.txt", "requirements.lock.txt", "requirements.nodeps.txt", "check.py",
              "python-version", "seed")
ALWAYS_KEPT = frozenset({"bnspec", "pip", "setuptools", "wheel"})
LINK_DIR = "bnspec-link"  # <venv>/bnspec-link/bnspec -> the caller's installed package
DEDUPE_MIN_SIZE = 64 * 1024
Echo = Callable[[str], None]


class EnvError(BnspecError):
    """A converter environment cannot be built: ``exit_code`` 2 for what the user fixes before
    running again (a family name, a missing Python), 1 for a build that failed (pip, check.py)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- the specs -------------------------------------------------------------------------------------

def spec_root() -> Path:
    return Path(os.environ[SPECS_VAR]).absolute() if os.environ.get(SPECS_VAR) else Path(__file__).with_name("envspecs")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(text: str) -> set[str]:
    """The distribution names a requirements file names (normalized; options and comments aside)."""
    found = set()
    for line in text.splitlines():
        m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
        if m:
            found.add(_norm(m.group(1)))
    return found


@dataclass(frozen=True)
class EnvSpec:
    family: str
    directory: Path

    def path(self, name: str) -> Path | None:
        p = self.directory / name
        return p if p.is_file() else None

    def _value(self, name: str) -> str | None:
        p = self.path(name)
        return p.read_text().strip() or None if p is not None else None

    @property
    def python_version(self) -> str | None:
        return self._value("python-version")

    @property
    def seed(self) -> str | None:
        return self._value("seed")

    def names(self) -> set[str]:
        """What the environment may hold: every distribution its requirement files name."""
        files = sorted(self.directory.glob("requirements*.txt"))
        return set().union(*(requirement_names(p.read_text()) for p in files))

    def digest(self) -> str:
        h = hashlib.sha256()
        for name in SPEC_FILES:
            p = self.path(name)
            if p is not None:
                h.update(f"{name}\0{len(p.read_bytes())}\0".encode() + p.read_bytes())
        return h.hexdigest()


def families(specs: Path | None = None) -> list[str]:
    specs = spec_root() if specs is None else specs
    return sorted(p.parent.name for p in specs.glob("*/requirements.txt"))


def load_spec(family: str, specs: Path | None = None) -> EnvSpec:
    specs = spec_root() if specs is None else specs
    if not (specs / family / "requirements.txt").is_file():
        raise UnknownName("environment family", family, families(specs))
    return EnvSpec(family, specs / family)


def in_build_order(names: Iterable[str], specs: Path | None = None) -> list[str]:
    """``names`` with each family's seed first (torchvision before nobuco) when both are asked for."""
    wanted, done = list(dict.fromkeys(names)), []  # type: list[str], list[str]

    def visit(name: str) -> None:
        if name in done:
            return
        seed = load_spec(name, specs).seed
        if seed in wanted and seed != name:
            visit(seed)
        done.append(name)

    for name in wanted:
        visit(name)
    return done


# -- the adapters that use a family (read without importing a framework) --------------------------

def families_of(adapter: Any) -> list[str]:
    """The families an adapter runs in: its ``family`` and any ``*_family`` field (nobuco's helper
    runs in ``runner_family``, the Flax -> torch chain exports in ``source_family``)."""
    return [v for f in fields(adapter) if f.name == "family" or f.name.endswith("_family")
            if isinstance(v := getattr(adapter, f.name), str)]


def adapters_by_family() -> dict[str, list[str]]:
    import warnings

    from bnspec.discovery import discover

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken third-party adapter is `bnspec list`'s to report
        adapters = discover()
    found: dict[str, list[str]] = {}
    for name, adapter in adapters.items():
        for family in families_of(adapter):
            found.setdefault(family, []).append(name)
    return found


def missing_hint(adapter: Any) -> str | None:
    """What builds the environments an adapter needs and lacks: ``bnspec envs create FAMILY``."""
    missing = [f for f in families_of(adapter) if not env_python(f).exists()]
    return f"bnspec envs create {' '.join(missing)}" if missing else None


# -- the steps -------------------------------------------------------------------------------------

def _site_packages(venv: Path) -> Path | None:
    return next(iter(sorted(venv.glob("lib/python3*/site-packages"))), None)


def installed_distributions(venv: Path) -> list[str]:
    from importlib import metadata

    site = _site_packages(venv)
    if site is None:
        return []
    return sorted({d.metadata["Name"] for d in metadata.distributions(path=[str(site)]) if d.metadata["Name"]})


def prune_list(installed: Iterable[str], spec_names: set[str]) -> list[str]:
    """The installed distributions the spec does not name (a seed's extras, a dropped pin)."""
    keep = {_norm(n) for n in spec_names} | ALWAYS_KEPT
    return sorted(n for n in installed if _norm(n) not in keep)


def find_python(version: str | None) -> str | None:
    """An interpreter of Python ``version`` (X.Y): ``pythonX.Y`` on PATH, else pyenv's newest
    ``X.Y.*``; None where none runs. No version: the caller's (a venv's base interpreter)."""
    if version is None:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    installed = sorted(pyenv.glob(f"{version}.*/bin/python{version}"), reverse=True,
                       key=lambda p: [int(x) if x.isdigit() else -1 for x in p.parent.parent.name.split(".")])
    candidates = [shutil.which(f"python{version}"), *map(str, installed)]
    for c in candidates:
        if c and _python_version(c) == version:
            return c
    return None


def _python_version(python: str) -> str | None:
    try:  # a pyenv shim exists on PATH for every version and fails for one not selected
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _venv_version(venv: Path) -> str | None:
    try:
        cfg = dict(line.split("=", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if "=" in line)
    except OSError:
        return None
    return {k.strip(): v.strip() for k, v in cfg.items()}.get("version")


def _replace_text(path: Path, old: str, new: str) -> bool:
    """Replace ``old`` in a text file by writing a new file: the file may be a hard link shared
    with another environment, which must not change under it."""
    data = path.read_bytes()
    if b"\0" in data or old.encode() not in data:
        return False
    tmp = path.with_name(path.name + ".bnspec-tmp")
    tmp.write_bytes(data.replace(old.encode(), new.encode()))
    shutil.copymode(path, tmp)
    os.replace(tmp, path)
    return True


def seed_from(source: Path, venv: Path) -> None:
    """``cp -al``: ``venv`` as hard links to the built environment ``source``, its own path
    rewritten in its scripts and pyvenv.cfg. Installs replace files and never write into them,
    so the two stay independent; what the seed holds beyond the spec is pruned afterwards."""
    shutil.copytree(source, venv, symlinks=True, copy_function=os.link)
    (venv / STAMP).unlink(missing_ok=True)
    for f in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            _replace_text(f, str(source), str(venv))


def _files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    for top, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path) and st.st_size >= DEDUPE_MIN_SIZE:
                yield path, st


def dedupe(new: Path, others: Iterable[Path]) -> tuple[int, int]:
    """Hard-link the files of ``new`` that are byte-identical to files of ``others``; (files
    linked, bytes saved).

    The environments hold the same large wheels more than once (torch 2.14.1 with its CUDA
    libraries in torchvision and nobuco, TensorFlow 2.21 in the main one, tf2onnx and onnx2tf):
    about 20 GB in all, 12 GB once the copies are links; one CI machine ran out of space at the
    fourth. A file is linked only when its size, mode and every byte match (files of 64 KiB or
    more), so nothing changes what any environment imports; installs replace files rather than
    writing into them (pip removes and extracts, Python writes .pyc files by rename), so a link is
    never modified through one environment under another's feet."""
    new_abs = os.path.abspath(new)
    index: dict[tuple[str, int], list[tuple[str, os.stat_result]]] = {}
    for other in others:
        if other.is_dir() and os.path.abspath(other) != new_abs:
            for path, st in _files(other):
                index.setdefault((os.path.basename(path), st.st_size), []).append((path, st))
    linked = saved = 0
    for path, st in _files(new):
        for twin, ost in index.get((os.path.basename(path), st.st_size), ()):
            if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                break
            if (ost.st_dev, ost.st_mode) != (st.st_dev, st.st_mode) or not filecmp.cmp(path, twin, shallow=False):
                continue
            tmp = path + ".bnspec-link"
            try:
                os.link(twin, tmp)
                os.replace(tmp, path)
            except OSError:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
                continue
            linked += 1
            saved += st.st_size
            break
    return linked, saved


def disk_usage(root: Path) -> dict[tuple[int, int], int]:
    """Bytes on disk under ``root`` by (device, inode): a hard-linked file counts once however many
    names it has, here or (summing the union of several) across environments."""
    found: dict[tuple[int, int], int] = {}
    for top, dirs, names in os.walk(root):
        for name in dirs + names:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
    return found


def bnspec_source(mode: str | None = None) -> tuple[str, Path]:
    """How the environment gets the caller's bnspec: ``("editable", checkout)`` from a checkout
    (``pip install --no-deps -e``), else ``("link", package folder)``: a symlink to the installed
    package, which holds bnspec.adapters and bnspec.conformance, and nothing else of the caller's."""
    source = checkout()
    if (mode or ("editable" if source else "link")) == "editable":
        if source is None:
            raise EnvError("bnspec runs from an installed package, not a checkout: no editable install to make")
        return "editable", source
    return "link", Path(__file__).resolve().parent


def _link_bnspec(venv: Path, package: Path) -> None:
    import importlib.util

    link_dir = venv / LINK_DIR
    shutil.rmtree(link_dir, ignore_errors=True)
    link_dir.mkdir()
    subpackages = {}
    for sub in ("adapters", "conformance"):
        spec = importlib.util.find_spec(f"bnspec.{sub}")
        locations = list(spec.submodule_search_locations or ()) if spec else []
        subpackages[sub] = Path(locations[0]).resolve() if locations else package / sub
    if all(p == package / sub for sub, p in subpackages.items()):
        (link_dir / "bnspec").symlink_to(package, target_is_directory=True)
    else:  # a checkout maps adapters/ and conformance/ into the package (setuptools package-dir)
        (link_dir / "bnspec").mkdir()
        for entry in package.iterdir():
            if entry.name != "__pycache__" and entry.name not in subpackages:
                (link_dir / "bnspec" / entry.name).symlink_to(entry)
        for sub, p in subpackages.items():
            (link_dir / "bnspec" / sub).symlink_to(p, target_is_directory=True)
    site = _site_packages(venv)
    assert site is not None, venv
    (site / f"{LINK_DIR}.pth").write_text(f"{link_dir}\n")


# -- create, status ---------------------------------------------------------------------------------

def _stamp(venv: Path) -> dict[str, Any]:
    try:
        value = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


def create(family: str, *, root: Path | None = None, specs: Path | None = None, mode: str | None = None,
           echo: Echo = print) -> bool:
    """Build or resync ``family``'s environment; False where it was up to date (nothing done)."""
    spec = load_spec(family, specs)
    root = envs_root() if root is None else root
    venv = venv_of(family, root)
    how, source = bnspec_source(mode)
    wanted = {"family": family, "spec": spec.digest(), "bnspec": f"{how}:{source}"}
    python = venv / "bin" / "python"
    stamp = _stamp(venv)
    if python.exists() and all(stamp.get(k) == v for k, v in wanted.items()):
        os.utime(venv / STAMP)  # make's target: fresh again when a spec file was only touched
        echo(f"{family}: up to date ({venv})")
        return False
    t0 = time.monotonic()
    version = spec.python_version
    if python.exists() and version is not None and not (_venv_version(venv) or "").startswith(version + "."):
        echo(f"{family}: {venv} has Python {_venv_version(venv)}, the spec asks for {version}: recreating it")
        shutil.rmtree(venv)
    (venv / STAMP).unlink(missing_ok=True)
    seed = venv_of(spec.seed, root) if spec.seed else None
    if not python.exists() and seed is not None and _stamp(seed).get("family") == spec.seed:
        venv.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(venv, ignore_errors=True)
        seed_from(seed, venv)
        echo(f"{family}: seeded from {seed} (hard links)")
    if not python.exists():
        base = find_python(version)
        if base is None:
            raise EnvError(f"{family} needs Python {version}, and there is no python{version} on PATH nor "
                           f"under pyenv: install it (e.g. `pyenv install {version}`), then rerun "
                           f"`bnspec envs create {family}`")
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run(family, "venv", [base, "-m", "venv", str(venv)])
        echo(f"{family}: virtualenv {venv} (Python {_venv_version(venv)})")
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    _prune(family, venv, spec, echo)
    requirements, lock, nodeps = spec.path("requirements.txt"), spec.path("requirements.lock.txt"), spec.path(
        "requirements.nodeps.txt")
    _run(family, "pip install -r requirements.txt",
         [*pip, "-r", str(requirements), *(["-c", str(lock)] if lock else [])], spec=spec)
    echo(f"{family}: installed requirements.txt" + (" (constrained by requirements.lock.txt)" if lock else ""))
    if nodeps is not None:
        _run(family, "pip install --no-deps -r requirements.nodeps.txt", [*pip, "--no-deps", "-r", str(nodeps)],
             spec=spec)
        echo(f"{family}: installed requirements.nodeps.txt without dependencies")
    _install_bnspec(family, venv, how, source, pip, echo)
    _prune(family, venv, spec, echo)
    # the other environments, the caller's own, and a checkout's two
    others = [p / ".venv" for p in sorted(root.iterdir()) if p.name != family] if root.is_dir() else []
    others += [Path(sys.prefix), *((c / ".venv", c / ".venv-unit") if (c := checkout()) else ())]
    linked, saved = dedupe(venv, others)
    echo(f"{family}: {linked} files hard-linked to identical ones in other environments, {saved / 2**30:.2f} GiB saved")
    check = spec.path("check.py")
    if check is not None:
        out = _run(family, "check.py", [str(python), str(check)], env={ENVS_VAR: str(root)}, cwd=venv)
        echo(f"{family}: check.py: {(out.strip().splitlines() or ['ok'])[-1]}")
    stamp_tmp = venv / (STAMP + ".tmp")
    stamp_tmp.write_text(json.dumps({**wanted, "python": _venv_version(venv), "created": time.time()}) + "\n")
    os.replace(stamp_tmp, venv / STAMP)
    echo(f"{family}: ready in {time.monotonic() - t0:.0f} s ({venv})")
    return True


def _run(family: str, step: str, argv: list[str], *, spec: EnvSpec | None = None, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> str:
    """Run one step; its output passes through (pip's own error is the reason), check.py's is returned."""
    capture = step == "check.py"
    try:
        done = subprocess.run(argv, env=_clean_env(**(env or {})), cwd=cwd, text=True,
                              stdout=subprocess.PIPE if capture else None,
                              stderr=subprocess.STDOUT if capture else None)
    except OSError as exc:
        raise EnvError(f"{family}: {step} could not start ({exc})", 1) from None
    if done.returncode != 0:
        if capture:
            click.echo(done.stdout, err=True, nl=False)
        where = f"the pins in {spec.directory}, or the package index," if spec else "the message above"
        raise EnvError(f"{family}: {step} failed (exit {done.returncode}; its message is above): fix {where} "
                       f"then rerun `bnspec envs create {family}`", 1)
    return done.stdout or ""


def _prune(family: str, venv: Path, spec: EnvSpec, echo: Echo) -> None:
    extra = prune_list(installed_distributions(venv), spec.names())
    if extra:
        echo(f"{family}: removing what its spec does not name: {' '.join(extra)}")
        _run(family, "pip uninstall", [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "--quiet", "--yes",
                                       "--disable-pip-version-check", *extra])


def _editable_source(venv: Path) -> Path | None:
    """The checkout an editable bnspec in ``venv`` comes from (its direct_url.json)."""
    from importlib import metadata
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    site = _site_packages(venv)
    for dist in metadata.distributions(name="bnspec", path=[str(site)] if site else []):
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if url.get("dir_info", {}).get("editable") and str(url.get("url", "")).startswith("file:"):
            return Path(url2pathname(urlparse(url["url"]).path))
    return None


def _install_bnspec(family: str, venv: Path, how: str, source: Path, pip: list[str], echo: Echo) -> None:
    if how == "editable":
        site = _site_packages(venv)
        if site is not None:
            (site / f"{LINK_DIR}.pth").unlink(missing_ok=True)
        shutil.rmtree(venv / LINK_DIR, ignore_errors=True)
        if _editable_source(venv) == source:
            echo(f"{family}: bnspec already installed editable from {source}")
            return
        _run(family, "pip install -e (bnspec)", [*pip, "--no-deps", "-e", str(source)])
        echo(f"{family}: bnspec installed editable from {source}")
        return
    if "bnspec" in {_norm(n) for n in installed_distributions(venv)}:
        _run(family, "pip uninstall bnspec", [str(venv / "bin" / "python"), "-m", "pip", "uninstall", "--quiet",
                                              "--yes", "--disable-pip-version-check", "bnspec"])
    _link_bnspec(venv, source)
    echo(f"{family}: bnspec linked from {source}")


def status(family: str, root: Path | None = None, specs: Path | None = None) -> str:
    """built (as its spec says), stale (the spec or the caller's bnspec changed: ``create``
    resyncs it), incomplete (a build that did not finish) or missing."""
    venv = venv_of(family, root)
    if not (venv / "bin" / "python").exists():
        return "missing"
    stamp = _stamp(venv)
    if stamp.get("family") != family:  # an empty stamp: built by the shell script before bnspec.envs
        return "stale" if (venv / STAMP).is_file() else "incomplete"
    how, source = bnspec_source()
    fresh = stamp.get("spec") == load_spec(family, specs).digest() and stamp.get("bnspec") == f"{how}:{source}"
    return "built" if fresh else "stale"


def remove(family: str, root: Path | None = None) -> bool:
    venv = venv_of(family, root)
    if not venv.exists() and not venv.is_symlink():
        return False
    shutil.rmtree(venv)
    try:
        venv.parent.rmdir()  # the family's folder, where nothing else is in it
    except OSError:
        pass
    return True


# -- the command line --------------------------------------------------------------------------------

def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _chosen(names: tuple[str, ...]) -> list[str]:
    known = families()
    for n in names:
        if n not in known:
            raise UnknownName("environment family", n, known)
    return list(names) or known


def _guarded(body: Callable[[], None]) -> None:
    try:
        body()
    except EnvError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except BnspecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@click.group("envs")
def cli() -> None:
    """Converter environments: the virtualenvs of the conversion paths whose pins fight the main
    environment, built from the pinned specs shipped in bnspec. They live in $BNSPEC_ENVS; else, from
    a source checkout, its envs/; else in the user data folder. Exit 2: a name or a Python to fix;
    exit 1: a build failed (pip or the environment's check)."""


@cli.command("create")
@click.argument("family_names", metavar="[FAMILY]...", nargs=-1)
def create_cmd(family_names: tuple[str, ...]) -> None:
    """Build (or resync, where its spec changed) each FAMILY's environment; all without FAMILY.
    One that is up to date takes a second."""
    def body() -> None:
        for f in in_build_order(_chosen(family_names)):
            create(f, echo=click.echo)
    _guarded(body)


@cli.command("list")
@click.argument("family_names", metavar="[FAMILY]...", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(family_names: tuple[str, ...], as_json: bool) -> None:
    """Each family: built or not, where it lives, its size on disk (hard links once), its adapters."""
    def body() -> None:
        users = adapters_by_family()
        every: dict[tuple[int, int], int] = {}
        rows: list[dict[str, Any]] = []
        for f in _chosen(family_names):
            venv = venv_of(f)
            usage = disk_usage(venv) if venv.exists() else {}
            every.update(usage)
            rows.append({"family": f, "path": str(venv), "status": status(f), "size_bytes": sum(usage.values()),
                         "python_version": load_spec(f).python_version, "adapters": users.get(f, [])})
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return
        width, path_width = max(len(r["family"]) for r in rows), max(len(r["path"]) for r in rows)
        for r in rows:
            click.echo(f"{r['family']:<{width}}  {r['status']:<10} {_size(r['size_bytes']):>9}  "
                       f"{r['path']:<{path_width}}  {', '.join(r['adapters']) or '-'}")
        click.echo(f"{_size(sum(every.values()))} on disk in all (a file shared by environments counted once)")
    _guarded(body)


@cli.command("remove")
@click.argument("family_names", metavar="[FAMILY]...", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every family's environment.")
def remove_cmd(family_names: tuple[str, ...], everything: bool) -> None:
    """Delete each FAMILY's environment (``--all``: every one)."""
    def body() -> None:
        if not family_names and not everything:
            raise EnvError("name the families to remove (or --all); `bnspec envs list` shows them")
        for f in _chosen(family_names):
            click.echo(f"{f}: removed {venv_of(f)}" if remove(f) else f"{f}: not built")
    _guarded(body)


@cli.command("dedupe", hidden=True)
@click.argument("new", type=click.Path(path_type=Path))
@click.argument("others", nargs=-1, type=click.Path(path_type=Path))
def dedupe_cmd(new: Path, others: tuple[Path, ...]) -> None:
    """Hard-link NEW's files identical to files of OTHERS (the Makefile's main environment)."""
    linked, saved = dedupe(new, others)
    click.echo(f"{new}: {linked} files hard-linked to identical ones in other environments, "
               f"{saved / 2**30:.2f} GiB saved")


if __name__ == "__main__":
    cli(prog_name="bnspec envs")
