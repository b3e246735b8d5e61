"""Merging summaries from several machines or CI shards: every cell keeps its framework version
and device; two different results for the same (adapter, version, device) are conflicts, reported
and not silently overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnspec.errors import BnspecError
from bnspec.engine import SCHEMA_VERSION


class MergeError(BnspecError):
    pass


def merge_summaries(loaded: list[tuple[Path, dict[str, Any]]]) -> tuple[dict[str, Any], list[str]]:
    if not loaded:
        raise MergeError("nothing to merge")
    adapters: dict[tuple[str, str, str], dict[str, Any]] = {}
    origin: dict[tuple[str, str, str], Path] = {}
    conflicts: list[str] = []
    props: list[str] = []
    for path, s in loaded:
        if not isinstance(s, dict) or s.get("schema_version") != SCHEMA_VERSION or "adapters" not in s:
            raise MergeError(f"{path} is not a bnspec summary (schema_version {SCHEMA_VERSION} expected)")
        for p in s.get("properties", []):
            if p not in props:
                props.append(p)
        for a in s["adapters"]:
            key = (a["name"], str(a.get("framework_version")), a.get("device", "cpu"))
            if key in adapters:
                if adapters[key]["cells"] != a["cells"]:
                    conflicts.append(f"{a['name']} {key[1]} on {key[2]}: {origin[key]} and {path} disagree; kept the first")
                continue
            entry = dict(a)
            if sum(k[0] == a["name"] for k in adapters):  # same adapter, other version/device
                entry["name"] = f"{a['name']}@{key[1]}/{key[2]}"
            adapters[key] = entry
            origin[key] = path
    first = loaded[0][1]
    merged = {
        "schema_version": SCHEMA_VERSION, "bnspec_version": first.get("bnspec_version"),
        "seed": first.get("seed"), "examples": first.get("examples"), "baseline": first.get("baseline"),
        "properties": props, "adapters": sorted(adapters.values(), key=lambda a: a["name"]),
        "merged_from": [str(p) for p, _ in loaded], "conflicts": conflicts, "timing": {},
    }
    return merged, conflicts
