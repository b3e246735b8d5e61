"""`bnspec --help` and `bnspec list` against `python -c pass`: the CLI must stay within 0.3 s of
a bare interpreter (no framework is imported to list adapters).

    .venv/bin/python benchmarks/startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "bnspec --help": [sys.executable, "-m", "bnspec", "--help"],
    "bnspec list": [sys.executable, "-m", "bnspec", "list"],
    "bnspec list --json": [sys.executable, "-m", "bnspec", "list", "--json"],
}


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    for cmd in COMMANDS.values():  # warm the page cache once
        wall(cmd)
    medians = {name: statistics.median(wall(cmd) for _ in range(args.repeat)) for name, cmd in COMMANDS.items()}
    base = medians["python -c pass"]
    for name, m in medians.items():
        print(json.dumps({"command": name, "median_s": round(m, 3), "over_python_s": round(m - base, 3),
                          "within_0.3s": m - base <= 0.3}))


if __name__ == "__main__":
    main()
