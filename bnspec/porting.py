"""``bnspec diff FROM TO``: the porting guide between two profiles.

First the hyperparameter translation that makes the two agree as far as any setting can, then
every residual difference no setting removes, each measured on a typical case with the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnspec.case import make_case
from bnspec.errors import BnspecError
from bnspec.profiles import get_profile
from bnspec.reference import reference
from bnspec.semantics import KNOBS, SETTABLE_KNOBS, Semantics

_TYPICAL_STEPS = 10


def translate_momentum(value: float | None, src: str, dst: str) -> float | None:
    """A momentum hyperparameter in convention ``src`` expressed in convention ``dst``."""
    if value is None or src == dst:
        return value
    return round(1.0 - value, 12)


def _typical_case(steps: int) -> Any:
    rng = np.random.default_rng(0)
    xs = [rng.normal(1.0, 2.0, (8, 4)) for _ in range(steps)]
    return make_case(xs + [rng.normal(1.0, 2.0, (8, 4))], modes=["train"] * steps + ["eval"],
                     momentum=0.1, eps=1e-5)


def measure(src: Semantics, knob: str, value: Any, steps: int = _TYPICAL_STEPS) -> dict[str, float]:
    """Largest relative change of each quantity when ``knob`` alone takes ``value``."""
    case = _typical_case(steps)
    changed = src.replace(**{knob: value})
    try:
        a, b = reference(case, src), reference(case, changed)
    except BnspecError as exc:
        return {"error": float("nan"), "note": str(exc)}  # type: ignore[dict-item]
    out = {}
    for label, idx, q in (("train y, step 1", 0, "y"), ("running var, step 1", 0, "running_var"),
                          (f"running var, step {steps}", steps - 1, "running_var"),
                          ("eval y", steps, "y")):
        x, y = getattr(a.steps[idx], q), getattr(b.steps[idx], q)
        if x is None or y is None:
            continue
        out[label] = float(np.max(np.abs(x - y) / np.maximum(np.abs(x), 1e-12)))
    return out


def porting_guide(src_name: str, dst_name: str) -> str:
    src, dst = get_profile(src_name), get_profile(dst_name)
    s, d = src.semantics, dst.semantics
    lines = [f"Porting BatchNorm from {src_name} ({src.title}) to {dst_name} ({dst.title})", ""]
    lines.append("Settings (what to pass):")
    m = translate_momentum(s.momentum, s.momentum_weights, d.momentum_weights)
    lines.append(f"  momentum: {src_name} {s.momentum!r} ({s.momentum_weights}-weighted) -> "
                 f"{dst_name} {m!r} ({d.momentum_weights}-weighted)"
                 + ("  [no equivalent: the target has no cumulative average]"
                    if s.momentum is None and d.momentum is not None else ""))
    eps_note = ""
    if d.eps_floor is not None and s.eps < d.eps_floor:
        eps_note = f"  [cannot match: {dst_name} raises eps to at least {d.eps_floor:g}]"
    lines.append(f"  eps: pass {s.eps:g} explicitly (the {dst_name} default is {d.eps:g}){eps_note}")
    names = sorted(set(src.state_names) | set(dst.state_names))
    for key in names:
        lines.append(f"  {key}: {src.state_names.get(key, '-')} -> {dst.state_names.get(key, '-')}")
    lines += ["", "Differences no setting removes (size on a typical case: 8x4 float64, momentum 0.1):"]
    residual = [k for k in KNOBS if k not in SETTABLE_KNOBS and getattr(s, k) != getattr(d, k)]
    if not residual:
        lines.append("  none: with the settings above the two agree exactly")
    for k in residual:
        kind = KNOBS[k].kind
        sizes = measure(s, k, getattr(d, k)) if kind == "semantics" else {}
        size = ", ".join(f"{lab} {v:.3g}" for lab, v in sizes.items() if isinstance(v, float) and v == v)
        lines.append(f"  {k}: {getattr(s, k)!r} -> {getattr(d, k)!r}  ({kind}; {KNOBS[k].doc})")
        if size:
            lines.append(f"      relative change: {size}")
        elif kind == "numerics":
            lines.append("      changes rounding only: see `bnspec run` large_offset / half_precision")
    return "\n".join(lines)
