"""``bnspec diff FROM TO``: the porting guide between two profiles.

First the hyperparameter translation that makes the two agree as far as any setting can, then
every residual difference no setting removes, each measured on a typical case with the reference.
Each setting and each difference carries the citation of both sides' knob values (where each
profile says its framework decides it), so a porting decision can be checked at its source.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bnspec.case import make_case
from bnspec.errors import BnspecError
from bnspec.profiles import Profile, profile_source, resolve
from bnspec.reference import reference
from bnspec.semantics import ALL_KNOBS, REPLICA_KNOBS, SETTABLE_KNOBS, Semantics

_TYPICAL_STEPS = 10


def translate_momentum(value: float | None, src: str, dst: str) -> float | None:
    """A momentum hyperparameter in convention ``src`` expressed in convention ``dst``."""
    if value is None or src == dst:
        return value
    return round(1.0 - value, 12)


def _typical_case(steps: int) -> Any:
    rng = np.random.default_rng(0)
    xs = [rng.normal(1.0, 2.0, (8, 4)) for _ in range(steps)]
    train: list[Literal["train", "eval"]] = ["train"]
    modes = train * steps + ["eval"]
    return make_case(xs + [rng.normal(1.0, 2.0, (8, 4))], modes=modes,
                     momentum=0.1, eps=1e-5)


def measure(src: Semantics, knob: str, value: Any, steps: int = _TYPICAL_STEPS) -> dict[str, float]:
    """Largest relative change of each quantity when ``knob`` alone takes ``value`` (a replica
    knob: on bnspec.replicas.typical_case, an uneven split over 24 steps)."""
    if knob in REPLICA_KNOBS:
        from bnspec.replicas import typical_case

        case, steps = typical_case(), 24
    else:
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


@dataclass(frozen=True)
class Citation:
    """Where ``profile`` says its framework decides ``knob`` (its value is ``value``)."""

    profile: str
    knob: str
    value: Any
    source: str


@dataclass(frozen=True)
class Setting:
    """A hyperparameter to pass: ``knob`` at ``src_value`` in the source is ``dst_value`` in the
    target. ``src_detail``/``dst_detail``: the convention it is read in (the momentum's weights);
    ``impossible``: why no value of the target reproduces it, else ""."""

    knob: str
    src_value: Any
    dst_value: Any
    cites: tuple[Citation, ...]
    src_detail: str = ""
    dst_detail: str = ""
    target_default: Any = None
    impossible: str = ""


@dataclass(frozen=True)
class Residual:
    """A knob that differs and that no setting removes, measured on the typical case (empty
    ``sizes``: a numerics knob, which changes rounding only)."""

    knob: str
    src_value: Any
    dst_value: Any
    kind: str
    sizes: dict[str, float]
    cites: tuple[Citation, ...]


@dataclass(frozen=True)
class Guide:
    src: Profile
    dst: Profile
    settings: tuple[Setting, ...]
    state_names: tuple[tuple[str, str, str], ...]  # (state, its name in src, in dst); "-": none
    residuals: tuple[Residual, ...]


def _cites(knobs: tuple[str, ...], *profiles: Profile) -> tuple[Citation, ...]:
    # a replica knob a profile leaves at its default (a layer replicated as it is) has no citation
    none = "(not set: a plain layer replicated as it is)"
    return tuple(Citation(p.name, k, getattr(p.semantics, k), p.cite.get(k, none)) for p in profiles for k in knobs)


def guide(src_profile: str | Profile, dst_profile: str | Profile) -> Guide:
    """The porting guide from one profile (a name, or a Profile object) to another, as a record."""
    src, dst = resolve(src_profile), resolve(dst_profile)
    s, d = src.semantics, dst.semantics
    m = translate_momentum(s.momentum, s.momentum_weights, d.momentum_weights)
    settings = [Setting(
        "momentum", s.momentum, m, _cites(("momentum", "momentum_weights"), src, dst),
        src_detail=f"{s.momentum_weights}-weighted", dst_detail=f"{d.momentum_weights}-weighted",
        target_default=d.momentum,
        impossible="the target has no cumulative average" if s.momentum is None and d.momentum is not None
        else "")]
    floor = d.eps_floor is not None and s.eps < d.eps_floor
    settings.append(Setting(
        "eps", s.eps, s.eps, _cites(("eps", "eps_floor") if floor else ("eps",), src, dst),
        target_default=d.eps,
        impossible=f"{dst.name} raises eps to at least {d.eps_floor:g}" if floor else ""))
    names = sorted(set(src.state_names) | set(dst.state_names))
    state = tuple((k, src.state_names.get(k, "-"), dst.state_names.get(k, "-")) for k in names)
    residuals = []
    for k in ALL_KNOBS:  # the replica knobs too: what changes when the batch is split
        if k in SETTABLE_KNOBS or getattr(s, k) == getattr(d, k):
            continue
        kind = ALL_KNOBS[k].kind
        sizes = measure(s, k, getattr(d, k)) if kind == "semantics" else {}
        sizes = {lab: v for lab, v in sizes.items() if isinstance(v, float) and v == v}
        residuals.append(Residual(k, getattr(s, k), getattr(d, k), kind, sizes, _cites((k,), src, dst)))
    return Guide(src, dst, tuple(settings), state, tuple(residuals))


_WIDTH = 100


def _cite_lines(cites: tuple[Citation, ...], heading_knob: str, indent: str = "      ") -> list[str]:
    """One wrapped line per citation, ``pytorch: <source>``; a knob other than the one the entry
    is about is named first: ``pytorch: [momentum_weights] <source>``."""
    width = max(len(c.profile) for c in cites) + 2
    lines = []
    for c in cites:
        first = f"{indent}{c.profile + ':':<{width}}"
        text = c.source if c.knob == heading_knob else f"[{c.knob}] {c.source}"
        lines += textwrap.wrap(text, _WIDTH, initial_indent=first, subsequent_indent=" " * len(first),
                               break_long_words=False, break_on_hyphens=False) or [first]
    return lines


def _registered_by(profile: Profile) -> str | None:
    try:
        source = profile_source(profile.name)
    except BnspecError:
        return "carried by its adapter"
    return None if source.builtin else f"registered by {source}"


def render(g: Guide) -> str:
    """The guide as ``bnspec diff`` prints it."""
    src, dst = g.src.name, g.dst.name
    lines = [f"Porting BatchNorm from {src} ({g.src.title}) to {dst} ({g.dst.title})"]
    for p in (g.src, g.dst):
        where = _registered_by(p)
        if where:
            lines.append(f"  {p.name}: {where}")
    lines += ["(under each entry: where each side decides the knob, as its profile cites it)", "",
              "Settings (what to pass):"]
    for st in g.settings:
        if st.knob == "momentum":
            line = (f"  momentum: {src} {st.src_value!r} ({st.src_detail}) -> "
                    f"{dst} {st.dst_value!r} ({st.dst_detail})")
        else:
            line = f"  {st.knob}: pass {st.src_value:g} explicitly (the {dst} default is {st.target_default:g})"
        lines.append(line + (f"  [cannot match: {st.impossible}]" if st.impossible else ""))
        lines += _cite_lines(st.cites, st.knob)
    lines.append("  state names:")
    lines += [f"    {key}: {a} -> {b}" for key, a, b in g.state_names]
    lines += ["", "Differences no setting removes (size on a typical case: 8x4 float64, momentum 0.1):"]
    if not g.residuals:
        lines.append("  none: with the settings above the two agree exactly")
    for r in g.residuals:
        where = " on the typical uneven split (8, 5, 3), 24 steps" if r.knob in REPLICA_KNOBS else ""
        lines.append(f"  {r.knob}: {r.src_value!r} -> {r.dst_value!r}  ({r.kind}{where}; {ALL_KNOBS[r.knob].doc})")
        if r.sizes:
            lines.append("      relative change: " + ", ".join(f"{lab} {v:.3g}" for lab, v in r.sizes.items()))
        elif r.kind == "numerics":
            lines.append("      changes rounding only: see `bnspec run` large_offset / half_precision")
        lines += _cite_lines(r.cites, r.knob)
    return "\n".join(lines)


def porting_guide(src: str | Profile, dst: str | Profile) -> str:
    """``bnspec diff SRC DST``: the guide rendered for people."""
    return render(guide(src, dst))
