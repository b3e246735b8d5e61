"""``bnspec repro ID``: replay a stored minimal case against its adapter."""

from __future__ import annotations

import json
from pathlib import Path

from bnspec.attribution import explain
from bnspec.case import Case
from bnspec.errors import BnspecError
from bnspec.judging import judge
from bnspec.observe import observe
from bnspec.reports import explanation_text


class ReproError(BnspecError):
    pass


def replay(case_id: str, directory: Path) -> tuple[int, str]:
    matches = sorted((directory / "cases").glob(f"{case_id}*.json")) if (directory / "cases").is_dir() else []
    if not matches:
        raise ReproError(f"no stored case {case_id!r} in {directory}/cases (run `bnspec run --out {directory}` first)")
    data = json.loads(matches[0].read_text(encoding="utf-8"))
    from bnspec.discovery import discover, load_adapter_ref
    from bnspec.worker import Worker

    try:
        adapter = load_adapter_ref(data["adapter_ref"])
    except BnspecError:
        adapter = discover([data["adapter"]])[data["adapter"]]
    case = Case.from_dict(data["case"])
    worker = Worker(adapter)
    try:
        obs = observe(worker, case)
    finally:
        worker.close()
    if obs.failure is not None:
        return 1, f"{adapter.name}: {obs.failure}"
    if obs.unsupported is not None:
        raise ReproError(f"{adapter.name} cannot express case {case_id!r}: {obs.unsupported}")
    declared = adapter.declared_profile()
    sem = declared.semantics
    verdict = judge(case, sem, obs)
    lines = [f"case {case_id} ({case.label}) on {adapter.name}, declared profile {declared.name}:",
             "conforms" if verdict.ok else f"does not conform: {verdict.note}"]
    if not verdict.ok:
        lines.append("explained by: " + explanation_text(explain(case, sem, obs)))
    lines += ["", "# reproduce with the framework's own API:", adapter.snippet(case)]
    return (0 if verdict.ok else 1), "\n".join(lines)
