"""The float64 NumPy reference against torch's float32 CPU BatchNorm on the same 1M-element
input, forward + backward (one training step with gradients). Target: at least half torch's
speed. Both run single-threaded (OMP_NUM_THREADS=1, torch.set_num_threads(1)), as workers do.

The two are timed in alternating rounds (one reference step, one torch step), so that a drift
of the machine's speed during the run (a shared VM) moves both medians alike.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/reference_speed.py [--repeat 31]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1]))

from bnspec.case import make_case  # noqa: E402
from bnspec.profiles import get_semantics  # noqa: E402
from bnspec.reference import reference  # noqa: E402

SHAPE = (64, 64, 16, 16)  # 1,048,576 elements


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def alternate(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, dict[str, float]]:
    """Median and quartiles of each function's time (seconds), and its minor page faults per
    call, over ``repeat`` alternating rounds after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    faults = dict.fromkeys(fns, 0)
    for _ in range(repeat):
        for name, fn in fns.items():
            f0, t0 = _faults(), time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            faults[name] += _faults() - f0
    out = {}
    for name, ts in times.items():
        q1, med, q3 = statistics.quantiles(ts, n=4)
        out[name] = {"median_s": med, "q1_s": q1, "q3_s": q3, "page_faults_per_call": faults[name] / repeat}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=31)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, SHAPE)
    g = rng.normal(0.0, 1.0, SHAPE)
    case = make_case(x, modes="train", grad_outputs=[g], dtype="float64")
    sem = get_semantics("pytorch")

    import torch

    torch.set_num_threads(1)
    bn = torch.nn.BatchNorm2d(SHAPE[1])
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    gt = torch.tensor(g, dtype=torch.float32)

    def torch_step() -> None:
        xt.grad = None
        bn.zero_grad()
        bn(xt).backward(gt)

    stats = alternate({"reference_float64": lambda: reference(case, sem), "torch_float32": torch_step},
                      args.repeat)
    ref, tor = stats["reference_float64"], stats["torch_float32"]
    print(json.dumps({
        "elements": int(np.prod(SHAPE)), "repeat": args.repeat,
        "reference_float64_s": round(ref["median_s"], 5),
        "reference_iqr_s": [round(ref["q1_s"], 5), round(ref["q3_s"], 5)],
        "torch_float32_s": round(tor["median_s"], 5),
        "torch_iqr_s": [round(tor["q1_s"], 5), round(tor["q3_s"], 5)],
        "reference_speed_vs_torch": round(tor["median_s"] / ref["median_s"], 3),
        "target_at_least": 0.5,
        "page_faults_per_call": {k: round(v["page_faults_per_call"], 1) for k, v in stats.items()},
        "torch": torch.__version__, "numpy": np.__version__,
    }))


if __name__ == "__main__":
    main()
