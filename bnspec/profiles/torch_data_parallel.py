"""PyTorch data-parallel: ``torch.nn.BatchNorm*d`` inside ``DistributedDataParallel`` (each rank
normalizes with its own shard; rank 0's buffers broadcast) and ``torch.nn.SyncBatchNorm`` (the
replicas' statistics combined by count). Each is the one-device ``pytorch`` profile plus the
replica knobs it decides, cited."""

from __future__ import annotations

from bnspec.profiles.profile import Profile
from bnspec.profiles.torch import PYTORCH

_DDP = "torch/nn/parallel/distributed.py"
_SYNC = "torch/nn/modules/_functions.py::SyncBatchNorm"
_GRAD_MEAN = ("torch/distributed/algorithms/ddp_comm_hooks/default_hooks.py::allreduce_hook "
              "(tensor.div_(group_to_use.size()) before the all-reduce: the mean)")

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
        "replica_param_grad": _GRAD_MEAN,
    },
    confirmed="tests/test_adapter_torch_ddp.py runs DDP over gloo, one process per rank, on an even "
    "and an uneven split with a one-sample rank; each replica knob set here is pinned by its flip "
    "failing",
)

PYTORCH_SYNC = Profile(
    name="pytorch_sync",
    framework="torch",
    title="torch.nn.SyncBatchNorm inside DistributedDataParallel (an accelerator only)",
    semantics=PYTORCH.semantics.replace(replica_stats="count_weighted", replica_var="pairwise",
                                        replica_running="synchronized", replica_param_grad="mean"),
    cite={
        **PYTORCH.cite,
        "replica_stats": f"{_SYNC}.forward (all_gather of each rank's mean, invstd and count; "
        "torch.batch_norm_gather_stats_with_counts combines them by count: 'count could be different "
        "across ranks, simple all reduce op can not give correct results')",
        "replica_var": "aten/src/ATen/native/cuda/Normalization.cuh::batch_norm_reduce_statistics_kernel "
        "(merges the ranks' (count, mean, var*count) one at a time: Chan et al.'s pairwise update)",
        "replica_running": "aten/src/ATen/native/cuda/Normalization.cuh::batch_norm_reduce_statistics_kernel "
        "(every rank updates its buffers from the gathered global statistics, unbiased by the global "
        "count)",
        "replica_param_grad": f"{_SYNC}.backward ('synchronizing of grad_weight / grad_bias is not "
        f"needed as distributed training would handle all reduce'), then {_GRAD_MEAN}",
    },
    confirmed="not confirmed by running on this machine: SyncBatchNorm's training forward needs an "
    "accelerator (torch/nn/modules/batchnorm.py::SyncBatchNorm.forward raises 'SyncBatchNorm "
    "expected input tensor to be on GPU' on CPU, and aten::batch_norm_stats has no CPU kernel); "
    "tests/test_adapter_torch_ddp.py confirms that refusal, and the torch_sync adapter runs it "
    "under --device cuda",
)

PROFILES = [PYTORCH_DDP, PYTORCH_SYNC]
