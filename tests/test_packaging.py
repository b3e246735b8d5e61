"""Packaging as users expect (issue 14): extras state ranges and never pin a framework exactly, the
project's own environment is pinned by the lock (the torch CPU wheel), one version source, a
LICENSE and a CHANGELOG."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import bnspec

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
FRAMEWORK_EXTRAS = ("torch", "tensorflow", "jax", "onnx")


def _name(spec: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", spec).group(0).lower()  # type: ignore[union-attr]


def test_framework_extras_are_ranges_with_a_lower_bound_and_no_exact_pin():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in FRAMEWORK_EXTRAS:
        for spec in extras[extra]:
            assert "==" not in spec, f"extra {extra!r} pins {spec!r}: it would replace an installed framework"
            assert ">=" in spec, f"extra {extra!r}: {spec!r} states no lowest supported release"


def test_the_lock_pins_every_framework_of_the_extras_and_torch_to_the_cpu_wheel():
    lines = [ln for ln in (ROOT / "requirements.lock.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    pins = dict(ln.split("==", 1) for ln in lines)
    pins = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in pins.items()}
    assert pins["torch"].endswith("+cpu"), pins["torch"]
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in FRAMEWORK_EXTRAS:
        for spec in extras[extra]:
            assert re.sub(r"[-_.]+", "-", _name(spec)) in pins, f"{spec!r} is not pinned by requirements.lock.txt"
    assert not any(k == "bnspec" for k in pins)


def test_one_version_source():
    assert "version" in PYPROJECT["project"]["dynamic"] and "version" not in PYPROJECT["project"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bnspec.__version__"}
    assert importlib.metadata.version("bnspec") == bnspec.__version__


def test_license_and_changelog():
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0" in text and "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()
