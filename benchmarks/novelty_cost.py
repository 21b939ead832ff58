"""The novelty step: what it costs in mass generation and what it removes.

    python benchmarks/novelty_cost.py --run runs/issue13/judge --count 100_000 --quantile 0.01

1. Cost: jobs/mass_generate.py run end to end (its own local Ray, default workers) with and
   without --novelty-quantile, alternating, --repeat times each, in child processes; images/s
   from each job's summary.json, and the ratio with / without (the target is >= 0.8).
2. Removal: --candidates candidates per setting (uniform n = 2, 3, 5 and Dirichlet(1) weights
   with n = 2 and 3) through ConvexGenerator with the novelty step on: the share of those that
   passed both confidence steps and were rejected as near-copies, overall and per class.
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

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = [(2, "uniform"), (3, "uniform"), (5, "uniform"), (2, "dirichlet:1"), (3, "dirichlet:1")]


def one_job(run: str, count: int, quantile: float, out: Path) -> dict:
    cmd = [sys.executable, str(REPO / "jobs" / "mass_generate.py"), "--run", run, "--count",
           str(count), "--out", str(out), "--seed", "0"]
    if quantile:
        cmd += ["--novelty-quantile", str(quantile)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    return {"images_per_s": s["images_per_s"], "job_wall_s": s["wall_s"],
            "process_s": round(time.perf_counter() - t0, 1),
            "rejected": sum(s.get("novelty_rejected_per_class", {}).values())}


def cost(args) -> None:
    runs = {"without": [], "with": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            for side, q in (("without", 0.0), ("with", args.quantile)):
                res = one_job(args.run, args.count, q, Path(tmp) / f"{side}-{r}")
                runs[side].append(res)
                print(f"  {side:8s} repeat {r}: {res}", flush=True)
    med = {k: statistics.median(x["images_per_s"] for x in v) for k, v in runs.items()}
    print(f"cost at {args.count} images: without {med['without']:.0f} img/s, with "
          f"(q = {args.quantile}) {med['with']:.0f} img/s; ratio with / without "
          f"{med['with'] / med['without']:.3f} (median of {args.repeat})")


def removal(args) -> None:
    from regene_ray.generator import ConvexGenerator
    from regene_ray.nearest import NOVELTY_FILE, novelty_thresholds

    gen = ConvexGenerator.from_run(args.run)
    stats = json.loads((Path(args.run) / NOVELTY_FILE).read_text())
    gen.set_novelty(novelty_thresholds(stats, args.quantile))
    K = gen.num_classes
    labels = np.arange(args.candidates) % K
    print(f"removal at q = {args.quantile} ({args.candidates} candidates per setting):")
    print("| n | weights | passed both confidence steps | rejected as near-copies | share | "
          "per class (share) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, w in SETTINGS:
        b = gen(labels, n_parents=n, weights=w, seed=0)
        passed = b.accepted | ~b.novel
        rej = ~b.novel
        per = [float(rej[labels == c].sum() / max(passed[labels == c].sum(), 1))
               for c in range(K)]
        print(f"| {n} | {w} | {int(passed.sum())} | {int(rej.sum())} | "
              f"{rej.sum() / max(passed.sum(), 1):.4f} | "
              f"{', '.join(f'{p:.3f}' for p in per)} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a jobs/train.py run folder with novelty.json")
    p.add_argument("--count", type=int, default=100_000, help="images per mass job")
    p.add_argument("--quantile", type=float, default=0.01, help="--novelty-quantile")
    p.add_argument("--repeat", type=int, default=2, help="jobs per side, alternating")
    p.add_argument("--candidates", type=int, default=20_000, help="per removal setting")
    p.add_argument("--parts", default="cost,removal", help="cost, removal or both")
    args = p.parse_args()
    parts = args.parts.split(",")
    if "removal" in parts:
        removal(args)
    if "cost" in parts:
        cost(args)


if __name__ == "__main__":
    main()
