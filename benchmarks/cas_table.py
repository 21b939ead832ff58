"""Print the CAS and low-data tables of benchmarks/cas_mnist.sh as Markdown.

    python benchmarks/cas_table.py runs/issue14
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def acc(folder: Path) -> float | None:
    f = folder / "metrics.json"
    return json.loads(f.read_text())["test_accuracy"] if f.is_file() else None


def fmt(v: float | None) -> str:
    return "(not run)" if v is None else f"{v:.4f}"


def describe(gen: Path) -> str:
    """What a generated folder holds, from its job.json and summary.json."""
    spec = json.loads((gen / "job.json").read_text())["spec"]
    summary = json.loads((gen / "summary.json").read_text())
    n = ",".join(map(str, spec["n_parents"]))
    counts = "the real per-class counts" if spec.get("class_weights") else "balanced"
    text = f"{summary['requested']:,} generations ({counts}), n = {n}, {spec['weights']}"
    if spec.get("novelty_quantile"):
        removed = sum(summary["novelty_rejected_per_class"].values())
        text += (f", novelty step q = {spec['novelty_quantile']} "
                 f"({removed:,} near-copies rejected)")
    return text


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/issue14")
    real = acc(out / "cas-real")
    print("### Classification Accuracy Score (MNIST)\n")
    print("| trained on | test accuracy | CAS / real |")
    print("| --- | --- | --- |")
    print(f"| real training images (54,000) | {fmt(real)} | 1 |")
    for cas in sorted(out.glob("cas-n*")):
        a = acc(cas)
        ratio = f"{a / real:.4f}" if a is not None and real else ""
        print(f"| {describe(out / cas.name.replace('cas-', 'gen-', 1))} | {fmt(a)} | {ratio} |")
    print("\n### Low data (MNIST)\n")
    print("| real training images | real only | real + 54,000 generations (half of every batch) "
          "| change |")
    print("| --- | --- | --- | --- |")
    for pct, n in ((1, 540), (10, 5400)):
        r, m = acc(out / f"low-{pct}pct-real"), acc(out / f"low-{pct}pct-mixed")
        change = f"{m - r:+.4f}" if r is not None and m is not None else ""
        print(f"| {pct}% ({n}) | {fmt(r)} | {fmt(m)} | {change} |")


if __name__ == "__main__":
    main()
