"""torch.nn.BatchNorm*d inside DistributedDataParallel, real processes over gloo (issue 15, phase 2
start): the ``pytorch_ddp`` profile's replica knobs, each confirmed by running DDP against the
reference, and each pinned: the observation does not conform with that knob flipped."""

from __future__ import annotations

import numpy as np
import pytest

from bnspec.case import make_case
from bnspec.errors import UnsupportedFeature
from bnspec.profiles.profile import validate
from bnspec.profiles.torch_data_parallel import PYTORCH_DDP
from bnspec.replicas import replica_case
from bnspec.tolerance import compare
from tests.harness import run

pytest.importorskip("torch")

DDP = "bnspec.adapters.torch_ddp:TORCH_DDP"
SEM = PYTORCH_DDP.semantics


def _uneven():
    # an uneven split with a one-sample rank (torch allows it in training: a 3-sample batch
    # over the replicas is not one value per channel on the other ranks, and rank 2's single
    # sample with spatial extent 2 is two values per channel)
    rng = np.random.default_rng(3)
    xs = [rng.normal(1.0, 2.0, (6, 2, 2)) for _ in range(3)]
    return make_case(xs, modes=["train", "train", "eval"], grad_outputs=[rng.normal(size=(6, 2, 2)) for _ in xs],
                     gamma=np.array([1.5, 0.5]), beta=np.array([0.1, -0.2]), running_mean=np.array([0.5, -0.5]),
                     running_var=np.array([1.5, 0.75]), eps=1e-3, momentum=0.25, replicas=(3, 2, 1))


@pytest.fixture(scope="module")
def observed():
    even = replica_case(np.random.default_rng(1), 0, replicas=2)
    uneven = _uneven()
    return {"even": (even, run(DDP, even)), "uneven": (uneven, run(DDP, uneven))}


def test_the_profile_is_valid_and_cites_its_replica_knobs():
    validate(PYTORCH_DDP)
    for knob in ("replica_stats", "replica_running", "replica_param_grad"):
        assert "torch/" in PYTORCH_DDP.cite[knob]


@pytest.mark.parametrize("split", ["even", "uneven"])
def test_ddp_conforms_to_pytorch_ddp(observed, split):
    case, result = observed[split]
    comparison = compare(case, SEM, result)
    assert comparison.ok, comparison.describe()


@pytest.mark.parametrize("knob, other", [
    ("replica_stats", "count_weighted"),  # DDP does not synchronize BatchNorm
    ("replica_running", "own"),  # rank 0's buffers are broadcast at every forward
    ("replica_param_grad", "sum"),  # DDP averages gradients over ranks
])
def test_each_replica_knob_is_pinned(observed, knob, other):
    case, result = observed["uneven"]
    assert not compare(case, SEM.replace(**{knob: other}), result).ok, f"{knob}={other!r} fits DDP too"


def test_a_case_without_replicas_or_with_an_empty_one_is_not_applicable():
    x = np.arange(8.0).reshape(4, 2)
    with pytest.raises(UnsupportedFeature, match="no replicas"):
        run(DDP, make_case([x]))
    with pytest.raises(UnsupportedFeature, match="empty replica"):
        run(DDP, make_case([x], replicas=(4, 0)))


def test_a_no_grad_eval_pass_between_training_steps_keeps_the_broadcast():
    # DDP's forward under no_grad sets require_forward_param_sync = False, so the next forward
    # skips its buffer broadcast (torch/nn/parallel/distributed.py::_post_forward); the eval pass
    # itself broadcast rank 0's copy first and updates nothing, so the skip changes no buffer:
    # the trajectory conforms to replica_running = replica0 and not to own
    from bnspec.properties import generate

    case = generate("replicas_steps", 0, 0)
    assert case.steps[12].mode == "eval" and case.steps[12].grad_output is None
    result = run(DDP, case)
    assert compare(case, SEM, result).ok
    assert not compare(case, SEM.replace(replica_running="own"), result).ok


def test_sync_batchnorm_is_not_applicable_without_cuda_with_torchs_own_refusal():
    # what profiles/torch_data_parallel.py's pytorch_sync says it cannot confirm here: torch
    # itself refuses a CPU tensor in SyncBatchNorm's training forward (the adapter's setup probe)
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA here: torch_sync runs instead")
    case = replica_case(np.random.default_rng(1), 0, replicas=2)
    with pytest.raises(UnsupportedFeature, match="needs CUDA.*SyncBatchNorm expected input tensor to be on GPU"):
        run("bnspec.adapters.torch_ddp:TORCH_SYNC", case)
