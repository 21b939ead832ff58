"""Architecture search: Ray Tune + Optuna over depth, convs per block, latent width and sparsity,
trading classifier accuracy (max) against decoder reconstruction MAE (min).

    # embedded local Ray
    python jobs/search.py --space search_spaces/digits.yaml --storage-path runs/search --name digits
    # a Ray cluster (token auth stays on; the client needs RAY_AUTH_MODE=token)
    ray start --head --dashboard-host 127.0.0.1
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python jobs/search.py --space search_spaces/digits.yaml --storage-path $PWD/runs/search \\
        --name digits

    # a multi-node cluster: storage every node reaches
    ... jobs/search.py --space search_spaces/mnist.yaml --storage-path s3://bucket/search --name mnist

Writes into STORAGE_PATH/NAME: trials.parquet, pareto.png, best_config.yaml (for
`jobs/train.py --config`), summary.json, optuna.sqlite (`optuna-dashboard sqlite:///...`) and
Tune's experiment state. Re-running with the same --storage-path and --name resumes the sweep.
--storage-path may be a local folder, s3://bucket/prefix or gs://bucket/prefix (pyarrow
filesystems; for an S3-compatible server add ?endpoint_override=host:port&scheme=http). On a
multi-node cluster a local folder must be shared by every node, or the job refuses it.

Trust: resuming a sweep unpickles Tune's `tuner.pkl` and the searcher's state from
STORAGE_PATH/NAME (Ray Tune's own format), so whoever can write there can run code in this
driver. Keep --storage-path on storage only you (and your cluster) can write.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regene_ray.cli import run_main, setup_logging  # noqa: E402
from regene_ray.cluster import check_shared_folder, init_ray  # noqa: E402
from regene_ray.config import ConfigError  # noqa: E402
from regene_ray.data import pin_data_root_env  # noqa: E402
from regene_ray.search.space import (  # noqa: E402
    WITH_STARTUP,
    SearchSpace,
    load_search_space,
    pin_data_root,
    smoke_test_space,
)
from regene_ray.storage import Storage, is_remote  # noqa: E402

if TYPE_CHECKING:
    from regene_ray.search.sweep import SweepOptions

log = logging.getLogger("search")
# TPE's / GP's random start-up trials unless --startup-trials: BENCHMARKS.md section 20 (FIFO
# with 3 reached 90% of the best hypervolume soonest; with the budget's rule, 10, it ran random
# search's trials for the whole of a 300 s sweep)
STARTUP_TRIALS = 3


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", type=Path, required=True,
                   help="search space YAML, e.g. search_spaces/digits.yaml (required)")
    p.add_argument("--storage-path", required=True,
                   help="folder holding experiments: a local path (absolute with `ray job "
                   "submit`), s3://bucket/prefix or gs://bucket/prefix. Resuming unpickles "
                   "Tune's state from it, so only use storage that no one else can write "
                   "(required)")
    p.add_argument("--name", required=True, help="experiment name; the same name resumes (required)")
    p.add_argument("--num-samples", type=int,
                   help="trials in the sweep (default: the space's num_samples; 3 with --smoke-test)")
    p.add_argument("--smoke-test", action="store_true",
                   help="shrink data, epochs, widths and trials so the sweep runs in about a minute")
    p.add_argument("--address", help="Ray cluster to connect to, e.g. 127.0.0.1:6379 (default: "
                   "$RAY_ADDRESS, as set by `ray job submit`; else start an embedded local Ray)")
    p.add_argument("--num-cpus", type=int,
                   help="CPUs of the embedded local Ray (default: all; ignored with a cluster)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs per trial, also its torch threads (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0.0,
                   help="GPUs per trial, fractions allowed, e.g. 0.25 (default: 0, none requested)")
    p.add_argument("--max-concurrent", type=int,
                   help="trials at once (default: cluster CPUs minus one, over --cpus-per-trial)")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a failing trial from its last checkpoint before it is "
                   "recorded as errored (default: 1)")
    _strategy_flags(p)
    p.add_argument("--accuracy-tolerance", type=float, default=0.005,
                   help="best_config: lowest MAE among trials within this of the best accuracy "
                   "(default: 0.005)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop the sweep after this many seconds of wall time (trials still "
                   "running then are recorded as STOPPED); --num-samples stays the cap; a "
                   "resumed sweep keeps the budget it was started with (default: none)")
    p.add_argument("--restart-errored", action="store_true",
                   help="on resume, rerun errored trials from scratch (default: keep them errored)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _strategy_flags(p: argparse.ArgumentParser) -> None:
    """How the sweep picks and stops trials: scheduler, sampler and early-stopping flags."""
    p.add_argument("--scheduler", choices=["none", "asha", "moasha"], default="none",
                   help="none: every trial runs to the end (FIFO); asha: stop trials on "
                   "classifier accuracy during the classifier phase, biased against "
                   "slow-learning architectures; moasha: multi-objective successive halving on "
                   "accuracy and MAE (an early MAE estimate at the classifier's rungs), see "
                   "regene_ray/search/moasha.py (default: none, which with --startup-trials 3 "
                   "reached 90%% of the best hypervolume soonest in BENCHMARKS.md section 20)")
    p.add_argument("--sampler", choices=["tpe", "gp", "nsga2", "random"],
                   help="override the space's sampler: tpe (multi-objective TPE), gp (Gaussian "
                   "process), nsga2 or random (default: the space's, tpe)")
    p.add_argument("--startup-trials", type=int, default=None,
                   help="tpe / gp: trials sampled at random before the sampler models the "
                   f"results (default: {STARTUP_TRIALS}, the soonest to the front in "
                   "BENCHMARKS.md section 20; Optuna's own is 10)")
    p.add_argument("--reduction-factor", type=float, default=2.0,
                   help="asha / moasha: rungs at 1, eta, eta^2, ... classifier epochs, and 1 in "
                   "eta trials goes on at each (default: 2)")
    p.add_argument("--early-estimate", choices=["ridge", "fit"], default="ridge",
                   help="asha / moasha: the MAE estimate at a rung: ridge (a linear decoder in "
                   "closed form) or fit (ridge, then a 100-step fit of the trial's decoder at the "
                   "last rung, about 10x the cost, closer to the trained MAE) (default: ridge)")
    p.add_argument("--tell-stopped", choices=["estimate", "worst"], default="estimate",
                   help="asha / moasha: what Optuna is told as the MAE of a trial stopped at a "
                   "rung: its early estimate, or the worst MAE, 1.0 (default: estimate)")


def sweep_options(args: argparse.Namespace, space: SearchSpace) -> SweepOptions:
    """The sweep's options from the flags, checked (before Ray starts); the start-up default
    applies to the samplers that have the phase."""
    from regene_ray.search.study import check_sampler
    from regene_ray.search.sweep import SweepOptions, check_name, trial_resources

    trial_resources(args.cpus_per_trial, args.gpus_per_trial)
    sampler = args.sampler or space.sampler
    startup = args.startup_trials
    if startup is None and sampler in WITH_STARTUP:
        startup = STARTUP_TRIALS
    check_sampler(sampler, startup)
    check_name(args.name)
    return SweepOptions(
        storage_path=args.storage_path, name=args.name, num_samples=args.num_samples,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        scheduler=args.scheduler, accuracy_tolerance=args.accuracy_tolerance,
        restart_errored=args.restart_errored, sampler=args.sampler,
        startup_trials=startup,
        time_budget_s=args.time_budget_s, reduction_factor=args.reduction_factor,
        early_estimate=args.early_estimate, tell_estimate=args.tell_stopped == "estimate",
    )


def main(args: argparse.Namespace) -> dict:
    setup_logging(args.verbose)
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples {args.num_samples} must be >= 1")
    if args.time_budget_s is not None and not args.time_budget_s > 0:
        raise ConfigError(f"--time-budget-s {args.time_budget_s} must be > 0 seconds")
    if args.accuracy_tolerance < 0:
        raise ConfigError(f"--accuracy-tolerance {args.accuracy_tolerance} must be >= 0")
    space = pin_data_root(load_search_space(args.space))  # trials run in their own folders
    if args.smoke_test:
        space = smoke_test_space(space)
    opts = sweep_options(args, space)  # every flag checked before Ray starts
    remote = is_remote(args.storage_path)
    if not remote and not Path(args.storage_path).is_absolute() and (
            args.address or os.environ.get("RAY_ADDRESS")):
        log.warning("--storage-path %s is relative: under `ray job submit` it resolves inside the "
                    "job's temporary working dir; pass an absolute (shared) path",
                    args.storage_path)
    store = Storage(args.storage_path)  # a bad URI or unreachable bucket fails here, before Ray
    store.check_reachable()
    store.check_writable("--storage-path")
    pin_data_root_env()  # trials run in their own folders (Tune), workers inherit the env
    init_ray(args.address, num_cpus=args.num_cpus, object_store_memory=256 * 1024**2)
    import ray

    from regene_ray.search.tuner import run_sweep

    log.info("ray: %s", ray.cluster_resources())
    if store.is_local:
        check_shared_folder(store.local_path(), "--storage-path")
    summary = run_sweep(space, opts)
    out = store.child(args.name)
    print(f"sweep folder: {out}  ({summary['trials']} trials {summary['status_counts']}; "
          "trials.parquet, pareto.png, best_config.yaml, optuna.sqlite)")
    best = out.display("best_config.yaml")
    if out.is_local:
        print(f"next: python jobs/train.py --config {best} --out runs/best")
    else:
        print(f"next: copy {best} here, then python jobs/train.py --config best_config.yaml "
              "--out runs/best")
    return summary


if __name__ == "__main__":
    run_main(lambda: main(get_args_parser().parse_args()),
             again="run the same command again (the sweep resumes; finished trials are kept)")
