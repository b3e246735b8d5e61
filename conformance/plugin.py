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
            from bnspec.properties import generate
            from bnspec.discovery import load_adapter_ref
            from bnspec.errors import UnsupportedFeature

            adapter = load_adapter_ref(self.ref)
            profile = self.config.getoption("bnspec_profile") or adapter.profile
            if not getattr(adapter, "_bnspec_setup_done", False):
                adapter.setup()
                adapter._bnspec_setup_done = True  # type: ignore[attr-defined]
            if self.prop == HYPOTHESIS:
                self._hypothesis(adapter, profile)
                return
            case = generate(self.prop, self.config.getoption("bnspec_seed"), self.index)
            try:
                adapter.check_supported(case)
            except UnsupportedFeature as exc:
                pytest.skip(f"not applicable: {exc}")
            _check(adapter, profile, case)

        def _hypothesis(self, adapter: Any, profile: str) -> None:
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

    def _check(adapter: Any, profile: str, case: Any, drawn: bool = False) -> None:
        from bnspec.attribution import Observation, explain, format_explanation, judge
        from bnspec.errors import UnsupportedFeature
        from bnspec.profiles import get_semantics

        try:
            obs = Observation(result=adapter.run(case))
        except UnsupportedFeature as exc:
            if drawn:  # a drawn case the adapter cannot express: draw another
                from hypothesis import assume

                assume(False)
            pytest.skip(f"not applicable: {exc}")
        except Exception as exc:  # noqa: BLE001 - the implementation raising is a behaviour
            obs = Observation(raised=f"{type(exc).__name__}: {exc}")
        sem = get_semantics(profile)
        verdict = judge(case, sem, obs)
        if not verdict.ok:
            why = format_explanation(explain(case, sem, obs), base_word=profile)
            raise AssertionError(f"{case.label}: {verdict.note}\nexplained by: {why}\n"
                                 f"repro snippet:\n{adapter.snippet(case)}")

    return _BnspecItem


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        return getattr(_item_class(), name)


BnspecItem: Any = _Lazy()
