"""Which scheduler and sampler give the front soonest: search variants on one space, the same
wall-clock budget each, several sampler seeds, one after the other in this one command.

    uptime    # idle box only
    REGENE_DATA_ROOT=../shared/data .venv/bin/python benchmarks/search_comparison.py \\
        --space search_spaces/mnist.yaml --budget-s 600 --seeds 0,1,2,3,4 \\
        --variants random,fifo,asha,moasha --out runs/search-comparison

A variant is a set of jobs/search.py flags (VARIANTS below); the extras change one thing at a
time against `moasha` (or `fifo` for the samplers), so each effect is measured on its own:
    random         FIFO with the random sampler: the floor
    fifo           FIFO, every trial to the end (multi-objective TPE)
    asha           ASHA on accuracy only, stopped trials told their early MAE estimate
    moasha         MO-ASHA on (accuracy, ridge estimate), stopped trials told the estimate
    moasha-worst   moasha, stopped trials told the worst MAE (the placeholder of section 11)
    moasha-fit     moasha, the short decoder fit at the last classifier rung
    moasha-eta3    moasha, reduction factor 3 (one rung in three goes on)
    fifo-gp        fifo with Optuna's GPSampler
    moasha-gp      moasha with Optuna's GPSampler
    fifo-start3    fifo, TPE's random start-up phase 3 trials instead of 10 (--startup-trials)

Each run is `jobs/search.py --time-budget-s B --num-samples 500` in its own process (its own
embedded Ray, --num-cpus), with the space's seed + the run's seed as the sampler seed, so the
variants of one seed start from the same sampler state. A run whose folder OUT/<variant>-s<seed>
holds trials.parquet is read, not run again (a killed comparison continues).

Hypervolume: of the finished trials, against one reference for every run (the worst accuracy
and worst MAE of any finished trial of any run), so figures compare across variants and seeds.
A run's curve is the hypervolume of the trials finished by time t, counted from the moment its
job started (what the user waits for, Ray's start-up included). Targets: 50% and 90% of the
best final hypervolume of any run. Printed: a Markdown table per variant over seeds (final HV
mean +- std; median time to each target, with the range over seeds; "never" counts as later
than the budget; trials finished and stopped; seconds of early estimates), a row per run, and
OUT/hypervolume.png (median curve per variant, the band between the seeds' lowest and highest).
OUT/comparison.json holds every figure.
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
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from regene_ray.search.pareto import hypervolume_2d  # noqa: E402

VARIANTS = {
    "random": ["--scheduler", "none", "--sampler", "random"],
    "fifo": ["--scheduler", "none", "--sampler", "tpe"],
    "asha": ["--scheduler", "asha", "--sampler", "tpe"],
    "moasha": ["--scheduler", "moasha", "--sampler", "tpe"],
    "moasha-worst": ["--scheduler", "moasha", "--sampler", "tpe", "--tell-stopped", "worst"],
    "moasha-fit": ["--scheduler", "moasha", "--sampler", "tpe", "--early-estimate", "fit"],
    "moasha-eta3": ["--scheduler", "moasha", "--sampler", "tpe", "--reduction-factor", "3"],
    "fifo-gp": ["--scheduler", "none", "--sampler", "gp"],
    "moasha-gp": ["--scheduler", "moasha", "--sampler", "gp"],
    "fifo-start3": ["--scheduler", "none", "--sampler", "tpe", "--startup-trials", "3"],
}
TARGETS = (0.5, 0.9)


def run_one(space: str, out: Path, variant: str, seed: int, budget: float, cpus: int
            ) -> tuple[Path, float]:
    """Run one variant and seed (or read it back); returns its folder and job start (unix s)."""
    name = f"{variant}-s{seed}"
    exp, started = out / name, out / f"{name}.started"
    if (exp / "trials.parquet").is_file():
        print(f"{name}: done before, kept", flush=True)
        return exp, float(started.read_text())
    seeded = out / f"space-s{seed}.yaml"
    doc = yaml.safe_load(Path(space).read_text())
    doc["seed"] = int(doc.get("seed", 0)) + seed
    seeded.write_text(yaml.safe_dump(doc, sort_keys=False))
    cmd = [sys.executable, str(REPO / "jobs" / "search.py"), "--space", str(seeded),
           "--storage-path", str(out.resolve()), "--name", name, *VARIANTS[variant],
           "--time-budget-s", str(budget), "--num-samples", "500", "--num-cpus", str(cpus)]
    t0 = time.time()
    started.write_text(repr(t0))
    with open(out / f"{name}.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    print(f"{name}: exit {proc.returncode} in {time.time() - t0:.0f} s", flush=True)
    if not (exp / "trials.parquet").is_file():  # exit 1 with it: no trial finished in time
        raise SystemExit(f"{name} failed; see {out / name}.log")
    return exp, t0


def curve(table: pd.DataFrame, t0: float, ref: tuple[float, float]
          ) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the job started, hypervolume of the trials finished by then)."""
    t = table.dropna(subset=["finished_at", "val_mae"]).sort_values("finished_at", kind="stable")
    hv = [hypervolume_2d(t.val_accuracy.iloc[:k + 1], t.val_mae.iloc[:k + 1], ref)
          for k in range(len(t))]
    return (t.finished_at - t0).to_numpy(), np.array(hv)


def time_to(t: np.ndarray, hv: np.ndarray, level: float) -> float:
    """First time the curve reaches `level` (inf: never)."""
    hit = np.flatnonzero(hv >= level)
    return float(t[hit[0]]) if len(hit) else float("inf")


def estimate_seconds(exp: Path) -> float:
    """Seconds the trials of a run spent on early MAE estimates (from their result.json)."""
    total = 0.0
    for f in exp.glob("train_trial_*/result.json"):
        for line in f.read_text().splitlines():
            total += float(json.loads(line).get("mae_estimate_s", 0.0) or 0.0)
    return total


def run_figures(runs: dict, budget: float) -> tuple[dict, tuple[float, float], list[float]]:
    """Per run: final HV, times to the targets, trial counts; the reference and target levels."""
    done = pd.concat([t.dropna(subset=["val_accuracy", "val_mae"]) for t, _, _ in runs.values()])
    ref = (float(done.val_accuracy.min()), float(done.val_mae.max()))
    curves = {k: curve(t, t0, ref) for k, (t, t0, _) in runs.items()}
    best = max((hv[-1] for _, hv in curves.values() if len(hv)), default=0.0)
    levels = [f * best for f in TARGETS]
    figures = {}
    for (variant, seed), (table, _, exp) in runs.items():
        t, hv = curves[(variant, seed)]
        figures[(variant, seed)] = {
            "hv": float(hv[-1]) if len(hv) else 0.0,
            **{f"t{int(f * 100)}": time_to(t, hv, lv) for f, lv in zip(TARGETS, levels,
                                                                         strict=True)},
            "finished": int((table.status == "TERMINATED").sum()),
            "stopped": int((table.status == "STOPPED").sum()),
            "estimate_s": estimate_seconds(exp), "curve": (t.tolist(), hv.tolist())}
    return figures, ref, levels


def finite(x):
    """`x` with every infinite time ("never") as None, for strict JSON."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    return None if isinstance(x, float) and not np.isfinite(x) else x


def seconds(x: float, budget: float) -> str:
    return "never" if not np.isfinite(x) else f"{x:.0f}"


def print_tables(figures: dict, variants: list[str], seeds: list[int], budget: float) -> dict:
    print("| variant | final HV (mean ± std) | median time to 50% (range) s | median time to 90% "
          "(range) s | reached 90% | trials finished / stopped (mean) | estimate s (mean) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for v in variants:
        rows = [figures[(v, s)] for s in seeds]
        hv = np.array([r["hv"] for r in rows])
        cells = []
        for key in ("t50", "t90"):
            ts = np.array([r[key] for r in rows])
            cells.append(f"{seconds(float(np.median(ts)), budget)} ({seconds(ts.min(), budget)}"
                         f"–{seconds(ts.max(), budget)})")
        reached = sum(np.isfinite(r["t90"]) for r in rows)
        fin = np.mean([r["finished"] for r in rows])
        stop = np.mean([r["stopped"] for r in rows])
        est = np.mean([r["estimate_s"] for r in rows])
        print(f"| {v} | {hv.mean():.5f} ± {hv.std(ddof=1) if len(hv) > 1 else 0:.5f} | "
              f"{cells[0]} | {cells[1]} | {reached}/{len(rows)} | {fin:.1f} / {stop:.1f} | "
              f"{est:.0f} |")
        summary[v] = {"hv_mean": float(hv.mean()), "hv_std": float(hv.std(ddof=1)) if len(hv) > 1
                      else 0.0, "t50_median": float(np.median([r["t50"] for r in rows])),
                      "t90_median": float(np.median([r["t90"] for r in rows])),
                      "reached_90": int(reached)}
    print("\n| variant | seed | final HV | t50 s | t90 s | finished | stopped |")
    print("|---|---|---|---|---|---|---|")
    for v in variants:
        for s in seeds:
            r = figures[(v, s)]
            print(f"| {v} | {s} | {r['hv']:.5f} | {seconds(r['t50'], budget)} | "
                  f"{seconds(r['t90'], budget)} | {r['finished']} | {r['stopped']} |")
    return summary


def plot(figures: dict, variants: list[str], seeds: list[int], ref, levels, path: Path,
         budget: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, budget * 1.1, 400)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for v in variants:
        stack = []
        for s in seeds:
            t, hv = (np.array(x) for x in figures[(v, s)]["curve"])
            idx = np.searchsorted(t, grid, side="right") - 1
            stack.append(np.where(idx >= 0, hv[np.clip(idx, 0, None)] if len(hv) else 0, 0))
        stack = np.array(stack)
        line = ax.plot(grid, np.median(stack, 0), label=f"{v} (median of {len(seeds)})")[0]
        ax.fill_between(grid, stack.min(0), stack.max(0), color=line.get_color(), alpha=0.12)
    for f, lv in zip(TARGETS, levels, strict=True):
        ax.axhline(lv, c="0.6", lw=0.8, ls=":")
        ax.text(0, lv, f" {int(f * 100)}% of the best", va="bottom", fontsize=7, c="0.4")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel(f"hypervolume (ref: accuracy {ref[0]:.3f}, MAE {ref[1]:.3f})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", default="search_spaces/mnist.yaml")
    p.add_argument("--budget-s", type=float, default=600)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--variants", default="random,fifo,asha,moasha",
                   help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/search-comparison"))
    args = p.parse_args()
    variants = args.variants.split(",")
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}; use {', '.join(VARIANTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine load before: {os.getloadavg()}", flush=True)
    runs = {}
    for seed in seeds:  # seed-major: a comparison cut short still compares every variant
        for v in variants:
            exp, t0 = run_one(args.space, args.out, v, seed, args.budget_s, args.num_cpus)
            runs[(v, seed)] = (pd.read_parquet(exp / "trials.parquet"), t0, exp)
    figures, ref, levels = run_figures(runs, args.budget_s)
    print(f"\nreference (worst finished trial of all runs): accuracy {ref[0]:.4f}, MAE "
          f"{ref[1]:.4f}; targets {levels[0]:.5f} / {levels[1]:.5f} (50% / 90% of the best "
          f"final HV); budget {args.budget_s:.0f} s per run\n")
    summary = print_tables(figures, variants, seeds, args.budget_s)
    record = {"reference": ref, "targets": levels, "budget_s": args.budget_s,
              "variants": summary, "runs": {f"{v}-s{s}": r for (v, s), r in figures.items()}}
    (args.out / "comparison.json").write_text(json.dumps(finite(record), indent=1))
    plot(figures, variants, seeds, ref, levels, args.out / "hypervolume.png", args.budget_s)
    print(f"\nplot: {args.out / 'hypervolume.png'}")


if __name__ == "__main__":
    main()
