"""``torch.nn.BatchNorm1d/2d/3d`` inside ``DistributedDataParallel``, one real process per replica
(torch.distributed over gloo, rendezvous through a file): the data-parallel setting most people
run first, where BatchNorm is *not* synchronized; and ``torch.nn.SyncBatchNorm`` in the same
harness, which needs an accelerator.

Each rank builds the layer from the case, wraps it in DDP (``broadcast_buffers`` at its default:
rank 0's buffers are broadcast at the start of every forward), and runs its shard of every step
(``Case.replicas``): y and dx are the shards' results in shard order, the running statistics are
rank 0's, and every rank's copy is in ``replica_running_mean``/``replica_running_var`` as read
after the step. dγ, dβ are what DDP leaves in ``.grad`` (every rank's, averaged: rank 0's is
reported). The backward of ``sum(y * dy)`` on each rank's shard. An eval step without gradients
runs under ``torch.no_grad()``, as a validation loop does. A rank that raises (one value per
channel on its shard) stops the others; the error is reported as that rank's.

``torch.nn.SyncBatchNorm`` refuses a CPU tensor in training (torch/nn/modules/batchnorm.py::
SyncBatchNorm.forward: "SyncBatchNorm expected input tensor to be on GPU ..."), and its kernels
(aten::batch_norm_stats, batch_norm_gather_stats_with_counts) have no CPU implementation: on a
machine without CUDA every case is not applicable, with the message the setup probe got from
torch itself. With CUDA it runs the ranks over NCCL, one GPU each.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bnspec.adapter import Adapter, Capabilities
from bnspec.case import Case, Result, StepResult
from bnspec.errors import FrameworkError, UnsupportedFeature


def _rank_main(rank: int, world: int, init_file: str, case: Case, out_dir: str, sync: bool, device: str) -> None:
    """One replica: the layer, DDP around it, its shard of every step; results pickled to out_dir.
    Ends in os._exit: a gloo process group's destructor can deadlock joining its threads when
    DDP's Reducer is freed at exit (seen here: ranks stuck in ~ProcessGroupGloo for minutes)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("nccl" if device == "cuda" else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world)
        from bnspec.adapters.torch import TORCH_MODULE

        dev = torch.device(device, rank) if device == "cuda" else torch.device("cpu")
        dt = getattr(torch, case.dtype)
        bn: Any = TORCH_MODULE.build_module(case)  # the torch adapter's own layer, as the converters use
        if sync:
            bn = torch.nn.SyncBatchNorm.convert_sync_batchnorm(bn)
        bn = bn.to(dev)
        model = torch.nn.parallel.DistributedDataParallel(bn)
        lo, hi = case.shards[rank]
        outs = []
        for step in case.steps:
            model.train(step.mode == "train")
            g = step.grad_output
            grads = g is not None
            # an eval step without gradients runs as a validation loop does, under no_grad: DDP
            # then skips the buffer broadcast at the next forward (require_forward_param_sync)
            x = torch.from_numpy(np.array(step.x[lo:hi], dtype=np.float64)).to(dev, dt).requires_grad_(grads)
            with torch.no_grad() if step.mode == "eval" and not grads else contextlib.nullcontext():
                y = model(x)
            model.zero_grad(set_to_none=True)
            if g is not None:
                dy = torch.from_numpy(np.array(g[lo:hi], dtype=np.float64)).to(dev, dt)
                (y * dy).sum().backward()
            outs.append({
                "y": y.detach().double().cpu().numpy(),
                "dx": x.grad.double().cpu().numpy() if grads and x.grad is not None else None,
                "running_mean": bn.running_mean.detach().double().cpu().numpy().copy(),
                "running_var": bn.running_var.detach().double().cpu().numpy().copy(),
                "dgamma": bn.weight.grad.double().cpu().numpy().copy() if grads and case.affine else None,
                "dbeta": bn.bias.grad.double().cpu().numpy().copy() if grads and case.affine else None,
            })
        with open(os.path.join(out_dir, f"{rank}.pkl"), "wb") as fh:
            pickle.dump(outs, fh)
        dist.barrier()  # every rank has its results: none exits while another still talks to it
    except Exception as exc:  # noqa: BLE001 - the framework's error is the result; the others are stopped
        with open(os.path.join(out_dir, f"{rank}.err"), "wb") as fh:
            pickle.dump((type(exc).__name__, str(exc)), fh)
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _caps(notes: str) -> Capabilities:
    return Capabilities(
        ranks=(2, 3, 4, 5), dtypes=("float64", "float32"), gradients=True, cumulative_momentum=True,
        affine_off=True, untracked=False, frozen=False, initial_running=True, counter=True, replicas=True,
        notes=notes)


@dataclass
class TorchDDPAdapter(Adapter):
    sync: bool = False  # torch.nn.SyncBatchNorm.convert_sync_batchnorm around the layer
    capabilities: Capabilities = field(default_factory=lambda: _caps(
        "one process per replica (torch.distributed, gloo); a case without replicas, or with an "
        "empty one (a rank with no samples), is not applicable"))

    def setup(self) -> None:
        import multiprocessing

        import torch
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_gloo_available():
            raise ImportError("torch.distributed with the gloo backend is not available")
        self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self._refusal = self._probe_sync() if self.sync and self._device == "cpu" else None
        # The ranks fork from a forkserver that has imported what a rank needs, torch._dynamo
        # included (DistributedDataParallel.__init__ imports it: ~4 s per rank and case
        # otherwise); a single-threaded server, where forking this threaded worker can deadlock.
        multiprocessing.set_forkserver_preload(["torch", "torch._dynamo", "torch.distributed",
                                                "bnspec.adapters.torch", "bnspec.adapters.torch_ddp"])

    @staticmethod
    def _probe_sync() -> str:
        """What torch says when SyncBatchNorm trains on a CPU tensor (a one-rank gloo group)."""
        import torch
        import torch.distributed as dist

        with tempfile.TemporaryDirectory(prefix="bnspec-sync-") as tmp:
            dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
            try:
                torch.nn.SyncBatchNorm(2).train()(torch.ones(4, 2))
            except ValueError as exc:
                return f"torch.nn.SyncBatchNorm on a CPU tensor: {exc}"
            finally:
                dist.destroy_process_group()
        return ""

    def run(self, case: Case) -> Result:
        self.check_supported(case)
        if self._refusal:
            raise UnsupportedFeature(f"needs CUDA (this machine has none): {self._refusal}")
        if case.replicas is None or len(case.replicas) < 2:
            raise UnsupportedFeature("no replicas: DistributedDataParallel needs a case split across 2+ ranks")
        if 0 in case.replicas:
            raise UnsupportedFeature("an empty replica: a rank with no samples cannot run BatchNorm")
        if case.param_dtype != case.dtype:
            raise UnsupportedFeature("param_dtype != dtype: the layer is built in the input's dtype")
        world = len(case.replicas)
        if self._device == "cuda":
            import torch

            if torch.cuda.device_count() < world:
                raise UnsupportedFeature(f"{world} replicas need {world} GPUs (NCCL: one per rank); "
                                         f"{torch.cuda.device_count()} here")
        ranks = self._spawn(case, world)
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

        return Result(steps=steps, meta={"torch": torch.__version__, "world_size": world,
                                         "backend": "nccl" if self._device == "cuda" else "gloo"})

    def _spawn(self, case: Case, world: int) -> list[list[dict[str, Any]]]:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="bnspec-ddp-") as tmp:
            try:
                mp.start_processes(_rank_main, args=(world, os.path.join(tmp, "rendezvous"), case, tmp, self.sync,
                                                     self._device), nprocs=world, join=True,
                                   start_method="forkserver")
            except mp.ProcessExitedException:
                for r in range(world):
                    err = os.path.join(tmp, f"{r}.err")
                    if os.path.exists(err):
                        with open(err, "rb") as fh:
                            type_name, message = pickle.load(fh)
                        raise FrameworkError(type_name, f"rank {r}: {message}") from None
                raise
            ranks = []
            for r in range(world):
                with open(os.path.join(tmp, f"{r}.pkl"), "rb") as fh:
                    ranks.append(pickle.load(fh))
        return ranks


TORCH_DDP = TorchDDPAdapter(name="torch_ddp", framework="torch", profile="pytorch_ddp",
                            description="torch.nn.BatchNorm*d in DistributedDataParallel, one process per replica")
TORCH_SYNC = TorchDDPAdapter(
    name="torch_sync", framework="torch", profile="pytorch_sync", sync=True,
    description="torch.nn.SyncBatchNorm in DistributedDataParallel, one process (and GPU) per replica",
    capabilities=_caps("one process and one CUDA device per replica (NCCL); SyncBatchNorm does not "
                       "train on CPU tensors: not applicable on a machine without CUDA"))
