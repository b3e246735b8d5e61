"""Sensitivity: how many generated cases until each single-knob wrong implementation is caught.

Each wrong implementation (tests/fixtures/bad_adapters.py: one knob changed, the correct profile
declared) is run in-process on the cases of the default budget (14 properties x 3 examples) in
round-robin order (example 0 of every property, then example 1, ...), and judged exactly as
`bnspec run` judges. Reported per knob: the median (and worst) number of cases until the first
non-conformance over seeds 0..9, the seconds that took, and whether the attribution named the knob.

    .venv/bin/python benchmarks/sensitivity.py [--seeds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1]))

from bnspec.attribution import explain  # noqa: E402
from bnspec.judging import judge  # noqa: E402
from bnspec.observe import observe  # noqa: E402
from bnspec.properties import PROPERTIES, generate  # noqa: E402
from tests.fixtures import bad_adapters as bad  # noqa: E402

WRONG = ["EPS_OUTSIDE", "MOMENTUM_CONVENTION", "BIASED_RUNNING_VAR", "UNBIASED_NORMALIZE", "NO_DEBIAS",
         "ONE_PASS", "FLOAT16_REDUCTIONS", "EPS_FLOOR", "FIRST_REPLACE", "TRAIN_RUNNING", "EVAL_BATCH",
         "FROZEN_BATCH", "NO_UPDATE"]
EXAMPLES = 3  # the default budget of `bnspec run`


def first_catch(adapter, seed: int) -> tuple[int | None, float, bool]:
    declared = adapter.declared_profile().semantics
    knob = next(iter(adapter.wrong))
    t0 = time.perf_counter()
    n = 0
    for index in range(EXAMPLES):
        for prop in PROPERTIES:
            case = generate(prop, seed, index)
            obs = observe(adapter, case)  # in process, reported as the worker reports it
            if not obs.judgeable:
                continue
            n += 1
            if not judge(case, declared, obs).ok:
                named = explain(case, declared, obs).flips(knob)
                return n, time.perf_counter() - t0, named
    return None, time.perf_counter() - t0, False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for name in WRONG:
        adapter = getattr(bad, name)
        runs = [first_catch(adapter, seed) for seed in range(args.seeds)]
        caught = [n for n, _, _ in runs if n is not None]
        rows.append({
            "wrong": name, "knob": next(iter(adapter.wrong)), "profile": adapter.profile,
            "caught": f"{len(caught)}/{len(runs)}",
            "median_cases": statistics.median(caught) if caught else None,
            "max_cases": max(caught) if caught else None,
            "median_seconds": round(statistics.median(t for _, t, _ in runs), 3),
            "attributed": f"{sum(a for _, _, a in runs)}/{len(runs)}",
        })
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
