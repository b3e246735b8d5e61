"""A full default run over every installed adapter: wall time, split into framework start-up,
time inside framework calls and time in bnspec itself (judging, attribution, shrinking, IPC), for
--jobs 1 and --jobs 2.

    .venv/bin/python benchmarks/full_run.py [--repeat 3] [--jobs 1,2] [--examples 3]

Reads each run's summary.json `timing` section (per adapter: startup_seconds, framework_seconds,
wall_seconds, bnspec_seconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(jobs: int, examples: int, adapters: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        select = ["--adapters", adapters] if adapters else []
        proc = subprocess.run([sys.executable, "-m", "bnspec", "run", "--no-cache", "--jobs", str(jobs), "--examples",
                               str(examples), *select, "--out", tmp], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise SystemExit(proc.stderr)
        timing = json.loads((Path(tmp) / "summary.json").read_text())["timing"]["adapters"]
    total = sum(t["wall_seconds"] for t in timing.values())
    parts = {k: sum(t.get(k) or 0.0 for t in timing.values())
             for k in ("startup_seconds", "shutdown_seconds", "framework_seconds", "bnspec_seconds")}
    return {"wall_s": wall, "adapters": len(timing), "adapter_seconds": total, **parts,
            "bnspec_share": parts["bnspec_seconds"] / total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jobs", default="1,2")
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--adapters", help="comma-separated (default: every installed adapter)")
    ap.add_argument("--frameworks-only", action="store_true", help="leave the conversion paths out")
    args = ap.parse_args()
    adapters = args.adapters
    if args.frameworks_only:
        from importlib import metadata

        adapters = ",".join(sorted(ep.name for ep in metadata.entry_points(group="bnspec.adapters")
                                   if not ep.value.startswith("bnspec.adapters.converters")))
    medians = {}
    for jobs in [int(j) for j in args.jobs.split(",")]:
        runs = [one_run(jobs, args.examples, adapters) for _ in range(args.repeat)]
        med = {k: round(statistics.median(r[k] for r in runs), 3) for k in runs[0]}
        med["runs_wall_s"] = [round(r["wall_s"], 1) for r in runs]
        medians[jobs] = med
        print(json.dumps({"jobs": jobs, **med}), flush=True)
    if 1 in medians and 2 in medians:
        print(json.dumps({"speedup_jobs2_over_jobs1": round(medians[1]["wall_s"] / medians[2]["wall_s"], 2)}))


if __name__ == "__main__":
    main()
