"""The source side of the torch paths: the same ``torch.nn.BatchNorm*d`` the ``torch`` adapter
builds, a snapshot to check that a conversion leaves it untouched, and its trainable parameters."""

from __future__ import annotations

from typing import Any

import numpy as np

from bnspec.case import Case


def source_module(case: Case) -> Any:
    from bnspec.adapters.torch import TORCH_MODULE

    return TORCH_MODULE.build_module(case)


def snapshot(module: Any) -> dict[str, Any]:
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    state["<training>"] = module.training
    return state


def changes(module: Any, before: dict[str, Any]) -> list[str]:
    """Names whose values (bit for bit, NaN equal to NaN) or mode differ from ``before``."""
    import torch

    after = snapshot(module)
    changed = []
    for k in sorted(set(before) | set(after)):
        a, b = before.get(k), after.get(k)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(
                a.view(-1).view(torch.uint8) if a.is_floating_point() else a,
                b.view(-1).view(torch.uint8) if b.is_floating_point() else b,
            )
        else:
            same = a == b
        if not same:
            changed.append(k)
    return changed


def trainable(module: Any) -> dict[str, int]:
    return {n: int(p.numel()) for n, p in module.named_parameters() if p.requires_grad}


def example_input(case: Case, x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float64)).to(getattr(torch, case.dtype))
