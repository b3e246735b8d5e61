"""``bnspec repro ID``: replay a stored minimal case against its adapter; and a repro program for
any adapter (``python_repro``): the case built with bnspec's API, run and judged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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


def python_repro(case: Case, adapter_ref: str, profile: str) -> str:
    """A Python program that builds ``case`` with bnspec's API (every value exact: float64 reprs
    of values the case's dtypes hold), runs the adapter loaded from ``adapter_ref`` on it and
    judges it against ``profile``: it prints the finding and exits with status 1 while the
    adapter does not conform (0 once it does), for an adapter that has no snippet of its own."""
    steps = case.steps
    lines = [
        "import numpy as np",
        "from bnspec.case import make_case",
        "from bnspec.discovery import load_adapter_ref",
        "from bnspec.judging import judge",
        "from bnspec.observe import observe",
        "from bnspec.profiles import resolve",
        "",
        'nan, inf = float("nan"), float("inf")',
        "xs = [",
        *(f"    {_array_src(s.x)}," for s in steps),
        "]",
    ]
    per_step = [f"modes={[s.mode for s in steps]!r}"]
    if any(s.frozen for s in steps):
        per_step.append(f"frozen={[s.frozen for s in steps]!r}")
    if case.needs_gradients:
        lines += ["dys = [", *(f"    {'None' if s.grad_output is None else _array_src(s.grad_output)},"
                               for s in steps), "]"]
        per_step.append("grad_outputs=dys")
    params = [f"{name}={'None' if (v := getattr(case, name)) is None else _array_src(v)}"
              for name in ("gamma", "beta", "running_mean", "running_var")]
    lines += [
        "case = make_case(",
        f"    xs, {', '.join(per_step)},",
        f"    {', '.join(params[:2])},",
        f"    {', '.join(params[2:])},",
        f"    eps={case.eps!r}, momentum={case.momentum!r}, dtype={case.dtype!r}, param_dtype={case.param_dtype!r},",
        f"    track_running_stats={case.track_running_stats!r}, layout={case.layout!r},"
        + (f" counter={counter!r}," if (counter := getattr(case, "counter", 0)) else ""),
        ")",
        f"adapter = load_adapter_ref({adapter_ref!r})",
        "obs = observe(adapter, case)",
        "if not obs.judgeable:",
        '    raise SystemExit(f"nothing to judge: {obs.failure or obs.unsupported}")',
        f"verdict = judge(case, resolve({profile!r}).semantics, obs)",
        f'print("conforms to {profile}" if verdict.ok else "does not conform to {profile}: " + verdict.note)',
        "raise SystemExit(0 if verdict.ok else 1)",
    ]
    return "\n".join(lines) + "\n"


def _array_src(a: np.ndarray) -> str:
    """``a`` as NumPy source that rebuilds it exactly (repr of each float64; nan and inf named)."""
    values = ", ".join(repr(float(v)) for v in np.asarray(a, dtype=np.float64).ravel())
    if a.ndim == 1:
        return f"np.array([{values}])"
    return f"np.array([{values}]).reshape{tuple(a.shape)!r}"
