"""FIFO vs accuracy-only ASHA vs MO-ASHA on one search space, the same wall-clock budget each,
several seeds, run one after the other in this one script: hypervolume against time.

    REGENE_DATA_ROOT=../shared/data .venv/bin/python benchmarks/scheduler_comparison.py \\
        --space search_spaces/mnist.yaml --budget-s 300 --seeds 0,1 --out runs/schedulers

Each run is `jobs/search.py --scheduler S --time-budget-s B --num-samples 200` in its own
process (its own embedded Ray, --num-cpus), sampler seed = the space's seed + run seed, so the
three schedulers of one seed see the same sampler seed. Hypervolume is computed from each run's
trials.parquet with one common reference for all runs: the worst accuracy and worst MAE of any
finished trial of any run (the nadir), so the numbers compare across schedulers; the (0, 1)
reference of the sweep outputs is printed too. A run's curve is the hypervolume of the trials
finished by time t, t counted from its first trial's start.

A name in --schedulers whose folder OUT/<name>-s<seed> already holds trials.parquet is loaded,
not run (so earlier variants, e.g. moasha-both: MO-ASHA with rungs reaching into the decoder
phase, as first measured, compare in the same table).

Prints a Markdown table (final hypervolume, time to reach 90% of the best final hypervolume of
the seed, trials finished / stopped, early-estimate seconds) and writes OUT/hypervolume.png.
Time only on an idle machine (check `uptime`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from regene_ray.search.pareto import hypervolume_2d  # noqa: E402

SCHEDULERS = ("none", "asha", "moasha")


def run_one(space: str, out: Path, scheduler: str, seed: int, budget: float, cpus: int) -> Path:
    name = f"{scheduler}-s{seed}"
    exp = out / name
    if (exp / "trials.parquet").is_file():
        print(f"{name}: done before, kept", flush=True)
        return exp
    seeded = out / f"space-s{seed}.yaml"
    import yaml

    doc = yaml.safe_load(Path(space).read_text())
    doc["seed"] = int(doc.get("seed", 0)) + seed
    seeded.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmd = [sys.executable, str(REPO / "jobs" / "search.py"), "--space", str(seeded),
           "--storage-path", str(out), "--name", name, "--scheduler", scheduler,
           "--time-budget-s", str(budget), "--num-samples", "200", "--num-cpus", str(cpus)]
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    print(f"{name}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed; see {out / name}.log")
    return exp


def curve(table: pd.DataFrame, ref: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the first trial started, hypervolume of the trials finished by then)."""
    t = table.dropna(subset=["finished_at"]).sort_values("finished_at", kind="stable")
    start = (t.finished_at - t.time_total_s.fillna(0)).min()
    hv = [hypervolume_2d(t.val_accuracy.iloc[:k + 1], t.val_mae.iloc[:k + 1], ref)
          for k in range(len(t))]
    return (t.finished_at - start).to_numpy(), np.array(hv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/mnist.yaml")
    p.add_argument("--budget-s", type=float, default=300)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--schedulers", default=",".join(SCHEDULERS))
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/schedulers"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    scheds = args.schedulers.split(",")
    print(f"machine load before: {os.getloadavg()}", flush=True)
    runs = {(s, seed): pd.read_parquet(run_one(args.space, args.out, s, seed, args.budget_s,
                                               args.num_cpus) / "trials.parquet")
            for seed in seeds for s in scheds}
    done = pd.concat([t.dropna(subset=["val_accuracy", "val_mae"]) for t in runs.values()])
    nadir = (float(done.val_accuracy.min()), float(done.val_mae.max()))
    curves = {k: curve(t, nadir) for k, t in runs.items()}
    print(f"\nnadir reference (worst finished trial of all runs): accuracy {nadir[0]:.4f}, "
          f"MAE {nadir[1]:.4f}; budget {args.budget_s:.0f} s per run\n")
    print("| seed | scheduler | trials finished | stopped early | HV (nadir ref) | "
          "time to 90% of the seed's best HV (s) | HV ref (0, 1) | best acc | best MAE | "
          "early-estimate s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for seed in seeds:
        best = max(curves[(s, seed)][1][-1] if len(curves[(s, seed)][1]) else 0 for s in scheds)
        for s in scheds:
            t, hv = curves[(s, seed)]
            table = runs[(s, seed)]
            fin = table.status == "TERMINATED"
            reach = t[np.flatnonzero(hv >= 0.9 * best)[0]] if best > 0 and (hv >= 0.9 * best
                                                                            ).any() else np.nan
            est = estimate_seconds(args.out / f"{s}-s{seed}")
            final = hv[-1] if len(hv) else 0.0
            hv01 = hypervolume_2d(table.val_accuracy, table.val_mae, (0.0, 1.0))
            print(f"| {seed} | {s} | {int(fin.sum())} | {int((table.status == 'STOPPED').sum())}"
                  f" | {final:.5f} | {reach:.0f} | {hv01:.4f} | {table.val_accuracy.max():.4f} | "
                  f"{table.val_mae.min():.4f} | {est:.0f} |")
            summary[f"{s}-s{seed}"] = {"hv": final, "t90": float(reach), "finished": int(fin.sum())}
    (args.out / "comparison.json").write_text(json.dumps({"nadir": nadir, "runs": summary},
                                                         indent=1))
    plot(curves, seeds, scheds, nadir, args.out / "hypervolume.png", args.budget_s)
    print(f"\nplot: {args.out / 'hypervolume.png'}")


def estimate_seconds(exp: Path) -> float:
    """Seconds the trials of a run spent on early MAE estimates (from their result.json)."""
    total = 0.0
    for f in exp.glob("train_trial_*/result.json"):
        for line in f.read_text().splitlines():
            total += float(json.loads(line).get("mae_estimate_s", 0.0) or 0.0)
    return total


def plot(curves, seeds, scheds, nadir, path: Path, budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4), dpi=120,
                             squeeze=False)
    colours = {"none": "0.4", "asha": "tab:orange", "moasha": "tab:blue",
               "moasha-both": "tab:purple"}
    labels = {"none": "FIFO (no early stopping)", "asha": "ASHA (accuracy only)",
              "moasha": "MO-ASHA (accuracy + early MAE)",
              "moasha-both": "MO-ASHA, rungs in the decoder phase too"}
    for ax, seed in zip(axes[0], seeds, strict=True):
        for s in scheds:
            t, hv = curves[(s, seed)]
            ax.step(np.r_[0, t, budget], np.r_[0, hv, hv[-1] if len(hv) else 0], where="post",
                    c=colours.get(s), label=labels.get(s, s))
        ax.set_title(f"seed {seed}")
        ax.set_xlabel("seconds since the sweep's first trial started")
        ax.set_ylabel(f"hypervolume (ref: acc {nadir[0]:.3f}, MAE {nadir[1]:.3f})")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
