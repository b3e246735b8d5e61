"""The ``pytest11`` plugin: inert unless ``--bnspec-adapter`` is given.

    pytest --bnspec-adapter mypkg.bn:ADAPTER --bnspec-profile pytorch

runs every conformance property against a port project's own BatchNorm, one test per property
and example, judged against the named profile (default: the adapter's declared one).
"""

from __future__ import annotations

from typing import Any


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("bnspec", "BatchNorm conformance (bnspec)")
    group.addoption("--bnspec-adapter", action="append", default=[], metavar="MODULE:ATTR",
                    help="an adapter to check; the plugin is inert without it")
    group.addoption("--bnspec-profile", default=None, help="profile to check against (default: declared)")
    group.addoption("--bnspec-examples", type=int, default=3, help="cases per property")
    group.addoption("--bnspec-seed", type=int, default=0)
    group.addoption("--bnspec-hypothesis", type=int, default=0, metavar="N",
                    help="also run N Hypothesis-drawn cases per adapter (shrunk on failure)")


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


HYPOTHESIS = "hypothesis"


def _item_class() -> Any:
    import pytest

    class _BnspecItem(pytest.Item):
        def __init__(self, *, ref: str, prop: str, index: int, **kw: Any) -> None:
            super().__init__(**kw)
            self.ref, self.prop, self.index = ref, prop, index

        def runtest(self) -> None:
            from bnspec.discovery import load_adapter_ref
            from bnspec.profiles import resolve
            from bnspec.properties import generate

            adapter = load_adapter_ref(self.ref)
            profile = resolve(self.config.getoption("bnspec_profile") or adapter.profile)
            if self.prop == HYPOTHESIS:
                self._hypothesis(adapter, profile)
                return
            _check(adapter, profile, generate(self.prop, self.config.getoption("bnspec_seed"), self.index))

        def _hypothesis(self, adapter: Any, profile: Any) -> None:
            """Drawn cases within the adapter's capabilities; Hypothesis shrinks a failure to a
            minimal case (derandomized: the same cases on every run)."""
            from hypothesis import HealthCheck, given, settings

            from bnspec.conformance.strategies import cases

            @settings(max_examples=self.config.getoption("bnspec_hypothesis"), derandomize=True,
                      database=None, deadline=None, suppress_health_check=list(HealthCheck))
            @given(cases(adapter.capabilities))
            def conforms(case: Any) -> None:
                _check(adapter, profile, case, drawn=True)

            conforms()

        def reportinfo(self) -> tuple[str, int, str]:
            return self.ref, 0, self.name

    def _check(adapter: Any, profile: Any, case: Any, drawn: bool = False) -> None:
        """``profile``: the bnspec.Profile the adapter is checked against."""
        from bnspec.attribution import explain
        from bnspec.judging import judge
        from bnspec.observe import observe
        from bnspec.reports import explanation_text

        obs = observe(adapter, case)  # in this process: set up on first use
        if obs.unsupported is not None:
            if drawn:  # a drawn case the adapter cannot express: draw another
                from hypothesis import assume

                assume(False)
            pytest.skip(f"not applicable: {obs.unsupported}")
        if obs.failure is not None:
            raise AssertionError(f"{case.label}: {obs.failure}\nrepro snippet:\n{adapter.snippet(case)}")
        sem = profile.semantics
        verdict = judge(case, sem, obs)
        if not verdict.ok:
            why = explanation_text(explain(case, sem, obs), base_word=profile.name)
            raise AssertionError(f"{case.label}: {verdict.note}\nexplained by: {why}\n"
                                 f"repro snippet:\n{adapter.snippet(case)}")

    return _BnspecItem


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        return getattr(_item_class(), name)


BnspecItem: Any = _Lazy()
