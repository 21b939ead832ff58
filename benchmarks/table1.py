"""The paper's Table 1 across independently trained runs: FID rows of several jobs/evaluate.py
reports (one per run, all judged by one neutral network), mean +- std across the runs, and
whether Recon vs Gen < Org vs Recon holds in each.

    .venv/bin/python benchmarks/table1.py runs/table1/report-seed0 runs/table1/report-seed1 \\
        runs/table1/report-seed2

benchmarks/table1.sh trains the runs and writes the reports. The reports must share the neutral
network (the same cache folder, architecture and test accuracy) and the feature space; otherwise
their FIDs are in different units and this refuses them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROWS = [("org_vs_gen", "Org vs Gen (n = 2)", 16.3), ("org_vs_recon", "Org vs Recon", 13.9),
        ("recon_vs_gen", "Recon vs Gen", 3.03), ("org_vs_org", "Org vs Org (sampling floor)", None)]


def load(report: Path) -> dict:
    path = report / "metrics.json"
    if not path.is_file():
        sys.exit(f"{path} is missing: run jobs/evaluate.py --out {report} first")
    return json.loads(path.read_text())


def judge(m: dict) -> tuple:
    n = m["neutral"]
    return (n["architecture"], round(n["test_accuracy"], 6), n["parameters"],
            m["fid"]["features"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", type=Path, nargs="+", help="jobs/evaluate.py output folders")
    args = p.parse_args()
    ms = [load(r) for r in args.reports]
    judges = {judge(m) for m in ms}
    if len(judges) != 1:
        sys.exit(f"the reports were judged by different neutral networks or features: {judges}; "
                 "evaluate every run with one --neutral-cache and the same --neutral-* flags")
    arch, acc, params, features = judges.pop()
    epochs = len(ms[0]["neutral"]["history"])
    print(f"neutral network: {arch}, {params:,} parameters, {epochs} epochs, test accuracy "
          f"{acc:.4f}; features: {features}; each FID the mean of "
          f"{ms[0]['fid']['rows']['org_vs_gen']['seeds']} subsamples of "
          f"{ms[0]['fid']['rows']['org_vs_gen']['sample_size']:,} images a side\n")
    print("| FID | " + " | ".join(f"run {i} ({Path(m['run']).name})" for i, m in enumerate(ms))
          + " | mean ± std across runs | paper (MNIST, Inception) |")
    print("|---|" + "---|" * len(ms) + "---|---|")
    means = {}
    for key, name, paper in ROWS:
        vals = np.array([m["fid"]["rows"][key]["mean"] for m in ms])
        means[name] = vals.mean()
        std = vals.std(ddof=1) if len(vals) > 1 else 0.0
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) +
              f" | **{vals.mean():.3f} ± {std:.3f}** | {paper if paper is not None else '–'} |")
    holds = [m["fid"]["rows"]["recon_vs_gen"]["mean"] < m["fid"]["rows"]["org_vs_recon"]["mean"]
             for m in ms]
    print("| Recon vs Gen < Org vs Recon (the paper's claim) | " +
          " | ".join("yes" if h else "no" for h in holds) + f" | {sum(holds)} of {len(ms)} | yes |")
    order = " < ".join(sorted(means, key=means.get))
    print(f"\norder of the rows by their mean: {order}")


if __name__ == "__main__":
    main()
