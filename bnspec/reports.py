"""Report writers: they read the summary (and results records) only, and write atomically.

summary.json (versioned, schema in bnspec/schema/summary.schema.json), report.md (a GitHub PR
comment), junit.xml (one test case per adapter x property), report.html (self-contained: the
matrix, every adapter's knob table side by side, and plots).
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from bnspec.records import Alternative, Explanation, Status, atomic_write
from bnspec.semantics import KNOBS

MARK = {Status.CONFORMS: "✓", Status.NOT_APPLICABLE: "n/a", Status.FAILURE: "⚠"}
UNEXPLAINED = "unexplained"
CACHED = "↺"  # a cell whose cases were read from the result cache


def deterministic(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_all(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "summary.json", deterministic(summary))
    atomic_write(out / "report.md", markdown(summary))
    atomic_write(out / "junit.xml", junit(summary))
    atomic_write(out / "report.html", html(summary))


def alternative_text(alt: Alternative, observed_word: str = "observed", base_word: str = "declared") -> str:
    """One alternative of an explanation, for people: ``knob: 'value', observed; 'value', declared``."""
    return " + ".join(f"{f.knob}: {f.observed!r}, {observed_word}; {f.declared!r}, {base_word}" for f in alt)


def explanation_text(explanation: Explanation, observed_word: str = "observed", base_word: str = "declared",
                     sep: str = " | ") -> str:
    """An explanation for people: its alternatives, or "unexplained"."""
    return sep.join(alternative_text(alt, observed_word, base_word) for alt in explanation) or UNEXPLAINED


def _explanation(entry: dict[str, Any]) -> Explanation:
    """The explanation a summary cell or non-conformance carries."""
    return Explanation.from_json(entry.get("explained_by", []))


def _alternatives_text(entry: dict[str, Any]) -> Iterable[str]:
    return [alternative_text(alt) for alt in _explanation(entry)]


def finding_explanation(nc: dict[str, Any]) -> str:
    """A non-conformance's explanation for people; where no flip explains it, the residual's
    closest lead (the residual itself, quantity, step and size in u, is its detail)."""
    margins = nc.get("margins", [])
    texts = [t + _margin_text(margins[i] if i < len(margins) else None) for i, t in enumerate(_alternatives_text(nc))]
    if texts:
        return "; ".join(texts)
    lead = Explanation.from_json(nc.get("closest", []))
    if not lead.knobs:
        return UNEXPLAINED
    ratio = nc.get("closest_ratio")
    times = f", still {float(ratio):,.3g} times its bound" if ratio is not None else ""
    return f"{UNEXPLAINED} (closest single flip: {explanation_text(lead)}{times})"


def _margin_text(m: list[Any] | None) -> str:
    """An explanation's margin: the share of its bound the observation uses, and how far its
    nearest placebo lies outside it."""
    if not m:
        return ""
    fit, placebo = m
    parts = []
    if fit is not None:
        parts.append(f"uses {float(fit):.2g} of its bound")
    if placebo is not None:
        parts.append(f"nearest placebo {float(placebo):,.3g}× its bound")
    return f" ({'; '.join(parts)})" if parts else ""


def cell_text(cell: dict[str, Any]) -> str:
    status = Status(cell["status"])
    if status in (Status.MISMATCH, Status.KNOWN):
        knobs = _explanation(cell).knobs or (UNEXPLAINED,)
        return ("✗ " if status == Status.MISMATCH else "◇ known: ") + ", ".join(knobs)
    text = MARK.get(status, status.value)
    if status == Status.CONFORMS and cell.get("baseline_knobs"):
        text += " ≠ " + ", ".join(cell["baseline_knobs"])
    return text


def cached_mark(cell: dict[str, Any] | None, cases: int | None) -> str:
    """``↺`` on a cell whose ``cases`` cases all came from the result cache, ``↺k/n`` where k of
    n did."""
    n = int((cell or {}).get("cached", 0))
    if not n:
        return ""
    return f" {CACHED}" if cases is None or n >= cases else f" {CACHED}{n}/{cases}"


def cached_text(summary: dict[str, Any]) -> str:
    """The sentence that says how many cases came from the result cache, per adapter ("" where
    none did). A cell holds ``examples`` cases."""
    examples = summary.get("examples") or 0
    counts = [(a["name"], int(a.get("cached", 0)), examples * len(a["cells"])) for a in summary["adapters"]]
    if not any(n for _, n, _ in counts):
        return ""
    cached, total = sum(n for _, n, _ in counts), sum(t for _, _, t in counts)
    per_adapter = ", ".join(f"{name} {n}/{t}" for name, n, t in counts if n)
    return (f"{CACHED}: read from the result cache, not recomputed (`bnspec run --no-cache` recomputes): "
            f"{cached} of {total} case(s); {per_adapter}.")


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def matrix(summary: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The main matrix's properties and adapters: the one-device properties, and the adapters
    that ran one of them (the replicas_* cells are the Data-parallel section's); every property
    and adapter where the run had no one-device property."""
    from bnspec.data_parallel import one_device_properties, ran_any

    props = one_device_properties(summary["properties"])
    if not props:
        return summary["properties"], summary["adapters"]
    shown = [a for a in summary["adapters"] if ran_any(a, props) or not a["cells"]]
    return props, shown or summary["adapters"]


def markdown(summary: dict[str, Any]) -> str:
    from bnspec import data_parallel

    props, adapters = matrix(summary)
    lines = [
        "# bnspec conformance report",
        "",
        f"Seed {summary['seed']}, {summary['examples']} example(s) per property, baseline profile "
        f"`{summary['baseline']}`. ✓ conforms to the declared profile; ✗ knob: a non-conformance "
        "and the knob flip that explains it; ≠ knob: conforms, and differs from the baseline by "
        "that knob (a porting fact); ◇ known: a registered known divergence (cited in "
        "`bnspec/known_divergences.toml`); n/a: the implementation cannot express the case; ⚠: the "
        "worker crashed, hung, ran out of memory, returned a malformed result or could not import "
        "its framework.",
        "",
        "| adapter | version | declared profile | " + " | ".join(props) + " |",
        "|---|---|---|" + "---|" * len(props),
    ]
    for a in adapters:
        row = [a["name"], a.get("framework_version") or "not installed", a["declared_profile"]]
        row += [cell_text(c) + cached_mark(c, summary["examples"]) if (c := a["cells"].get(p)) else "" for p in props]
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    if cached_text(summary):
        lines += ["", cached_text(summary)]
    lines += data_parallel.markdown(summary, cell_text, cached_mark, _md)
    for title, want_known in (("New findings", False), ("Known divergences", True)):
        lines += ["", f"## {title}", ""]
        found = [(a, nc) for a in summary["adapters"] for nc in a["non_conformances"]
                 if bool(nc.get("known")) == want_known]
        for a, nc in found:
            expl = finding_explanation(nc)
            known = f" Known divergence `{nc['known']}`." if nc.get("known") else ""
            lines.append(
                f"- **{_md(a['name'])}** `{nc['property']}` ({nc['kind']}): {_md(nc['detail'])}. "
                f"Explained by: {_md(expl)}.{known} Minimal case `{nc['repro_id']}` "
                f"(`bnspec repro {nc['repro_id']}`)."
            )
        if not found:
            lines.append("None on this run." if want_known else
                         "Every adapter conforms to its declared profile on this run, known divergences aside.")
    lines += converters_markdown(summary)
    lines += accuracy_markdown(summary)
    vanished = summary.get("known_vanished", [])
    if vanished:
        lines += ["", "## Known divergences that did not show", ""]
        lines += [f"- `{v['id']}` ({_md(', '.join(v.get('adapters', [v['adapter']])))}): {_md(v['reason'])}"
                  for v in vanished]
    lines += ["", "## Divergences from the baseline, by knob", ""]
    diverging = [a for a in summary["adapters"] if a["divergences"]]
    for a in diverging:
        parts = [f"`{k}` ({', '.join(v['properties'])}; `bnspec repro {v['example']}`)"
                 for k, v in sorted(a["divergences"].items())]
        lines.append(f"- **{_md(a['name'])}**: " + "; ".join(parts))
    if not diverging:
        lines.append(f"Every adapter agrees with the baseline profile `{summary['baseline']}` on this run.")
    return "\n".join(lines) + "\n"


CONVERSION_COLUMNS = (("hyperparameters_preserved", "hyperparameters preserved"),
                      ("state_preserved", "state preserved"), ("source_untouched", "source untouched"),
                      ("trainable_match", "trainable parameters match"))


def conversion_cell(entry: dict[str, Any], check: str) -> str:
    v = entry.get("conversion", {}).get(check)
    if v is None:
        return "n/a"
    return "✓" if v["ok"] else f"✗ {v['failed']}/{v['cases']} (e.g. {v['example']})"


def fidelity(entry: dict[str, Any], props: tuple[str, ...]) -> str:
    texts = [f"{p}: {cell_text(entry['cells'][p])}" for p in props if p in entry["cells"]]
    return "; ".join(texts) or "n/a"


def accuracy_rows(summary: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """The adapters that measured accuracy, most accurate first (by their worst case), each with
    its cells in ACCURACY_CASES order."""
    from bnspec.accuracy import ACCURACY_CASES

    measured = [a for a in summary["adapters"] if a.get("accuracy")]

    def worst(a: dict[str, Any]) -> float:
        values = [_as_float(a["accuracy"][n]["err_u"]) for n in ACCURACY_CASES if n in a["accuracy"]]
        return max((v for v in values if v is not None), default=-1.0)

    return [(a, [accuracy_cell(a["accuracy"].get(n)) for n in ACCURACY_CASES])
            for a in sorted(measured, key=lambda a: (worst(a), a["name"]))]


def _as_float(v: Any) -> float | None:
    if v is None:
        return None
    f = float(v)
    return math.inf if math.isnan(f) else f


def accuracy_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return ""
    v = row["err_u"]
    if v is None:
        return "n/a" if row["note"].startswith("not applicable") else "⚠"
    f = float(v)
    if not math.isfinite(f):
        return "NaN/Inf"
    return f"{f:,.0f}" if f >= 100 else f"{f:.2g}"


def accuracy_markdown(summary: dict[str, Any]) -> list[str]:
    from bnspec.accuracy import ACCURACY_CASES

    rows = accuracy_rows(summary)
    if not rows:
        return []
    lines = ["", "## Accuracy", "",
             "Where the tolerance model accepts an implementation, how close it comes: the worst error of y "
             "against the exact result of its declared profile, in units of the input dtype's roundoff times the "
             "channel's |gamma| + |beta| (a finding, not a failure; most accurate first). " +
             "; ".join(f"`{n}`: {c.doc}" for n, c in ACCURACY_CASES.items()) + ".", "",
             "| adapter | " + " | ".join(ACCURACY_CASES) + " |", "|---|" + "---|" * len(ACCURACY_CASES)]
    lines += ["| " + " | ".join(_md(c) for c in [a["name"], *cells]) + " |" for a, cells in rows]
    return lines


def converters_markdown(summary: dict[str, Any]) -> list[str]:
    paths = [a for a in summary["adapters"] if a.get("conversion")]
    if not paths:
        return []
    lines = ["", "## Converters", "",
             "A conversion path declares its source layer's profile: a faithful conversion keeps it. "
             "Eval fidelity is `eval_output`; training fidelity is `train_output` and `running_stats`.", "",
             "| path | source profile | eval fidelity | training fidelity | "
             + " | ".join(title for _, title in CONVERSION_COLUMNS) + " |",
             "|---|---|---|---|" + "---|" * len(CONVERSION_COLUMNS)]
    for a in paths:
        row = [a["name"], a["declared_profile"], fidelity(a, ("eval_output",)),
               fidelity(a, ("train_output", "running_stats"))]
        row += [conversion_cell(a, check) for check, _ in CONVERSION_COLUMNS]
        lines.append("| " + " | ".join(_md(c) for c in row) + " |")
    return lines


def headline(summary: dict[str, Any]) -> str:
    """One row per adapter: conformance to its declared profile and the knobs by which it
    differs from the baseline. README shows this table for the committed report."""
    lines = [f"| adapter | version | declared profile | conforms | differs from `{summary['baseline']}` by |",
             "|---|---|---|---|---|"]
    for a in summary["adapters"]:
        if not a["conforms"]:
            verdict = "✗ " + ", ".join(sorted({nc["property"] for nc in a["non_conformances"] if not nc.get("known")}))
        elif a.get("known_divergences"):
            verdict = "◇ " + ", ".join(a["known_divergences"])
        else:
            verdict = "✓"
        knobs = ", ".join(f"`{k}`" for k in sorted(a["divergences"])) or "—"
        lines.append(f"| {_md(a['name'])} | {_md(a.get('framework_version') or 'not installed')} | "
                     f"{_md(a['declared_profile'])} | {_md(verdict)} | {knobs} |")
    return "\n".join(lines) + "\n"


def junit(summary: dict[str, Any]) -> str:
    cases = []
    failures = errors = skipped = 0
    for a in summary["adapters"]:
        for prop, cell in a["cells"].items():
            name = xml_escape(prop, {'"': "&quot;"})
            cls = xml_escape(f"bnspec.{a['name']}", {'"': "&quot;"})
            body = ""
            detail = xml_escape(str(cell.get("detail", "")), {'"': "&quot;"})
            if cell["status"] == "known":
                known = xml_escape(", ".join(cell.get("known", [])))
                body = f"<system-out>known divergence {known}: {detail}</system-out>"
            elif cell["status"] == "fail":
                failures += 1
                body = f'<failure message="{detail}">{xml_escape("; ".join(_alternatives_text(cell)))}</failure>'
            elif cell["status"] == "failure":
                errors += 1
                body = f'<error message="{detail}"/>'
            elif cell["status"] == "not_applicable":
                skipped += 1
                body = f'<skipped message="not applicable: {detail}"/>'
            cases.append(f'  <testcase classname="{cls}" name="{name}">{body}</testcase>')
    head = (f'<?xml version="1.0" encoding="utf-8"?>\n<testsuite name="bnspec" tests="{len(cases)}" '
            f'failures="{failures}" errors="{errors}" skipped="{skipped}">')
    return head + "\n" + "\n".join(cases) + "\n</testsuite>\n"


def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (imported only when a report is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    """The figure as a base64 PNG for a self-contained HTML report; the figure is closed."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plot_errors(summary: dict[str, Any]) -> str:
    """Max error in roundoff units per adapter and property (log scale), as a base64 PNG."""
    plt = _pyplot()

    props = summary["properties"]
    adapters = summary["adapters"]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(props) + 3), 0.35 * len(adapters) + 1.8))
    import numpy as np

    grid = np.full((len(adapters), len(props)), np.nan)
    for i, a in enumerate(adapters):
        for j, p in enumerate(props):
            v = a["cells"].get(p, {}).get("max_err_u")
            if isinstance(v, (int, float)) and v == v and v != float("inf"):
                grid[i, j] = np.log10(max(v, 1e-2))
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(props)), props, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(adapters)), [a["name"] for a in adapters], fontsize=7)
    fig.colorbar(im, ax=ax, label="log10(error / u)")
    ax.set_title("largest error in units of the roundoff u (blank: n/a, or no numbers compared)", fontsize=8)
    return _png(fig)


def _plot_trajectories() -> str:
    """Running variance over 200 steps under the profiles that differ in debias, estimator and
    initialisation: the reference, so the plot shows what each profile means."""
    plt = _pyplot()
    import numpy as np

    from bnspec.case import make_case
    from bnspec.profiles import get_semantics
    from bnspec.reference import reference

    rng = np.random.default_rng(0)
    xs = [rng.normal(3.0, 2.0, (4, 1)) for _ in range(200)]
    case = make_case(xs, modes="train", momentum=0.01, eps=1e-5)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name in ("pytorch", "keras", "haiku", "equinox_batch", "equinox_ema"):
        sem = get_semantics(name)
        c = case.replace(running_mean=np.array([sem.initial_running[0]]),
                         running_var=np.array([sem.initial_running[1]]))
        res = reference(c, sem)
        ax.plot([_first(s.running_var) for s in res.steps], label=name, lw=1)
    ax.axhline(4.0, color="grey", ls=":", lw=1, label="true variance 4")
    ax.set_ylim(0, 6)  # equinox's debiased hidden state starts far above: the drift is the point
    ax.set_xlabel("training step (momentum 0.01 / decay 0.99)")
    ax.set_ylabel("running variance")
    ax.legend(fontsize=7)
    return _png(fig)


def _first(values: Any) -> float:
    """Channel 0 of a per-channel quantity the reference computes for every case it plots."""
    assert values is not None
    return float(values[0])


def _plot_offsets() -> str:
    """Variance error against the input's offset, one-pass vs two-pass, emulated in float32."""
    plt = _pyplot()
    import numpy as np

    from bnspec.case import make_case
    from bnspec.profiles import get_semantics
    from bnspec.reference import emulate, reference

    offsets = np.logspace(0, 5, 16)
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (64, 1))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for algo in ("two_pass", "one_pass_clamped"):
        sem = get_semantics("pytorch").replace(variance_algorithm=algo, compute_dtype="input")
        errs = []
        for off in offsets:
            case = make_case(base + off, dtype="float32")
            exact = _first(reference(case, sem).steps[0].batch_var)
            emu = _first(emulate(case, sem).steps[0].batch_var)
            errs.append(max(abs(emu - exact) / (exact * 2.0**-24), 1e-1))
        ax.loglog(offsets, errs, marker="o", ms=3, label=algo)
    ax.set_xlabel("|mean| / std of the input (float32)")
    ax.set_ylabel("variance error / u")
    ax.legend(fontsize=7)
    return _png(fig)


def html(summary: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("bnspec", "templates"), autoescape=True,
        trim_blocks=True, lstrip_blocks=True,
    )
    from bnspec import data_parallel

    declared = sorted({a["declared_profile"] for a in summary["adapters"]} | {summary["baseline"]})
    props, adapters = matrix(summary)
    return env.get_template("report.html.j2").render(
        s=summary, matrix_properties=props, matrix_adapters=adapters,
        replica_properties=data_parallel.replica_properties(summary["properties"]),
        replica_rows=data_parallel.rows(summary), typical=data_parallel.typical_case().label,
        pct=data_parallel.percent, cell_text=cell_text, cached_mark=cached_mark, cached_text=cached_text(summary),
        conversion_cell=conversion_cell, fidelity=fidelity,
        conversion_columns=CONVERSION_COLUMNS, accuracy_rows=accuracy_rows(summary),
        finding_explanation=finding_explanation,
        accuracy_cases=_accuracy_cases(), profiles=declared, knob_table=knob_table(declared),
        plot_errors=_plot_errors(summary) if summary["adapters"] else "",
        plot_trajectories=_plot_trajectories(), plot_offsets=_plot_offsets(),
    )


def _accuracy_cases() -> dict[str, str]:
    from bnspec.accuracy import ACCURACY_CASES

    return {n: c.doc for n, c in ACCURACY_CASES.items()}


def knob_table(profiles: list[str]) -> list[dict[str, Any]]:
    """Per knob: its doc line and, per profile, its value and the citation that decides it
    ("?" for a profile this installation does not know)."""
    from bnspec.profiles import PROFILES
    from bnspec.semantics import REPLICA_KNOBS, Semantics

    known = [PROFILES[p] for p in profiles if p in PROFILES]
    default = Semantics()
    replica = [k for k in REPLICA_KNOBS if any(getattr(p.semantics, k) != getattr(default, k) for p in known)]
    rows = []
    for k in [*KNOBS, *replica]:  # the replica knobs where a profile here sets one (data-parallel)
        values = []
        for p in profiles:
            if p in PROFILES:
                values.append({"value": repr(getattr(PROFILES[p].semantics, k)), "cite": PROFILES[p].cite.get(k, "")})
            else:
                values.append({"value": "?", "cite": ""})
        rows.append({"knob": k, "doc": (KNOBS.get(k) or REPLICA_KNOBS[k]).doc, "values": values})
    return rows


README_START, README_END = "<!-- headline:start -->", "<!-- headline:end -->"


def update_readme(readme: Path, summary: dict[str, Any]) -> None:
    """Replace README's headline block with the table of ``summary`` (make report does this)."""
    text = readme.read_text(encoding="utf-8")
    head, sep, rest = text.partition(README_START)
    _, sep2, tail = rest.partition(README_END)
    if not (sep and sep2):
        raise ValueError(f"{readme} has no {README_START} ... {README_END} block")
    atomic_write(readme, f"{head}{README_START}\n{headline(summary)}{README_END}{tail}")


if __name__ == "__main__":  # python -m bnspec.reports README.md reports/summary.json
    import sys

    update_readme(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text(encoding="utf-8")))
