"""Merging summaries from several machines or CI shards: every cell keeps its framework version
and device; two different results for the same (adapter, version, device) are conflicts, reported
and not silently overwritten.

Summaries of an older ``schema_version`` are read too: each is brought to the current shape
first (:func:`upgrade`), so the merged summary has one shape.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

from bnspec.errors import BnspecError
from bnspec.records import SCHEMA_VERSION, Explanation, KnobFlip

READS = (1, SCHEMA_VERSION)  # the schema versions merge reads


class MergeError(BnspecError):
    pass


def merge_summaries(loaded: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    if not loaded:
        raise MergeError("nothing to merge")
    loaded = [(path, _current(path, s)) for path, s in loaded]
    adapters: dict[tuple[str, str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str, str], Path] = {}
    conflicts: list[str] = []
    props: list[str] = []
    for path, s in loaded:
        for p in s.get("properties", []):
            if p not in props:
                props.append(p)
        for a in s["adapters"]:
            key = (a["name"], str(a.get("framework_version")), a.get("device", "cpu"))
            if key in adapters:
                if _results(adapters[key]["cells"]) != _results(a["cells"]):
                    conflicts.append(f"{a['name']} {key[1]} on {key[2]}: {origin[key]} and {path} disagree; "
                                     "kept the first")
                continue
            entry = dict(a)
            if sum(k[0] == a["name"] for k in adapters):  # same adapter, other version/device
                entry["name"] = f"{a['name']}@{key[1]}/{key[2]}"
            adapters[key] = entry
            origin[key] = path
    first = loaded[0][1]
    merged: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "bnspec_version": first.get("bnspec_version"),
        "seed": first.get("seed"), "examples": first.get("examples"), "baseline": first.get("baseline"),
        "properties": props, "adapters": sorted(adapters.values(), key=lambda a: a["name"]),
        "merged_from": [str(p) for p, _ in loaded], "conflicts": conflicts, "timing": {},
    }
    return merged, conflicts


def _results(cells: dict[str, Any]) -> dict[str, Any]:
    """The cells without where their cases came from: a cached result is the same result."""
    return {p: {k: v for k, v in c.items() if k != "cached"} for p, c in cells.items()}


def _current(path: Path, s: Any) -> dict[str, Any]:
    if not isinstance(s, dict) or s.get("schema_version") not in READS or "adapters" not in s:
        versions = " or ".join(map(str, READS))
        raise MergeError(f"{path} is not a bnspec summary (schema_version {versions} expected)")
    try:
        return upgrade(s)
    except (KeyError, TypeError, ValueError, SyntaxError) as exc:
        raise MergeError(f"{path} is not a readable version {s['schema_version']} summary: {exc!r}") from None


def upgrade(summary: dict[str, Any]) -> dict[str, Any]:
    """``summary`` in the current shape (a copy; the current shape is returned as it is).

    Version 1 carried each explanation alternative as a rendered string,
    ``"knob: <observed!r>, observed; <declared!r>, declared + ..."``; version 2 carries the
    flips themselves."""
    if summary["schema_version"] == SCHEMA_VERSION:
        return summary
    s = copy.deepcopy(summary)
    for a in s["adapters"]:
        for cell in a["cells"].values():
            if "explained_by" in cell:
                cell["explained_by"] = Explanation.union([_v1_explanation(cell["explained_by"])]).to_json()
        for nc in a["non_conformances"]:
            nc["explained_by"] = _v1_explanation(nc["explained_by"]).to_json()
    s["schema_version"] = SCHEMA_VERSION
    return s


_V1_FLIP = re.compile(r"(\w+): (.*?), observed; (.*?), declared(?: \+ |$)")


def _v1_explanation(rendered: list[str]) -> Explanation:
    """Version 1's rendered alternatives read back (only here: an old file holds nothing else)."""
    alternatives = []
    for text in rendered:
        if text == "unexplained":
            continue
        flips = [KnobFlip(m[1], ast.literal_eval(m[2]), ast.literal_eval(m[3])) for m in _V1_FLIP.finditer(text)]
        if not flips:
            raise ValueError(f"unreadable explanation {text!r}")
        alternatives.append(tuple(flips))
    return Explanation(tuple(alternatives))
