"""Print issue 13's MNIST tables from the runs and reports of benchmarks/perceptual_options.sh.

    python benchmarks/perceptual_table.py RUNS_DIR

1. The perceptual-option table: per option, the decoder's test MAE / SSIM, the filter's step (ii)
   acceptance among step-(i) survivors, the neutral judge's accuracy on the generations and the
   FID of the n = 2 generations (what each costs: benchmarks/perceptual_cost.py).
2. Table 1's shape: each FID row per run (mean +- std over subsample seeds), then the mean +-
   std over the independently trained runs of the default option, beside the paper's numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OPTIONS = ("judge", "classifier", "none")
SEED_RUNS = ("judge", "judge-seed1")
PAPER = {"org_vs_gen": 16.3, "org_vs_recon": 13.9, "recon_vs_gen": 3.03}  # Table 1, MNIST


def load(runs: Path, name: str) -> tuple[dict, dict] | None:
    run, rep = runs / name / "metrics.json", runs / f"report-{name}" / "metrics.json"
    if not (run.is_file() and rep.is_file()):
        return None
    return json.loads(run.read_text()), json.loads(rep.read_text())


def option_table(runs: Path) -> list[str]:
    out = ["| perceptual option | backend used | decoder test MAE | test SSIM | step (ii) "
           "acceptance given step (i), n = 2 | neutral accuracy of generations, n = 2 | FID Org "
           "vs Gen (n = 2) |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in OPTIONS:
        got = load(runs, name)
        if got is None:
            out.append(f"| {name} | (not run) | | | | | |")
            continue
        m, r = got
        acc2 = m["acceptance"]["2"]["image_step_given_latent"]
        fid = r["fid"]["rows"]["org_vs_gen"]
        out.append(
            f"| {name} | {m['perceptual_backend']} | {m['recon_test_mae']:.4f} | "
            f"{m['recon_test_ssim']:.3f} | {acc2:.4f} | "
            f"{r['generation_accuracy']['per_n'].get('2', float('nan')):.4f} | "
            f"{fid['mean']:.3f} +- {fid['std']:.3f} |")
    return out


def table1(runs: Path) -> list[str]:
    got = {n: load(runs, n) for n in SEED_RUNS}
    got = {n: g for n, g in got.items() if g is not None}
    if not got:
        return ["(no evaluated runs)"]
    first = next(iter(got.values()))[1]
    keys = list(first["fid"]["rows"])
    head = ("| FID pair | " + " | ".join(f"run `{n}` (seed spread)" for n in got)
            + " | mean +- std over runs | paper (Inception) |")
    out = [head, "| --- |" + " --- |" * (len(got) + 2)]
    for k in keys:
        vals = [g[1]["fid"]["rows"][k] for g in got.values() if k in g[1]["fid"]["rows"]]
        means = np.array([v["mean"] for v in vals])
        cells = [f"{v['mean']:.3f} +- {v['std']:.3f}" for v in vals]
        spread = f"{means.mean():.3f} +- {means.std():.3f}" if len(means) > 1 else "(one run)"
        out.append(f"| {k} | " + " | ".join(cells) + f" | {spread} | {PAPER.get(k, '')} |")
    r = first
    out.append("")
    out.append(f"Features: {r['fid']['features']} ({r['fid']['features_note']}); "
               f"{first['fid']['rows']['org_vs_gen']['sample_size']} images a side; "
               f"neutral judge {r['neutral']['architecture']}, test accuracy "
               f"{r['neutral']['test_accuracy']:.4f}.")
    return out


def blends(runs: Path) -> list[str]:
    got = load(runs, "judge")
    if got is None:
        return []
    rows = got[1]["blends"]["rows"]
    out = ["| reconstruction share r | FID vs real | neutral accuracy |", "| --- | --- | --- |"]
    out += [f"| {r['ratio']:g} | {r['fid']:.3f} | {r['neutral_accuracy']:.4f} |" for r in rows]
    ae = got[1].get("autoencoder")
    if ae:
        out.append("")
        out.append(f"Autoencoder with the same encoder and decoder, MAE + SSIM only "
                   f"({ae['images']} images, {ae['epochs']} epochs): test MAE "
                   f"{ae['test_mae']:.4f}, SSIM {ae['test_ssim']:.3f}; the run's classifier "
                   f"codes: MAE {ae['run_test_mae']:.4f}, SSIM {ae['run_test_ssim']:.3f}.")
    return out


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/issue13")
    for title, lines in (("Perceptual options (MNIST, configs/mnist.yaml)", option_table(runs)),
                         ("Table 1 (MNIST)", table1(runs)),
                         ("Fig. 7b blends and Fig. 3's autoencoder (run `judge`)", blends(runs))):
        print(f"\n### {title}\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
