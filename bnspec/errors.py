"""One exception hierarchy, rooted at :class:`BnspecError`."""

from __future__ import annotations

from typing import Literal

# What went wrong when an adapter gave nothing to judge (AdapterFailure.kind).
FailureKind = Literal["crash", "timeout", "memory", "import", "bad_output"]


class BnspecError(Exception):
    """Base of every error bnspec raises on purpose."""


class InvalidSemantics(BnspecError, ValueError):
    """A knob was given a value outside its allowed set."""


class InvalidCase(BnspecError, ValueError):
    """A Case is malformed (shapes, dtypes, step plan)."""


class UnsupportedFeature(BnspecError):
    """The implementation cannot express a setting of the Case.

    Reported as "not applicable": it is neither a pass nor a divergence.
    """


class SingleValueError(BnspecError, ValueError):
    """A training step saw one value per channel and the semantics forbid it."""


class UnknownName(BnspecError, LookupError):
    """An adapter or profile name that does not exist; the message lists the alternatives."""

    def __init__(self, kind: str, name: str, available: list[str] | tuple[str, ...]) -> None:
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(f"unknown {kind} {name!r}; available: {', '.join(self.available)}")


class AdapterFailure(BnspecError):
    """A worker crashed, timed out, or could not import its framework."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        self.kind, self.message = kind, message
        super().__init__(f"{kind}: {message}")


class FrameworkError(BnspecError):
    """The framework raised while running a case (e.g. one value per channel)."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name, self.message = type_name, message
        super().__init__(f"{type_name}: {message}")

    @classmethod
    def of(cls, exc: BaseException) -> FrameworkError:
        """What a framework raised, as data: its type's name and the first line of its message
        (the worker process and an in-process run report it alike)."""
        if isinstance(exc, FrameworkError):  # already data (a rank's error relayed by its adapter)
            return exc
        lines = str(exc).strip().splitlines()
        return cls(type(exc).__name__, lines[0][:500] if lines else "")
