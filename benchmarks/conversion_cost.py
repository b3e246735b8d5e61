"""What a conversion path costs beside its source framework's adapter, on the same cases.

Reads a run's ``results.jsonl`` (default: the committed ``reports/``) and, for every conversion
path, takes the cases that both it and its source adapter ran (same property and example, neither
not applicable nor from the result cache), and compares the seconds each spent on them (the
worker's own timing of every adapter call, shrinking included). Also each adapter's whole wall
time from ``summary.json`` (start-up and shut-down included).

    .venv/bin/python benchmarks/conversion_cost.py [RUN_DIR]

The issue-14 target: every path within 3x of its source on the same cases.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# conversion path -> the adapter of its source layer (same framework, same profile)
SOURCES = {
    "torch_onnx_ts_eval": "torch", "torch_onnx_ts_training": "torch", "torch_onnx_dynamo": "torch",
    "torch_onnx_onnx2torch": "torch", "torch_onnx17_onnx2torch": "torch", "torch_nobuco": "torch",
    "torch_onnx_onnx2tf": "torch",
    "flax_nnx_jax2onnx": "flax_nnx", "flax_linen_jax2onnx": "flax_linen",
    "flax_nnx_jax2onnx_onnx2torch": "flax_nnx",
    "keras3_tf2onnx": "keras_tf", "tf_keras_tf2onnx": "tf_keras_fused",
    "tf_keras_nonfused_tf2onnx": "tf_keras_nonfused",
}


def main(argv: list[str]) -> int:
    run = Path(argv[0]) if argv else Path(__file__).parents[1] / "reports"
    seconds: dict[str, dict[tuple[str, int], float]] = {}
    for line in (run / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["status"] == "not_applicable" or r.get("cached"):
            continue
        seconds.setdefault(r["adapter"], {})[(r["property"], r["example"])] = float(r.get("seconds") or 0.0)
    timing = json.loads((run / "summary.json").read_text())["timing"]["adapters"]
    print("| conversion path | source | cases both ran | path s | source s | ratio | path wall s | source wall s "
          "| wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for path, source in SOURCES.items():
        if path not in seconds or source not in seconds:
            continue
        both = sorted(set(seconds[path]) & set(seconds[source]))
        p = sum(seconds[path][k] for k in both)
        s = sum(seconds[source][k] for k in both)
        ratio = p / s if s else float("inf")
        worst = max(worst, ratio)
        print(f"| {path} | {source} | {len(both)} | {p:.2f} | {s:.3f} | {ratio:.0f}x | "
              f"{timing[path]['wall_seconds']:.1f} | {timing[source]['wall_seconds']:.1f} | "
              f"{timing[path]['wall_seconds'] / timing[source]['wall_seconds']:.1f}x |")
    print(f"\nworst ratio on the same cases: {worst:.1f}x (target: 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
