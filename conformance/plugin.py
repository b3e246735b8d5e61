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


def pytest_collection_modifyitems(session: Any, config: Any, items: list[Any]) -> None:
    refs = config.getoption("bnspec_adapter")
    if not refs:
        return
    from bnspec.conformance.cases import PROPERTIES

    examples = config.getoption("bnspec_examples")
    for ref in refs:
        for prop in PROPERTIES:
            for index in range(examples):
                items.append(BnspecItem.from_parent(session, name=f"bnspec[{ref}][{prop}][{index}]",
                                                    ref=ref, prop=prop, index=index))


def _item_class() -> Any:
    import pytest

    class _BnspecItem(pytest.Item):
        def __init__(self, *, ref: str, prop: str, index: int, **kw: Any) -> None:
            super().__init__(**kw)
            self.ref, self.prop, self.index = ref, prop, index

        def runtest(self) -> None:
            from bnspec.attribution import Observation, explain, format_explanation, judge
            from bnspec.conformance.cases import generate
            from bnspec.discovery import load_adapter_ref
            from bnspec.errors import FrameworkError, SingleValueError, UnsupportedFeature
            from bnspec.profiles import get_semantics

            adapter = load_adapter_ref(self.ref)
            profile = self.config.getoption("bnspec_profile") or adapter.profile
            case = generate(self.prop, self.config.getoption("bnspec_seed"), self.index)
            try:
                adapter.check_supported(case)
                if not getattr(adapter, "_bnspec_setup_done", False):
                    adapter.setup()
                    adapter._bnspec_setup_done = True  # type: ignore[attr-defined]
                obs = Observation(result=adapter.run(case))
            except UnsupportedFeature as exc:
                pytest.skip(f"not applicable: {exc}")
            except (FrameworkError, SingleValueError, Exception) as exc:  # noqa: BLE001
                obs = Observation(raised=f"{type(exc).__name__}: {exc}")
            sem = get_semantics(profile)
            verdict = judge(case, sem, obs)
            if not verdict.ok:
                why = format_explanation(explain(case, sem, obs), base_word=profile)
                raise AssertionError(f"{case.label}: {verdict.note}\nexplained by: {why}\n"
                                     f"repro snippet:\n{adapter.snippet(case)}")

        def reportinfo(self) -> tuple[str, int, str]:
            return self.ref, 0, self.name

    return _BnspecItem


class _Lazy:
    def __getattr__(self, name: str) -> Any:
        return getattr(_item_class(), name)


BnspecItem: Any = _Lazy()
