"""Does the multi-objective sampler earn its place? The same space and trial budget searched by
Optuna's multi-objective TPE and by random search, in one process on one Ray instance, compared
by the hypervolume of each front (accuracy up, MAE down).

    REGENE_DATA_ROOT=../shared/data python benchmarks/search_vs_random.py \
        --space search_spaces/mnist.yaml --storage-path runs/bench --num-samples 16

Writes STORAGE_PATH/search_vs_random.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.cli import setup_logging  # noqa: E402
from regene_ray.search.pareto import hypervolume_2d  # noqa: E402
from regene_ray.search.space import load_search_space  # noqa: E402
from regene_ray.search.tuner import SweepOptions, run_sweep  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", type=Path, default=Path("search_spaces/mnist.yaml"),
                   help="search space YAML (default: search_spaces/mnist.yaml)")
    p.add_argument("--storage-path", type=Path, default=Path("runs/bench"),
                   help="where both sweeps are written (default: runs/bench)")
    p.add_argument("--num-samples", type=int, default=16, help="trials per sampler (default: 16)")
    p.add_argument("--samplers", nargs="+", default=["tpe", "random"],
                   help="samplers to compare (default: tpe random)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default: 1)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the embedded Ray (default: all)")
    return p


def main(args: argparse.Namespace) -> dict:
    setup_logging()
    import ray

    space = load_search_space(args.space)
    space.seed = args.seed
    ray.init(address="local", num_cpus=args.num_cpus, object_store_memory=256 * 1024**2,
             include_dashboard=False)
    out: dict = {"space": str(args.space), "num_samples": args.num_samples, "seed": args.seed,
                 "runs": {}}
    tables = {}
    for sampler in args.samplers:
        name = f"{Path(args.space).stem}_{sampler}_s{args.seed}_n{args.num_samples}"
        t0 = time.perf_counter()
        summary = run_sweep(space, SweepOptions(
            storage_path=args.storage_path, name=name, num_samples=args.num_samples,
            max_concurrent=args.max_concurrent, sampler=sampler))
        tables[sampler] = pd.read_parquet(args.storage_path.resolve() / name / "trials.parquet")
        out["runs"][sampler] = {"name": name, "wall_s": time.perf_counter() - t0,
                                "status_counts": summary["status_counts"],
                                "chosen": summary["chosen"],
                                "matches_optuna_best_trials": summary["matches_optuna_best_trials"]}
    both = pd.concat(tables.values())
    refs = {"natural (acc 0, mae 1)": (0.0, 1.0),
            "union nadir": (float(both.val_accuracy.min()), float(both.val_mae.max()))}
    for sampler, df in tables.items():
        run = out["runs"][sampler]
        run["hypervolume"] = {k: hypervolume_2d(df.val_accuracy, df.val_mae, r)
                              for k, r in refs.items()}
        run["front"] = df[df.is_pareto].sort_values("val_mae").drop(
            columns=["error", "is_pareto"]).to_dict("records")
        run["best_accuracy"] = float(df.val_accuracy.max())
        run["best_mae"] = float(df.val_mae.min())
    out["refs"] = refs
    path = args.storage_path.resolve() / "search_vs_random.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print("| sampler | trials | wall (s) | front size | best acc | best MAE | HV (0,1) | HV nadir |")
    print("|---|---|---|---|---|---|---|---|")
    for sampler, run in out["runs"].items():
        hv = list(run["hypervolume"].values())
        print(f"| {sampler} | {args.num_samples} | {run['wall_s']:.0f} | {len(run['front'])} | "
              f"{run['best_accuracy']:.4f} | {run['best_mae']:.4f} | {hv[0]:.4f} | {hv[1]:.5f} |")
    print(f"written: {path}")
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
