"""The adapter protocol: what an implementation declares, and the one call it answers.

An adapter translates a canonical :class:`~bnspec.case.Case` into framework calls, with every
setting passed explicitly, and the framework's outputs back into a NumPy
:class:`~bnspec.case.Result`. It declares the profile it claims and its capabilities; it never
judges. A setting the framework cannot express raises :class:`~bnspec.errors.UnsupportedFeature`.

Adapter modules must not import their framework at module level: discovery and ``bnspec list``
import the module, and only the worker process calls :meth:`Adapter.setup`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields
from importlib import metadata

from bnspec.case import Case, ConversionChecks, Result
from bnspec.errors import UnsupportedFeature
from bnspec.plan import counter_matters
from bnspec.profiles import Profile, resolve


@dataclass(frozen=True)
class Capabilities:
    ranks: tuple[int, ...] = (2, 3, 4, 5)
    dtypes: tuple[str, ...] = ("float64", "float32")
    layouts: tuple[str, ...] = ("channels_first",)
    gradients: bool = False
    cumulative_momentum: bool = False  # momentum=None
    frozen: bool = False  # a frozen layer called in training mode
    affine_off: bool = True  # gamma/beta absent
    untracked: bool = False  # track_running_stats=False: no running statistics at all
    initial_running: bool = True  # running statistics can be set before the first step
    counter: bool = False  # the update counter can be set before the first step (Case.counter)
    eval_steps: bool = True
    train_steps: bool = True
    momentum_values: str = "any"  # "any" | "fixed:<value>" for ops without a momentum
    # a data-parallel engine: runs a case whose batches split into replica shards (Case.replicas),
    # one process or device per replica. A single-device adapter runs no such case.
    replicas: bool = False
    notes: str = ""


@dataclass
class Adapter:
    """Base class; subclass and override :meth:`setup` and :meth:`run`.

    ``framework`` is the distribution whose version the report shows (read with
    ``importlib.metadata``, never by importing). ``worker_env`` holds environment variables the
    worker process needs before it imports anything (``KERAS_BACKEND``, ``JAX_ENABLE_X64``), on
    top of ``bnspec.worker.DEFAULT_ENV`` (one thread per framework, CPU only).
    ``python`` names another interpreter to run the worker in (None: the CLI's own).
    """

    name: str
    framework: str
    # The profile it claims: a registered profile's name, or a Profile object of its own (a
    # framework outside bnspec); read it through declared_profile().
    profile: str | Profile
    description: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    worker_env: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    extra_frameworks: tuple[str, ...] = ()
    ref: str = ""  # "module:attr" it was loaded from; set by discovery, used by workers

    def setup(self) -> None:
        """Import the framework. Runs once per worker process."""

    def run(self, case: Case) -> Result:
        raise NotImplementedError

    def declared_profile(self) -> Profile:
        """The Profile this adapter claims (its own object, or the registered one it names)."""
        return resolve(self.profile)

    def snippet(self, case: Case) -> str:
        """A copy-pasteable program in the framework's own API that replays ``case``."""
        return f"# no snippet for adapter {self.name!r}"

    # -- helpers for subclasses and the engine --
    def framework_version(self) -> str | None:
        """The framework's version, read from package metadata (from the adapter's own
        environment where it has one), never by importing it."""
        if self.python is not None:
            return version_in_env(self.python, self.framework)
        return _version(self.framework)

    def installed(self) -> bool:
        if self.python is not None:
            return True  # another environment: the worker reports at start-up
        return self.framework_version() is not None and all(
            _installed(d) for d in self.extra_frameworks
        )

    def check_supported(self, case: Case) -> None:
        """Raise UnsupportedFeature for any part of the case outside the capabilities."""
        cap = self.capabilities
        if case.rank not in cap.ranks:
            raise UnsupportedFeature(f"rank {case.rank} (supported: {cap.ranks})")
        if case.dtype not in cap.dtypes:
            raise UnsupportedFeature(f"dtype {case.dtype} (supported: {cap.dtypes})")
        if case.layout not in cap.layouts:
            raise UnsupportedFeature(f"layout {case.layout} (supported: {cap.layouts})")
        if case.needs_gradients and not cap.gradients:
            raise UnsupportedFeature("gradients")
        if case.momentum is None and not cap.cumulative_momentum:
            raise UnsupportedFeature("momentum=None (cumulative average)")
        if any(s.frozen for s in case.steps) and not cap.frozen:
            raise UnsupportedFeature("a frozen layer")
        if not case.affine and not cap.affine_off:
            raise UnsupportedFeature("affine=False")
        if not case.track_running_stats and not cap.untracked:
            raise UnsupportedFeature("track_running_stats=False")
        if case.counter and not cap.counter and counter_matters(case, self.declared_profile().semantics):
            raise UnsupportedFeature(f"an update counter of {case.counter} before the first step")
        if case.replicas is not None and not cap.replicas:
            raise UnsupportedFeature("replicas: a single-device layer, no data-parallel engine")
        if any(s.mode == "eval" for s in case.steps) and not cap.eval_steps:
            raise UnsupportedFeature("eval steps")
        if any(s.mode == "train" for s in case.steps) and not cap.train_steps:
            raise UnsupportedFeature("train steps")


@functools.cache
def version_in_env(python: str, dist: str) -> str | None:
    """A distribution's version in the environment of interpreter ``python`` (its metadata)."""
    from pathlib import Path

    env = Path(python).parent.parent
    paths = [str(p) for p in env.glob("lib/python3*/site-packages")]
    if not paths:
        return None
    found = next(iter(metadata.distributions(name=dist, path=paths)), None)
    return found.version if found is not None else None


# One import name, several distributions: the CPU-only TensorFlow wheel registers as tensorflow-cpu.
_DISTRIBUTIONS = {"tensorflow": ("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos")}


@functools.cache
def _version(dist: str) -> str | None:
    for name in _DISTRIBUTIONS.get(dist, (dist,)):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def _installed(dist: str) -> bool:
    return _version(dist) is not None


def channels_last(a, rank: int):  # type: ignore[no-untyped-def]
    """(N, C, *spatial) -> (N, *spatial, C), for frameworks that normalize the last axis."""
    import numpy as np

    return np.moveaxis(a, 1, -1) if rank > 2 else a


def channels_first(a, rank: int):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.moveaxis(a, -1, 1) if rank > 2 else a


# What a conversion path reports beside its outputs, one verdict per case (the Converters columns
# of the reports, in this order): the verdict fields of ConversionChecks (bnspec.case, beside the
# Result that carries them), so that a new verdict is one field.
CONVERSION_CHECKS = tuple(f.name for f in fields(ConversionChecks) if f.metadata.get("verdict"))


def conversion_verdicts(result: Result) -> dict[str, bool]:
    """The conversion checks a Result carries, as ``{check: verdict}`` (empty for a plain
    adapter)."""
    checks = result.conversion
    if checks is None:
        return {}
    return {k: v for k in CONVERSION_CHECKS if (v := getattr(checks, k)) is not None}
