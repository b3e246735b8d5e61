"""Test-session settings shared by every test file, and the test tiers.

The tiers are markers (registered in pyproject.toml), the Hypothesis project's way:

- ``framework``: needs a real framework (FRAMEWORKS below), in this process or in an adapter's
  worker;
- ``converter``: needs a converter environment (envs/*/.venv); such a test is ``framework`` too;
- ``browser``: needs Chromium (the HTML report opened in a real headless browser);
- ``slow``: takes over ~20 s.

``make unit`` runs ``-m "not framework and not converter and not browser"`` in a virtualenv that
holds no framework; ``make test`` runs everything.

A test gets its tier without anyone having to remember it:

- a module's ``pytestmark``, read from its source before it is imported;
- a module whose top level imports a framework (``import``, ``importorskip``, ``find_spec``) is
  ``framework`` as a whole;
- a test is ``framework`` (and ``converter``) when it, its decorators, or the module's constants,
  helpers and fixtures it names import a framework or name an adapter (``bnspec.adapters.x:Y``),
  or when one of its parameters ranges over adapters (names or references): the adapter says
  which (its framework, its own environment);
- what the code cannot show (a browser, a duration) is listed in MARKS.

A run whose ``-m`` deselects every ``framework`` test is framework-free, and checks that it is:

- a module it deselects as a whole is not imported (a module-level importorskip would skip);
- importing a framework in this process raises FrameworkImported, which is not an ImportError, so
  importorskip does not turn it into a skip;
- a skip is a failure: a test that cannot run without a framework is deselected by its marker,
  never skipped.

Any run lists, at its end, the tests that took over SLOW_SECONDS without the ``slow`` marker.

No test reads or writes the user's result cache (bnspec.cache): the session points
``BNSPEC_CACHE_DIR`` at a temporary folder, and each test gets an empty one of its own, so that a
test's runs compute what it tests whatever ran before it.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import importlib.abc
import importlib.machinery
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis.internal.conjecture import providers

# Hypothesis (>= 6.131) mixes literals found in the *local modules loaded so far* into its draws
# (providers._get_local_constants scans sys.modules). Which bnspec modules are loaded depends on
# which test files ran first in the worker, so derandomized tests drew different cases, and
# shrank to different counterexamples, depending on test order (test_strategies' `find` of a
# biased running variance shrank to 3 steps of (2, 4) after six other test files, and to the
# expected step or two of (2, 1) alone). The tests pin that pool to empty: a test's draws
# depend on its strategy and its seed only.
if hasattr(providers, "_get_local_constants"):
    _EMPTY = providers.Constants()
    providers._get_local_constants = lambda: _EMPTY

TIERS = ("framework", "converter", "browser", "slow")
# Top-level import names of the frameworks and converters bnspec's adapters drive.
FRAMEWORKS = frozenset({
    "torch", "torchvision", "tensorflow", "tf_keras", "keras", "jax", "jaxlib", "flax", "haiku", "equinox",
    "onnx", "onnxruntime", "onnxscript", "onnx2torch", "onnx2tf", "tf2onnx", "jax2onnx", "nobuco",
})
# An adapter of one of these "frameworks" runs bnspec's own arithmetic (the reference, test fixtures).
FRAMEWORK_FREE = frozenset({"bnspec", "numpy"})
SLOW_SECONDS = 20.0
# Marks the code cannot show, by node id (parameters aside; fnmatch patterns).
MARKS: dict[str, tuple[str, ...]] = {
    "tests/test_report_browser.py::test_html_*": ("browser",),
    "tests/test_robustness.py::test_each_fault_costs_only_its_own_cells_and_is_reported_as_what_it_is": ("slow",),
    "tests/test_converters.py::test_flax_to_torch_chain_*": ("slow",),
    # every probe through a real framework's worker: 20-120 s each on 2 cores
    "tests/test_fingerprint.py::test_real_adapter_fingerprint_agrees_with_its_profile*": ("slow",),
    "tests/test_robustness.py::test_a_run_killed_with_sigkill_*": ("slow",),
    # the real engine over four replicas_* properties, attribution included: ~20 s each
    "tests/test_replica_wrong_implementations.py::*": ("slow",),
    "tests/test_fingerprint_replicas.py::test_a_real_engine_*": ("slow",),
}
_IMPORTERS = frozenset({"importorskip", "find_spec", "import_module", "__import__"})
_REF = re.compile(r"bnspec\.adapters\.[\w.]+:\w+")


class FrameworkImported(Exception):  # noqa: N818 - named for what happened, like ImportError
    """A framework was imported in a framework-free run."""


# -- what a test module's source names, read without importing it --------------------------


def _top(module: str) -> str:
    return module.partition(".")[0]


def _callee(func: ast.expr) -> str | None:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _imports_framework(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Import) and any(_top(a.name) in FRAMEWORKS for a in n.names):
            return True
        if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module and _top(n.module) in FRAMEWORKS:
            return True
        if isinstance(n, ast.Call) and _callee(n.func) in _IMPORTERS and any(
                isinstance(a, ast.Constant) and isinstance(a.value, str) and _top(a.value) in FRAMEWORKS
                for a in n.args):
            return True
    return False


def _marks_named(node: ast.AST | None) -> set[str]:
    """The NAME of every ``pytest.mark.NAME`` in an expression."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "mark"} if node is not None else set()


class _Source:
    def __init__(self, path: Path) -> None:
        self.defs: dict[str, ast.AST | None] = {}  # module-level name: its def, or the value assigned
        self.marks: set[str] = set()  # the whole module's tiers
        try:
            tree = ast.parse(path.read_text(), str(path))
        except (OSError, SyntaxError, ValueError):
            return  # pytest reports it when it imports the module
        for stmt in tree.body:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.defs[stmt.name] = stmt
                continue
            if isinstance(stmt, ast.Assign | ast.AnnAssign):
                for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    if isinstance(target, ast.Name):
                        self.defs[target.id] = stmt.value
                        if target.id == "pytestmark":
                            self.marks |= _marks_named(stmt.value) & set(TIERS)
            if _imports_framework(stmt):
                self.marks.add("framework")

    def named_by(self, name: str) -> tuple[set[str], bool]:
        """The strings that ``name`` (a test function) and every module-level name it uses, in
        turn, contain; and whether any of them imports a framework."""
        strings: set[str] = set()
        imports = False
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen or self.defs.get(current) is None:
                continue
            seen.add(current)
            node = self.defs[current]
            assert node is not None
            imports = imports or _imports_framework(node)
            for n in ast.walk(node):
                if isinstance(n, ast.Constant) and isinstance(n.value, str):
                    strings.add(n.value)
                elif isinstance(n, ast.Name):
                    todo.append(n.id)
                elif isinstance(n, ast.arg):  # a fixture defined in the module
                    todo.append(n.arg)
        return strings, imports


@functools.cache
def _source(path: Path) -> _Source:
    return _Source(path)


@functools.cache
def _adapter_names() -> frozenset[str]:
    from bnspec.discovery import adapter_names

    return frozenset(adapter_names())


@functools.cache
def _adapter_tiers(name_or_ref: str) -> frozenset[str]:
    """What running this adapter needs: a real framework, a converter environment of its own."""
    from bnspec.discovery import discover, load_adapter_ref

    try:
        adapter = load_adapter_ref(name_or_ref) if ":" in name_or_ref else discover([name_or_ref])[name_or_ref]
    except Exception:  # noqa: BLE001 - an adapter that does not load fails the test that runs it
        return frozenset()
    tiers = set()
    if adapter.framework not in FRAMEWORK_FREE or adapter.extra_frameworks:
        tiers.add("framework")
    if adapter.python is not None or getattr(adapter, "family", None) is not None:
        tiers |= {"framework", "converter"}
    return frozenset(tiers)


def _adapter_arguments(items: list[pytest.Item]) -> dict[tuple[Path, str], set[str]]:
    """Per test function, the parameters that range over adapters: every value an adapter's
    reference, or the name of an installed one (a profile's name alone is not: several are
    adapters' names too, and a test of every profile's arithmetic needs no framework)."""
    values: dict[tuple[Path, str], dict[str, list[object]]] = {}
    for item in items:
        for arg, value in getattr(getattr(item, "callspec", None), "params", {}).items():
            key = (item.path, getattr(item, "originalname", item.name))
            values.setdefault(key, {}).setdefault(arg, []).append(value)
    return {key: {arg for arg, vs in args.items()
                  if all(isinstance(v, str) and (_REF.fullmatch(v) or v in _adapter_names()) for v in vs)}
            for key, args in values.items()}


def _tiers_of(item: pytest.Item, adapter_arguments: set[str]) -> set[str]:
    source = _source(item.path)
    tiers = set(source.marks)
    strings, imports = source.named_by(getattr(item, "originalname", item.name))
    if imports:
        tiers.add("framework")
    params = getattr(getattr(item, "callspec", None), "params", {})
    for adapter in {s for s in strings if _REF.fullmatch(s)} | {params[a] for a in adapter_arguments}:
        tiers |= _adapter_tiers(adapter)
    node = item.nodeid.partition("[")[0]
    for pattern, marks in MARKS.items():
        if fnmatch.fnmatchcase(node, pattern):
            tiers |= set(marks)
    if "converter" in tiers:
        tiers.add("framework")
    return tiers


# -- which tiers a run selects ---------------------------------------------------------------


def _expression(config: pytest.Config):  # -> Expression | None
    from _pytest.mark.expression import Expression

    text = config.getoption("markexpr", "")
    return Expression.compile(text) if text else None


def _deselected(expression, marks: set[str]) -> bool:
    """Does ``-m`` deselect every test that carries ``marks``, whatever other tier it has?"""
    if expression is None:
        return False
    others = [t for t in TIERS if t not in marks]
    for k in range(len(others) + 1):
        for extra in itertools.combinations(others, k):
            if expression.evaluate(lambda name, /, have=marks | set(extra), **kwargs: name in have):
                return False
    return True


_FRAMEWORK_FREE = pytest.StashKey[bool]()
_SESSION_CACHE = pytest.StashKey[str]()


def _framework_free(config: pytest.Config) -> bool:
    return config.stash.get(_FRAMEWORK_FREE, False)


class _FrameworkImportGuard(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds a framework where it is installed, and fails when it is loaded: import, importorskip
    and find_spec see the truth about what is installed, and an import is an error."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if _top(name) not in FRAMEWORKS:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    return importlib.machinery.ModuleSpec(name, self, origin=spec.origin)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        return None

    def exec_module(self, module: ModuleType) -> None:
        raise FrameworkImported(
            f"{module.__name__} imported in a framework-free run: mark the test `framework` (a module-level "
            f"`pytestmark = pytest.mark.framework`, or see tests/conftest.py) so that this run deselects it")


_GUARD = _FrameworkImportGuard()


def pytest_configure(config: pytest.Config) -> None:
    import os
    import tempfile

    os.environ["BNSPEC_CACHE_DIR"] = config.stash[_SESSION_CACHE] = tempfile.mkdtemp(prefix="bnspec-test-cache-")
    config.stash[_FRAMEWORK_FREE] = free = _deselected(_expression(config), {"framework"})
    if free and _GUARD not in sys.meta_path:
        sys.meta_path.insert(0, _GUARD)


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    if _SESSION_CACHE in config.stash:
        shutil.rmtree(config.stash[_SESSION_CACHE], ignore_errors=True)
    if _GUARD in sys.meta_path:
        sys.meta_path.remove(_GUARD)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and collection_path.name.startswith("test_"):
        marks = _source(collection_path).marks
        if marks and _deselected(_expression(config), marks):
            return True
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselects by the marks added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    adapter_arguments = _adapter_arguments(items)
    for item in items:
        have = {m.name for m in item.iter_markers()}
        key = (item.path, getattr(item, "originalname", item.name))
        for tier in sorted(_tiers_of(item, adapter_arguments.get(key, set())) - have):
            item.add_marker(tier)


def _skip_as_failure(report, where: str):  # type: ignore[no-untyped-def]
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
    report.outcome = "failed"
    report.longrepr = (f"{where} skipped in a framework-free run ({reason}): a test that needs a framework, a "
                       "converter environment or a browser carries its marker, so that this run deselects it "
                       "instead (tests/conftest.py says how tiers are given)")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):  # type: ignore[no-untyped-def]
    report = yield
    if report.skipped and not hasattr(report, "wasxfail") and _framework_free(item.config):
        return _skip_as_failure(report, item.nodeid)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    report = yield
    if report.skipped and _framework_free(collector.config):
        return _skip_as_failure(report, collector.nodeid)
    return report


@pytest.fixture(autouse=True)
def _own_result_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNSPEC_CACHE_DIR", str(tmp_path_factory.mktemp("bnspec-cache")))


@pytest.fixture(scope="module", autouse=True)
def _module_result_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A module-scoped fixture (a run shared by a module's tests) starts before any test's own
    cache: it gets an empty one of the module's, not the session's, which other modules' runs fill
    (test_report_browser's matrix read ↺ marks in CI, where the order of modules differed)."""
    import os

    before = os.environ.get("BNSPEC_CACHE_DIR")
    os.environ["BNSPEC_CACHE_DIR"] = str(tmp_path_factory.mktemp("bnspec-module-cache"))
    yield
    if before is None:
        os.environ.pop("BNSPEC_CACHE_DIR", None)
    else:
        os.environ["BNSPEC_CACHE_DIR"] = before


_SLOW_UNMARKED: list[tuple[float, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.duration > SLOW_SECONDS and "slow" not in report.keywords:
        _SLOW_UNMARKED.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    expression = _expression(config)
    asked = [Path(config.invocation_params.dir, a.partition("::")[0]).resolve() for a in config.args]
    whole = sorted(p.name for p in Path(config.rootpath, "tests").glob("test_*.py")
                   if any(p.resolve() == a or a in p.resolve().parents for a in asked)
                   and _source(p).marks and _deselected(expression, _source(p).marks))
    if whole:
        terminalreporter.write_line(f"not collected (deselected as a whole by -m): {', '.join(whole)}")
    for seconds, nodeid in sorted(_SLOW_UNMARKED, reverse=True):
        terminalreporter.write_line(f"over {SLOW_SECONDS:.0f} s without the `slow` marker ({seconds:.0f} s): "
                                    f"{nodeid} (add it to MARKS in tests/conftest.py)")
