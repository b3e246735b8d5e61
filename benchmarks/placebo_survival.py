"""Placebo survival: do the explanations bnspec names hold up on other seeds?

An explanation is named only when its flipped profile accounts for the observation and rejects
the placebos of its own expected result (the observation scaled, shifted, zeroed, a running
statistic multiplied: bnspec.attribution). This benchmark runs ``bnspec run`` with the report's
defaults (``--examples 2``) over SEEDS seeds and tallies, for every named explanation of every
non-conforming case, the two margins the engine records (results.jsonl ``margins``):

- ``uses``: the share of its bound the observation uses under the explanation (must be <= 1);
- ``placebo``: how many times its bound the nearest placebo misses by (must be > 1).

An explanation *survives* when both hold. The table counts explanations per seed, how many
survive, the largest ``uses`` and the smallest ``placebo`` ratio, and names any that do not.

    .venv/bin/python benchmarks/placebo_survival.py [--seeds 10] [--adapters a,b] [--out DIR]

Each seed's run is kept under ``--out`` (default: a temporary folder); the cache is bypassed
(``--no-cache``) so every seed is computed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _num(v: Any) -> float:
    return float(v) if v is not None else math.nan


def tally(results: Path) -> dict[str, Any]:
    """Explanations named in one run's results.jsonl and how their margins stand."""
    named = survived = 0
    worst_uses, least_placebo = 0.0, math.inf
    failing: list[str] = []
    for line in results.read_text().splitlines():
        rec = json.loads(line)
        if not rec.get("explanation"):
            continue
        for i, margin in enumerate(rec.get("margins") or []):
            uses, placebo = _num(margin[0]), _num(margin[1] if len(margin) > 1 else None)
            named += 1
            ok = uses <= 1.0 and (math.isnan(placebo) or placebo > 1.0)
            survived += ok
            if not math.isnan(uses):
                worst_uses = max(worst_uses, uses)
            if not math.isnan(placebo):
                least_placebo = min(least_placebo, placebo)
            if not ok:
                failing.append(f"{rec['adapter']} {rec['property']}[{rec['example']}] alternative {i}: "
                               f"uses {uses:.3g}, placebo {placebo:.3g}")
    return {"named": named, "survived": survived, "worst_uses": worst_uses,
            "least_placebo": least_placebo, "failing": failing}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0, help="start here (resume a series in --out)")
    ap.add_argument("--adapters", default=None, help="comma-separated (default: every installed one)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bnspec-placebo-"))
    rows = []
    for seed in range(args.first_seed, args.seeds):
        run_dir = out / f"seed{seed}"
        cmd = [sys.executable, "-m", "bnspec", "run", "--examples", "2", "--jobs", str(args.jobs),
               "--seed", str(seed), "--no-cache", "--out", str(run_dir)]
        if args.adapters:
            cmd += ["--adapters", args.adapters]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            print(f"seed {seed}: bnspec run exited {proc.returncode}: {proc.stderr.strip()[-400:]}", file=sys.stderr)
            return 2  # a seed that did not run is not a count: stop rather than average around it
        row = {"seed": seed, "seconds": round(time.monotonic() - t0, 1), **tally(run_dir / "results.jsonl")}
        rows.append(row)
        print(f"seed {seed}: {row['survived']}/{row['named']} explanations survive; largest share of a bound "
              f"{row['worst_uses']:.3g}; nearest placebo {row['least_placebo']:.3g}x its bound ({row['seconds']} s)",
              flush=True)
        for f in row["failing"]:
            print(f"  does not survive: {f}", flush=True)
    named = sum(r["named"] for r in rows)
    survived = sum(r["survived"] for r in rows)
    print(f"\n{args.seeds} seeds: {survived}/{named} explanations survive their placebo checks; "
          f"largest share of a bound {max(r['worst_uses'] for r in rows):.3g}; nearest placebo "
          f"{min(r['least_placebo'] for r in rows):.3g}x its bound. Runs in {out}")
    (out / "placebo_survival.json").write_text(json.dumps(rows, indent=2, default=str))
    return 0 if survived == named else 1


if __name__ == "__main__":
    sys.exit(main())
