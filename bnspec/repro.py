"""``bnspec repro ID``: replay a stored minimal case against its adapter."""

from __future__ import annotations

import json
from pathlib import Path

from bnspec.attribution import Observation, explain, format_explanation, judge
from bnspec.case import Case
from bnspec.errors import AdapterFailure, BnspecError, FrameworkError, SingleValueError
from bnspec.profiles import get_semantics


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
    obs = Observation()
    try:
        obs.result = worker.run(case)
    except (FrameworkError, SingleValueError) as exc:
        obs.raised = str(exc)
    except AdapterFailure as exc:
        return 1, f"{adapter.name}: {exc}"
    finally:
        worker.close()
    sem = get_semantics(adapter.profile)
    verdict = judge(case, sem, obs)
    lines = [f"case {case_id} ({case.label}) on {adapter.name}, declared profile {adapter.profile}:",
             "conforms" if verdict.ok else f"does not conform: {verdict.note}"]
    if not verdict.ok:
        lines.append("explained by: " + format_explanation(explain(case, sem, obs)))
    lines += ["", "# reproduce with the framework's own API:", adapter.snippet(case)]
    return (0 if verdict.ok else 1), "\n".join(lines)
