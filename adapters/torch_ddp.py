"""``torch.nn.BatchNorm1d/2d/3d`` inside ``DistributedDataParallel``, one real process per replica
(torch.distributed over gloo, rendezvous through a file): the data-parallel setting most people
run first, where BatchNorm is *not* synchronized.

Each rank builds the layer from the case, wraps it in DDP (``broadcast_buffers`` at its default:
rank 0's buffers are broadcast at the start of every forward), and runs its shard of every step
(``Case.replicas``): y and dx are the shards' results in shard order, the running statistics are
rank 0's, and every rank's copy is in ``replica_running_mean``/``replica_running_var`` as read
after the step. dγ, dβ are what DDP leaves in ``.grad`` (every rank's, averaged: rank 0's is
reported). The backward of ``sum(y * dy)`` on each rank's shard.

Issue 15, phase 2 (a start): the adapter and its profile, confirmed against the reference by
tests/test_adapter_torch_ddp.py; not yet an entry point, so ``bnspec run`` and the reports do not
run it (``--adapter-path bnspec.adapters.torch_ddp:TORCH_DDP`` does, on cases with replicas).
``torch.nn.SyncBatchNorm`` is not here: its forward requires an accelerator (``SyncBatchNorm
expected input tensor to be on GPU``, torch/nn/modules/batchnorm.py::SyncBatchNorm.forward).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, StepResult
from bnspec.errors import UnsupportedFeature
from bnspec.profiles import Profile
from bnspec.profiles.torch import PYTORCH

_DDP = "torch/nn/parallel/distributed.py"
PYTORCH_DDP = Profile(
    name="pytorch_ddp",
    framework="torch",
    title="torch.nn.BatchNorm*d inside DistributedDataParallel (not synchronized)",
    semantics=PYTORCH.semantics.replace(replica_stats="none", replica_running="replica0",
                                        replica_param_grad="mean"),
    cite={
        **PYTORCH.cite,
        "replica_stats": "torch/nn/modules/batchnorm.py::_BatchNorm.forward (F.batch_norm on the "
        "rank's own input: DDP wraps the module without touching its forward)",
        "replica_running": f"{_DDP}::DistributedDataParallel._pre_forward -> _sync_buffers "
        "(broadcast_buffers: 'the process with rank 0 is considered the authoritative copy', "
        "synced at the start of every forward)",
        "replica_param_grad": "torch/distributed/algorithms/ddp_comm_hooks/default_hooks.py::"
        "allreduce_hook (tensor.div_(group_to_use.size()) before the all-reduce: the mean)",
    },
)


def _rank_main(rank: int, world: int, init_file: str, case: Case, out_dir: str) -> None:
    """One replica: the layer, DDP around it, its shard of every step; results pickled to out_dir."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        from bnspec.adapters.torch import TORCH_MODULE

        dt = getattr(torch, case.dtype)
        bn: Any = TORCH_MODULE.build_module(case)  # the torch adapter's own layer, as the converters use
        model = torch.nn.parallel.DistributedDataParallel(bn)
        lo, hi = case.shards[rank]
        outs = []
        for step in case.steps:
            model.train(step.mode == "train")
            x = torch.from_numpy(np.array(step.x[lo:hi], dtype=np.float64)).to(dt).requires_grad_(True)
            y = model(x)
            model.zero_grad(set_to_none=True)
            g = step.grad_output
            grads = g is not None
            if g is not None:
                dy = torch.from_numpy(np.array(g[lo:hi], dtype=np.float64)).to(dt)
                (y * dy).sum().backward()
            outs.append({
                "y": y.detach().double().numpy(),
                "dx": x.grad.double().numpy() if grads and x.grad is not None else None,
                "running_mean": bn.running_mean.detach().double().numpy().copy(),
                "running_var": bn.running_var.detach().double().numpy().copy(),
                "dgamma": bn.weight.grad.double().numpy().copy() if grads and case.affine else None,
                "dbeta": bn.bias.grad.double().numpy().copy() if grads and case.affine else None,
            })
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as fh:
            pickle.dump(outs, fh)
    finally:
        dist.destroy_process_group()


@dataclass
class TorchDDPAdapter(Adapter):
    capabilities: Capabilities = field(default_factory=lambda: Capabilities(
        ranks=(2, 3, 4, 5), dtypes=("float64", "float32"), gradients=True, cumulative_momentum=True,
        affine_off=True, untracked=False, frozen=False, initial_running=True, counter=True,
        notes="one process per replica (torch.distributed, gloo); a case without replicas, or "
        "with an empty one (a rank with no samples), is not applicable"))

    def setup(self) -> None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_gloo_available():
            raise ImportError("torch.distributed with the gloo backend is not available")

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        if case.replicas is None or len(case.replicas) < 2:
            raise UnsupportedFeature("no replicas: DistributedDataParallel needs a case split across 2+ ranks")
        if 0 in case.replicas:
            raise UnsupportedFeature("an empty replica: a rank with no samples cannot run BatchNorm")
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature("param_dtype != dtype: the layer is built in the input's dtype")
        import torch.multiprocessing as mp

        world = len(case.replicas)
        with tempfile.TemporaryDirectory(prefix="bnspec-ddp-") as tmp:
            mp.spawn(_rank_main, args=(world, os.path.join(tmp, "rendezvous"), case, tmp), nprocs=world,
                     join=True)
            ranks = []
            for r in range(world):
                with open(os.path.join(tmp, f"{r}.pkl"), "rb") as fh:
                    ranks.append(pickle.load(fh))
        steps = []
        for i in range(len(case.steps)):
            per = [rk[i] for rk in ranks]
            dx = None if per[0]["dx"] is None else np.concatenate([p["dx"] for p in per])
            steps.append(StepResult(
                y=np.concatenate([p["y"] for p in per]), dx=dx, dgamma=per[0]["dgamma"], dbeta=per[0]["dbeta"],
                running_mean=per[0]["running_mean"], running_var=per[0]["running_var"],
                replica_running_mean=np.stack([p["running_mean"] for p in per]),
                replica_running_var=np.stack([p["running_var"] for p in per])))
        import torch

        return Result(steps=steps, meta={"torch": torch.__version__, "backend": "gloo", "world_size": world})


TORCH_DDP = TorchDDPAdapter(name="torch_ddp", framework="torch", profile=PYTORCH_DDP,
                            description="torch.nn.BatchNorm*d in DistributedDataParallel, one process per replica")
