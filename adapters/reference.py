"""bnspec's own float64 reference as an adapter, so the machinery is tested end to end."""

from __future__ import annotations

from dataclasses import dataclass, field

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result
from bnspec.reference import reference

_ALL = Capabilities(
    dtypes=("float64", "float32", "float16", "bfloat16"),
    gradients=True,
    cumulative_momentum=True,
    frozen=True,
    untracked=True,
    counter=True,
    replicas=True,
    notes="the exact float64 semantics of the declared profile",
)


@dataclass
class ReferenceAdapter(Adapter):
    capabilities: Capabilities = field(default_factory=lambda: _ALL)

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        profile = self.declared_profile()
        semantics = profile.semantics
        if any(s.frozen for s in case.steps) and semantics.frozen_train_stats is None:
            from bnspec.errors import UnsupportedFeature

            raise UnsupportedFeature(f"profile {profile.name} has no frozen layer")
        return reference(case, semantics)

    def snippet(self, case: Case) -> str:
        return (
            "from bnspec.case import Case\nfrom bnspec.profiles import get_semantics\n"
            "from bnspec.reference import reference\n"
            f"result = reference(case, get_semantics({self.declared_profile().name!r}))"
        )


ADAPTER = ReferenceAdapter(
    name="reference",
    framework="bnspec",
    profile="pytorch",
    description="bnspec's float64 reference under the pytorch profile",
)
