"""Imports point down the layers of ARCHITECTURE.md; an upward import fails here.

Every ``bnspec`` module (the mapped ``bnspec.adapters`` and ``bnspec.conformance`` too) has a
layer; a module may import its own layer and the ones below, never one above, including the
imports written inside functions (the lazy ones that keep framework imports out of start-up).
A module missing from the table fails too: a new module says where it belongs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"bnspec": ROOT / "bnspec", "bnspec.adapters": ROOT / "adapters",
           "bnspec.conformance": ROOT / "conformance"}

LAYERS: dict[str, int] = {
    # 1. the vocabulary
    "bnspec.errors": 1, "bnspec.dtypes": 1, "bnspec.semantics": 1, "bnspec.case": 1,
    "bnspec.records": 1, "bnspec.exact": 1, "bnspec.envpaths": 1,
    # 2. the plan; profiles; numerics kernels; the adapter protocol
    "bnspec.plan": 2, "bnspec.kernel": 2, "bnspec.adapter": 2, "bnspec.profiles": 2,
    # 3. arithmetic on the plan; the case generators; discovery
    "bnspec.reference": 3, "bnspec.oracle": 3, "bnspec.bounds": 3, "bnspec.tolerance": 3,
    "bnspec.properties": 3, "bnspec.replicas": 3, "bnspec.discovery": 3, "bnspec.probes": 3, "bnspec.accuracy": 3,
    # 4. judging and explanation; workers; the known-divergence registry; the result cache; diff
    "bnspec.judging": 4, "bnspec.attribution": 4, "bnspec.worker": 4, "bnspec.observe": 4,
    "bnspec.known": 4, "bnspec.porting": 4, "bnspec.cache": 4,
    # 5. the engine, fingerprints, shrinking
    "bnspec.engine": 5, "bnspec.summary": 5, "bnspec.running": 5, "bnspec.fingerprint": 5,
    "bnspec.shrink": 5,
    # 6. reports, the CLI and the pytest plugin (and the package's re-exports)
    "bnspec": 6, "bnspec.reports": 6, "bnspec.data_parallel": 6, "bnspec.merge": 6, "bnspec.repro": 6, "bnspec.cli": 6,
    "bnspec.__main__": 6, "bnspec.conformance": 6, "bnspec.envs": 6,
    # 7. the implementations: nothing in bnspec imports an adapter (discovery loads them by name)
    "bnspec.adapters": 7,
    # the converter environments' check scripts (package data, run in those environments) import them
    "bnspec.envspecs": 7,
}
# what a module of the package root re-exports is imported from where it is defined
PACKAGE_NAMES_FROM = {"__version__": "bnspec.errors"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


# packages whose modules all share the package's layer (anything else needs its own entry)
WHOLE_PACKAGES = ("bnspec.profiles", "bnspec.adapters", "bnspec.conformance", "bnspec.envspecs")


def layer_of(module: str) -> int | None:
    """The layer of a module: its own entry, or that of the whole package it is in."""
    if module in LAYERS:
        return LAYERS[module]
    package = next((p for p in WHOLE_PACKAGES if module.startswith(p + ".")), None)
    return None if package is None else LAYERS[package]


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "bnspec"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base.split(".")[0] != "bnspec":
                continue
            for alias in node.names:
                target = f"{base}.{alias.name}"
                if target in known:
                    out.append((node.lineno, target))  # a submodule
                elif base == "bnspec" and alias.name in PACKAGE_NAMES_FROM:
                    out.append((node.lineno, PACKAGE_NAMES_FROM[alias.name]))
                else:
                    out.append((node.lineno, base))
    return out


def upward_imports(modules: dict[str, Path]) -> list[str]:
    known = set(modules)
    problems = []
    for module, path in sorted(modules.items()):
        here = layer_of(module)
        for line, target in _imports(module, path, known):
            there = layer_of(target)
            if here is not None and there is not None and there > here:
                where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                problems.append(f"{where}:{line}: {module} (layer {here}) imports {target} (layer {there})")
    return problems


def test_every_module_has_a_layer():
    missing = sorted(m for m in _modules() if layer_of(m) is None)
    assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_imports_point_down_the_layers():
    problems = upward_imports(_modules())
    assert not problems, "upward imports:\n" + "\n".join(problems)


def test_an_upward_import_is_caught(tmp_path: Path):
    """A lazy import of the engine from the plan: the kind of shortcut the layers forbid."""
    bad = tmp_path / "plan.py"
    bad.write_text("def f():\n    from bnspec.engine import run\n")
    modules = {**_modules(), "bnspec.plan": bad}
    problems = [p for p in upward_imports(modules) if "bnspec.plan (" in p]
    assert problems == ["plan.py:2: bnspec.plan (layer 2) imports bnspec.engine (layer 5)"]


@pytest.mark.parametrize("module", ["bnspec.semantics", "bnspec.plan", "bnspec.reference", "bnspec.oracle"])
def test_core_arithmetic_imports_no_framework(module: str):
    path = _modules()[module]
    tree = ast.parse(path.read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    roots |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not roots & {"torch", "tensorflow", "jax", "keras", "flax", "onnx", "onnxruntime"}
