"""The ``pytest11`` plugin: inert unless ``--bnspec-adapter`` is given.

    pytest --bnspec-adapter mypkg.bn:ADAPTER --bnspec-profile pytorch [--bnspec-known known.toml]

runs every conformance property against a port project's own BatchNorm, one test per property
and example, judged against the named profile (default: the adapter's declared one), and with
``--bnspec-hypothesis N`` one more test of N Hypothesis-drawn cases.

A failing item reports what a person needs and nothing else (no pytest or Hypothesis traceback):
the finding, the knob flips that explain it, the minimal case (Hypothesis's shrunk draw, or the
property's case shrunk like ``bnspec run`` shrinks it) and a repro: the adapter's own snippet in
its framework's API where it has one, else a Python program that builds the case with bnspec's
API, runs the adapter on it and judges it (bnspec.repro.python_repro). A failure that a
known-divergence registry (``--bnspec-known FILE``, the format of bnspec/known_divergences.toml,
as ``bnspec run --known FILE`` reads it) accounts for is reported as an expected failure (xfail)
with the entry's id; a drawn case belongs to no property, so an entry matches it by its adapter,
its kind and what identifies it, whatever properties it names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HYPOTHESIS = "hypothesis"


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("bnspec", "BatchNorm conformance (bnspec)")
    group.addoption("--bnspec-adapter", action="append", default=[], metavar="MODULE:ATTR",
                    help="an adapter to check; the plugin is inert without it")
    group.addoption("--bnspec-profile", default=None, help="profile to check against (default: declared)")
    group.addoption("--bnspec-examples", type=int, default=3, help="cases per property")
    group.addoption("--bnspec-seed", type=int, default=0)
    group.addoption("--bnspec-hypothesis", type=int, default=0, metavar="N",
                    help="also run N Hypothesis-drawn cases per adapter (shrunk on failure)")
    group.addoption("--bnspec-known", default=None, metavar="FILE",
                    help="registry of known divergences (TOML, as `bnspec run --known`): a failure an "
                         "entry matches is reported as known (xfail) instead of failing")


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    refs = config.getoption("bnspec_adapter")
    if not refs:
        return
    from bnspec.properties import PROPERTIES

    examples = config.getoption("bnspec_examples")
    for ref in refs:
        for prop in PROPERTIES:
            for index in range(examples):
                items.append(BnspecItem.from_parent(session, name=f"bnspec[{ref}][{prop}][{index}]",
                                                    ref=ref, prop=prop, index=index))
        if config.getoption("bnspec_hypothesis") > 0:
            items.append(BnspecItem.from_parent(session, name=f"bnspec[{ref}][hypothesis]",
                                                ref=ref, prop=HYPOTHESIS, index=0))


# -- judging one case: shared by the items and benchmarks/false_flags.py --------------------


@dataclass
class Outcome:
    """One case judged against a profile, as a plugin item sees it."""

    status: str  # "conforms" | "not_applicable" | "known" | "flagged"
    case: Any  # the Case
    kind: str = ""  # how it went wrong: the quantity that mismatched, "raised", "returned", "failure", ...
    note: str = ""  # the finding, for people
    explanation: Any = None  # bnspec.records.Explanation, once computed
    known: Any = None  # the KnownDivergence that accounts for it
    observation: Any = None


def judge_drawn(adapter: Any, profile: Any, case: Any, registry: list[Any] | None = None,
                prop: str = HYPOTHESIS, *, explain_it: bool = False) -> Outcome:
    """``case`` run through ``adapter`` (in this process) and judged against ``profile`` (a
    Profile); a failure looked up in ``registry``. The explanation is computed where an entry
    may need it to match, or when asked (``explain_it``)."""
    from bnspec.judging import judge
    from bnspec.observe import observe
    from bnspec.records import Explanation, Status

    obs = observe(adapter, case)
    if obs.unsupported is not None:
        return Outcome("not_applicable", case, note=obs.unsupported, observation=obs)
    if obs.failure is not None:
        status, kind, note = Status.FAILURE, "failure", f"the adapter failed: {obs.failure}"
    else:
        verdict = judge(case, profile.semantics, obs)
        if verdict.ok:
            return Outcome("conforms", case, observation=obs)
        status, kind, note = Status.MISMATCH, verdict.kind or "mismatch", verdict.note
    registry = registry or []
    explanation = Explanation()  # an entry identified by its message matches without one
    known = _known(registry, adapter.name, prop, status, note, explanation)
    if status == Status.MISMATCH and (explain_it or (known is None and registry)):
        from bnspec.attribution import explain

        explanation = explain(case, profile.semantics, obs)
        known = known or _known(registry, adapter.name, prop, status, note, explanation)
    return Outcome("known" if known is not None else "flagged", case, kind, note, explanation, known, obs)


def _known(registry: list[Any], adapter: str, prop: str, status: Any, detail: str, explanation: Any) -> Any:
    from bnspec.known import find

    if prop != HYPOTHESIS:
        return find(registry, adapter, prop, status, detail, explanation)
    for entry in registry:  # a drawn case is no property's: any property an entry names will do
        for p in entry.properties or (prop,):
            if entry.matches(adapter, p, status, detail, explanation):
                return entry
    return None


# -- what a failing item prints -------------------------------------------------------------


@dataclass
class Finding:
    """A failing item's report: the outcome on the minimal case, and where it came from."""

    adapter: Any
    ref: str
    profile: Any
    outcome: Outcome
    where: str

    def render(self) -> str:
        from bnspec.reports import explanation_text

        o, case = self.outcome, self.outcome.case
        head = f"bnspec: {self.adapter.name} does not conform to {self.profile.name} ({self.where})"
        if o.status == "known":
            head = f"bnspec: {self.adapter.name}: known divergence {o.known.id} ({self.where})"
        lines = [head, f"  finding: {_indent(o.note)}"]
        if o.explanation is not None and o.kind != "failure":
            lines.append(f"  explained by: {explanation_text(o.explanation, base_word=self.profile.name)}")
        lines.append(f"  minimal case: {describe_case(case)}")
        if o.status == "known":
            lines.append(f"  registered: {_first_line(o.known.reason)}")
        else:
            lines.append("  not a registered known divergence (declare one with --bnspec-known FILE, "
                         "in the format of bnspec/known_divergences.toml)")
        lines += self._repro(case)
        return "\n".join(lines)

    def _repro(self, case: Any) -> list[str]:
        from bnspec.adapter import Adapter
        from bnspec.repro import python_repro

        if type(self.adapter).snippet is not Adapter.snippet:
            own = self.adapter.snippet(case).rstrip("\n")
            return [f"  repro in {self.adapter.framework}'s own API (the adapter's snippet):",
                    "----- repro -----", own, "----- end repro -----"]
        text = python_repro(case, absolute_ref(self.ref), self.profile.name).rstrip("\n")
        return ["  repro: save the lines between the markers as repro.py and run `python repro.py` "
                "(exit status 1: it still does not conform)", "----- repro.py -----", text, "----- end repro.py -----"]


def _first_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= 160 else line[:157] + "..."


def _indent(text: str) -> str:
    return "\n    ".join(text.splitlines())


def describe_case(case: Any) -> str:
    """One line: the steps, their shapes and modes, the hyperparameters and dtypes."""
    shapes = sorted({s.x.shape for s in case.steps})
    modes = ", ".join(("frozen " if s.frozen else "") + s.mode + (" + dy" if s.grad_output is not None else "")
                      for s in case.steps)
    dtypes = case.dtype if case.param_dtype == case.dtype else f"{case.dtype} (parameters {case.param_dtype})"
    flags = [f"eps={case.eps!r}", f"momentum={case.momentum!r}", dtypes,
             "affine" if case.affine else "affine=False",
             "tracked" if case.track_running_stats else "track_running_stats=False"]
    if case.layout != "channels_first":
        flags.append(case.layout)
    return (f"{len(case.steps)} step(s) of {', '.join(map(str, shapes))} [{modes}]; " + ", ".join(flags))


def absolute_ref(ref: str) -> str:
    """An adapter reference that loads from anywhere: a file path made absolute."""
    module, sep, attr = ref.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module):
        return f"{Path(module).resolve()}:{attr}"
    return ref


class BnspecFailure(Exception):
    """A failing (or known) item's finding; rendered by the item's repr_failure."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.outcome.note)
        self.finding = finding


class _Drawn(AssertionError):
    """Raised inside the Hypothesis test so that Hypothesis shrinks the case."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.note)
        self.outcome = outcome


def _item_class() -> Any:
    import pytest

    class _BnspecItem(pytest.Item):
        def __init__(self, *, ref: str, prop: str, index: int, **kw: Any) -> None:
            super().__init__(**kw)
            self.ref, self.prop, self.index = ref, prop, index

        def runtest(self) -> None:
            from bnspec.discovery import load_adapter_ref
            from bnspec.profiles import resolve

            adapter = load_adapter_ref(self.ref)
            profile = resolve(self.config.getoption("bnspec_profile") or adapter.profile)
            registry = _registry(self.config)
            if self.prop == HYPOTHESIS:
                self._hypothesis(adapter, profile, registry)
            else:
                self._property(adapter, profile, registry)

        def _property(self, adapter: Any, profile: Any, registry: list[Any]) -> None:
            from bnspec.properties import generate

            case = generate(self.prop, self.config.getoption("bnspec_seed"), self.index)
            outcome = judge_drawn(adapter, profile, case, registry, self.prop, explain_it=True)
            where = f"property {self.prop}, example {self.index}"
            if outcome.status == "not_applicable":
                pytest.skip(f"not applicable: {outcome.note}")
            _seen(self.config, adapter.name, self.prop, outcome.known)
            if outcome.status == "conforms":
                return
            if outcome.status == "known":
                pytest.xfail(f"known divergence {outcome.known.id}: {_first_line(outcome.note)}")
            raise BnspecFailure(Finding(adapter, self.ref, profile, _shrunk(adapter, profile, outcome), where))

        def _hypothesis(self, adapter: Any, profile: Any, registry: list[Any]) -> None:
            """Drawn cases within the adapter's capabilities; Hypothesis shrinks a failure to a
            minimal case (derandomized: the same cases on every run). A case a registered
            divergence accounts for is noted and the search goes on."""
            from hypothesis import HealthCheck, assume, given, settings

            from bnspec.conformance.strategies import cases

            n = self.config.getoption("bnspec_hypothesis")
            known_seen: dict[str, int] = {}

            @settings(max_examples=n, derandomize=True, database=None, deadline=None,
                      suppress_health_check=list(HealthCheck))
            @given(cases(adapter.capabilities))
            def conforms(case: Any) -> None:
                outcome = judge_drawn(adapter, profile, case, registry)
                assume(outcome.status != "not_applicable")  # a case it cannot express: draw another
                if outcome.status == "known":
                    known_seen[outcome.known.id] = known_seen.get(outcome.known.id, 0) + 1
                elif outcome.status == "flagged":
                    raise _Drawn(outcome)

            try:
                conforms()
            except _Drawn as drawn:  # the minimal case, judged again and explained
                outcome = judge_drawn(adapter, profile, drawn.outcome.case, registry, explain_it=True)
                if outcome.status != "flagged":  # flaky: keep what Hypothesis saw
                    outcome = drawn.outcome
                raise BnspecFailure(Finding(adapter, self.ref, profile, outcome,
                                            f"a drawn case, shrunk by Hypothesis from {n} draws")) from None
            finally:
                for entry_id, count in known_seen.items():
                    self.user_properties.append(("bnspec_known", f"{entry_id}: {count} drawn case(s)"))
                    _seen(self.config, adapter.name, HYPOTHESIS, entry_id, ran=False)

        def repr_failure(self, excinfo: Any, style: Any = None) -> Any:
            if isinstance(excinfo.value, BnspecFailure):
                return excinfo.value.finding.render()
            from bnspec.errors import BnspecError

            if isinstance(excinfo.value, BnspecError):
                return f"bnspec: {self.ref}: {excinfo.value}"
            return super().repr_failure(excinfo, style)

        def reportinfo(self) -> tuple[str, int, str]:
            return self.ref, 0, self.name

    return _BnspecItem


def _shrunk(adapter: Any, profile: Any, outcome: Outcome) -> Outcome:
    """A property's failing case shrunk as `bnspec run` shrinks it (the same kind of mismatch,
    the same explanation), judged again; a failure (crash) is not shrunk."""
    from bnspec.judging import judge
    from bnspec.shrink import minimal_failing

    if outcome.kind == "failure" or outcome.observation is None or not outcome.observation.judgeable:
        return outcome
    verdict = judge(outcome.case, profile.semantics, outcome.observation)
    minimal = minimal_failing(adapter, outcome.case, profile.semantics, verdict, outcome.explanation)
    if minimal is outcome.case:
        return outcome
    again = judge_drawn(adapter, profile, minimal, None, explain_it=True)
    return again if again.status == "flagged" else outcome


_REGISTRY_KEY: Any = None
_SEEN_KEY: Any = None


def _keys() -> tuple[Any, Any]:
    global _REGISTRY_KEY, _SEEN_KEY
    if _REGISTRY_KEY is None:
        import pytest

        _REGISTRY_KEY, _SEEN_KEY = pytest.StashKey[list](), pytest.StashKey[dict]()
    return _REGISTRY_KEY, _SEEN_KEY


def _registry(config: Any) -> list[Any]:
    """The registry --bnspec-known names (empty without it), read once per session."""
    key, _ = _keys()
    if key not in config.stash:
        path = config.getoption("bnspec_known")
        if path is None:
            config.stash[key] = []
        else:
            from bnspec.known import load

            config.stash[key] = load(Path(path))
    return config.stash[key]


def _seen(config: Any, adapter: str, prop: str, entry: Any = None, *, ran: bool = True) -> None:
    """Record that ``adapter`` ran ``prop`` on a case it could express (``ran``), and the known
    divergence (an entry or its id) that accounted for a failure, if any."""
    _, key = _keys()
    seen = config.stash.setdefault(key, {"ran": {}, "seen": set()})
    if ran:
        seen["ran"].setdefault(adapter, set()).add(prop)
    if entry is not None:
        seen["seen"].add(getattr(entry, "id", entry))


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    if not config.getoption("bnspec_adapter", None) or config.getoption("bnspec_known", None) is None:
        return
    from bnspec.known import vanished

    _, key = _keys()
    seen = config.stash.get(key, {"ran": {}, "seen": set()})
    registry = _registry(config)
    shown = [k.id for k in registry if k.id in seen["seen"]]
    if shown:
        terminalreporter.write_line(f"bnspec: known divergences seen: {', '.join(shown)}")
    gone = vanished(registry, seen["ran"], seen["seen"], config.getoption("bnspec_examples"))
    if gone:
        terminalreporter.write_line("bnspec: registered known divergences that did not show although their "
                                    f"adapter ran their properties: {', '.join(v['id'] for v in gone)}")


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        return getattr(_item_class(), name)


_item_class = functools.cache(_item_class)  # one class, built on first use (pytest imported then)


BnspecItem: Any = _Lazy()
