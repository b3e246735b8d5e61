"""The float64 NumPy reference against torch's float32 CPU BatchNorm on the same 1M-element
input, forward + backward (one training step with gradients). Target: at least half torch's
speed. Both run single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1)), as workers do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reference_speed.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from bnspec.case import make_case  # noqa: E402
from bnspec.profiles import get_semantics  # noqa: E402
from bnspec.reference import reference  # noqa: E402

SHAPE = (64, 64, 16, 16)  # 1,048,576 elements


def timed(fn, repeat: int) -> float:
    fn()
    return statistics.median(_once(fn) for _ in range(repeat))


def _once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, SHAPE)
    g = rng.normal(0.0, 1.0, SHAPE)
    case = make_case(x, modes="train", grad_outputs=[g], dtype="float64")
    sem = get_semantics("pytorch")
    t_ref = timed(lambda: reference(case, sem), args.repeat)

    import torch

    torch.set_num_threads(1)
    bn = torch.nn.BatchNorm2d(SHAPE[1])
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    gt = torch.tensor(g, dtype=torch.float32)

    def torch_step() -> None:
        xt.grad = None
        bn.zero_grad()
        bn(xt).backward(gt)

    t_torch = timed(torch_step, args.repeat)
    print(json.dumps({"elements": int(np.prod(SHAPE)), "reference_float64_s": round(t_ref, 4),
                      "torch_float32_s": round(t_torch, 4), "reference_speed_vs_torch": round(t_torch / t_ref, 3),
                      "target_at_least": 0.5, "torch": torch.__version__, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
