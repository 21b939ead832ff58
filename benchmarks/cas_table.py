"""Print the tables of benchmarks/cas_protocol.sh and benchmarks/low_data.sh as Markdown: mean
± sample standard deviation over the model seeds, validation beside test, and which setting the
validation accuracy picks (the test column is never used to choose).

    python benchmarks/cas_table.py runs/cas
"""

from __future__ import annotations

import json
import re
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
    """Per real share (low-<pct>pct-<option>[-e<E>]): each option beside real alone under the
    same epochs, the test difference with both spreads, and the option validation picks."""
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for low in sorted(out.glob("low-*")):
        name = re.fullmatch(r"low-(\d+pct)-(.+?)(?:-e(\d+))?", low.name)
        if name and (m := result(low)) is not None:
            pct, option, epochs = name.groups()
            groups.setdefault((pct, epochs or "5"), {})[option] = m
    if not groups:
        return
    print("\n### Low data (MNIST)\n")
    for (pct, epochs), ms in sorted(groups.items(), key=lambda kv: (float(kv[0][0][:-3]),
                                                                    kv[0][1])):
        first = ms.get("real") or next(iter(ms.values()))
        print(f"{pct} of the training images ({first['trained_on']['real_images']:,} real), "
              f"EPOCHS={epochs}; protocol of {'real alone' if 'real' in ms else 'the first'}: "
              f"{protocol(first)}.\n")
        print("| option | real share | generated weight | fine-tune epochs | validation accuracy "
              "| test accuracy | test minus real alone (points) |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        real = ms.get("real")
        for option, m in ms.items():
            t = m["trained_on"]
            diff = ""
            if real is not None and option != "real":
                d = 100 * (m["test_accuracy"] - real["test_accuracy"])
                spread = 100 * max(m.get("test_accuracy_std") or 0,
                                   real.get("test_accuracy_std") or 0)
                diff = f"{d:+.2f} ({'beyond' if abs(d) > spread else 'within'} the spread " \
                       f"{spread:.2f})"
            share = "1 (real only)" if t.get("real_only") else t["real_fraction"]
            print(f"| {option} | {share} | {t.get('generated_weight', 1.0)} | "
                  f"{t.get('finetune_epochs', 0)} | "
                  f"{pm(m, 'val_accuracy')} | {pm(m, 'test_accuracy')} | {diff} |")
        top = max(m["val_accuracy"] for m in ms.values())  # equal to 1e-6: float32 means
        best = [option for option, m in ms.items() if m["val_accuracy"] > top - 1e-6]
        print(f"\nChosen by validation accuracy: {' = '.join(best)}"
              f"{' (a tie: validation cannot choose)' if len(best) > 1 else ''}.\n")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/cas")
    cas_table(out)
    low_table(out)


if __name__ == "__main__":
    main()
