"""Print the tables of benchmarks/cas_protocol.sh and benchmarks/low_data.sh as Markdown: mean
± sample standard deviation over the model seeds, validation beside test, and which setting the
validation accuracy picks (the test column is never used to choose).

    python benchmarks/cas_table.py runs/cas
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def result(folder: Path) -> dict | None:
    f = folder / "metrics.json"
    return json.loads(f.read_text()) if f.is_file() else None


def pm(m: dict | None, key: str) -> str:
    if m is None:
        return "(not run)"
    std = m.get(f"{key}_std")
    return f"{m[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


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


def protocol(m: dict) -> str:
    train = m["training"][0] if isinstance(m["training"], list) else m["training"]
    return (f"{m['network']}, {train['epochs']} epochs, batch {train['batch_size']}, seeds "
            f"{' '.join(map(str, m['protocol']['seeds']))}; kept: {m['protocol']['selection']} "
            f"({m['protocol']['validation_images']:,} validation images)")


def cas_table(out: Path) -> None:
    real = result(out / "cas-real")
    if real is None:
        return
    print("### Classification Accuracy Score (MNIST)\n")
    print(f"Protocol: {protocol(real)}.\n")
    print("| trained on | validation accuracy | test accuracy | test gap to real (points) |")
    print("| --- | --- | --- | --- |")
    print(f"| real training images ({real['trained_on']['real_images']:,}) | {pm(real, 'val_accuracy')}"
          f" | {pm(real, 'test_accuracy')} | 0 |")
    rows = [(cas, result(cas)) for cas in sorted(out.glob("cas-n*"))]
    for cas, m in rows:
        gap = f"{100 * (real['test_accuracy'] - m['test_accuracy']):.2f}" if m else ""
        print(f"| {describe(out / cas.name.replace('cas-', 'gen-', 1))} | {pm(m, 'val_accuracy')} "
              f"| {pm(m, 'test_accuracy')} | {gap} |")
    done = [(m["val_accuracy"], cas.name) for cas, m in rows if m]
    if done:
        print(f"\nChosen by validation accuracy: {max(done)[1]}.")


def low_table(out: Path) -> None:
    lows = sorted(out.glob("low-*"))
    if not lows:
        return
    print("\n### Low data (MNIST)\n")
    print("| result | real images | real share | fine-tune epochs | validation accuracy "
          "| test accuracy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for low in lows:
        m = result(low)
        if m:
            t = m["trained_on"]
            print(f"| {low.name} | {t['real_images']:,} | {t['real_fraction']} | "
                  f"{t.get('finetune_epochs', 0)} | {pm(m, 'val_accuracy')} | "
                  f"{pm(m, 'test_accuracy')} |")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cas")
    cas_table(out)
    low_table(out)


if __name__ == "__main__":
    main()
