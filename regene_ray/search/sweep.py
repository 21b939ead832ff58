"""The sweep's options and its experiment folder, before Tune runs (no Ray): the checks a job
makes before starting Ray, how many trials run at once, the MO-ASHA rungs a space gets, and the
folder's claim, record and resume checks.

The experiment folder STORAGE/NAME is claimed through regene_ray.ownership (kind "search"); its
record, search_space.yaml, holds the space and the options that must match for a resume. Tune's
own state there (tuner.pkl) pickles the searcher, the scheduler and the upload callback with the
sweep's location (`exp`), and each works out its driver folder from it where it runs; so a sweep
resumes only where it was started, and one started elsewhere is refused with a message.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from regene_ray.config import ConfigError, to_dict
from regene_ray.ownership import inspect_owned, read_marker, write_marker
from regene_ray.search.moasha import MOASHA
from regene_ray.search.outputs import OUTPUT_FILES, SPACE_FILE, STUDY_FILE
from regene_ray.search.space import WITH_STARTUP, SearchSpace, startup_trials
from regene_ray.search.sync import download_files, upload_files
from regene_ray.search.trial import ESTIMATES
from regene_ray.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class SweepOptions:
    storage_path: str | Path  # experiments live in storage_path/name: local, s3:// or gs://
    name: str  # experiment name; the same name resumes
    num_samples: int | None = None  # trials; None -> the space's num_samples
    cpus_per_trial: float = 1.0  # CPUs per trial (also torch threads)
    gpus_per_trial: float = 0.0  # GPUs per trial, fractional allowed; 0 asks for none
    max_concurrent: int | None = None  # None -> leave one CPU free for the driver
    max_failures: int = 1  # retries per trial (from its last checkpoint) before ERROR
    scheduler: str = "none"  # none, asha or moasha (regene_ray.search.tuner.make_scheduler)
    accuracy_tolerance: float = 0.005  # best_config: lowest MAE within this of the best accuracy
    restart_errored: bool = False  # on resume, rerun errored trials from scratch
    sampler: str | None = None  # override the space's sampler (tpe, gp, nsga2, random)
    startup_trials: int | None = None  # tpe / gp: random trials first (study.startup_trials)
    time_budget_s: float | None = None  # wall-clock cap of a new sweep (Tune's time_budget_s)
    reduction_factor: float = 2.0  # asha / moasha: eta, rungs at 1, eta, eta^2 ... epochs
    early_estimate: str = "ridge"  # asha / moasha: the MAE estimate at a rung (trial.ESTIMATES)
    tell_estimate: bool = True  # a stopped trial's estimate, not WORST_MAE, goes to Optuna

    def __post_init__(self):
        if self.startup_trials is not None and self.startup_trials < 1:
            raise ConfigError(f"--startup-trials {self.startup_trials} must be >= 1")
        if not self.reduction_factor > 1:
            raise ConfigError(f"--reduction-factor {self.reduction_factor} must be > 1")
        if self.early_estimate not in ESTIMATES:
            raise ConfigError(f"--early-estimate {self.early_estimate!r}: use one of "
                              f"{', '.join(ESTIMATES)}")


def check_name(name: str) -> str:
    """An experiment name is a folder name in the storage path (local or a bucket key)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a "
                          "folder in the storage path)")
    return name


def trial_resources(cpus: float, gpus: float) -> dict:
    """Resource request; no GPU key at all for CPU trials (num_gpus=0 has been read as a
    request)."""
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"--cpus-per-trial {cpus} must be > 0 and --gpus-per-trial {gpus} >= 0")
    return {"cpu": cpus, **({"gpu": gpus} if gpus > 0 else {})}


def default_concurrency(resources: dict, cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials at once on a cluster holding `resources` (ray.cluster_resources()): all CPUs but
    one (headroom for the driver and Ray), and the GPUs."""
    n = max(1, int((resources.get("CPU", 1) - 1) // cpus_per_trial))
    if gpus_per_trial > 0:
        n = min(n, max(1, int(resources.get("GPU", 0) // gpus_per_trial)))
    log.info("running %d trial(s) at once: what the cluster holds now (%s CPU, %s GPU). On an "
             "autoscaling cluster pass --max-concurrent N, or the autoscaler is never asked "
             "for more nodes", n, resources.get("CPU", 0), resources.get("GPU", 0))
    return n


def moasha_rungs(space: SearchSpace, state_file: Path | None = None,
                 reduction_factor: float = 2.0) -> MOASHA:
    """MO-ASHA over (val_accuracy, val_mae_early) at rungs of 1, eta, eta^2, ... classifier
    epochs, the rungs of tuner.make_asha, so the two differ only in what they rank on. At a rung
    val_mae_early is the early estimate (ridge_decoder_mae) the trial computes at exactly
    these epochs. A trial whose decoder has started is never stopped: BENCHMARKS.md section 11
    measured rungs in the decoder phase too, where the MAE after one decoder epoch (of three)
    stopped all but one trial of a 5-minute MNIST sweep."""
    return MOASHA(["val_accuracy", "val_mae_early"], ["max", "min"],
                  max_t=space.run_config().classifier_training.epochs + 1,
                  grace_period=1, reduction_factor=reduction_factor, state_file=state_file)


def estimate_rungs(opts: SweepOptions, space: SearchSpace) -> tuple[int, ...]:
    """Classifier epochs (1-based) whose reports carry the early MAE estimate: the rungs of
    ASHA and MO-ASHA (MO-ASHA ranks on it; both tell it to Optuna for a trial they stop);
    none for FIFO."""
    if opts.scheduler == "none":
        return ()
    return tuple(moasha_rungs(space, reduction_factor=opts.reduction_factor).milestones)


def space_record(space: SearchSpace, num_samples: int, opts: SweepOptions) -> dict:
    """search_space.yaml: what a resume must match (the space, the budget, scheduler, sampler)."""
    rec = to_dict(space)
    rec.pop("source")
    rec["num_samples"] = num_samples
    rec["scheduler"] = opts.scheduler
    rec["sampler"] = opts.sampler or space.sampler
    if rec["sampler"] in WITH_STARTUP:
        rec["startup_trials"] = startup_trials(num_samples, opts.startup_trials)
    if opts.scheduler != "none":
        rec["early_stopping"] = {"reduction_factor": opts.reduction_factor,
                                 "estimate": opts.early_estimate,
                                 "tell_estimate": opts.tell_estimate}
    return rec


def claim_experiment(exp: Storage) -> None:
    """Before a new sweep starts in `exp`: refuse a non-empty folder that no regene-ray sweep
    made (its files are never deleted), then mark the folder as this sweep's, with where it is
    (`prepare_resume` checks it)."""
    if inspect_owned(exp, "search", overwrite=False, what="a regene-ray sweep",
                     flag="--storage-path/--name") == "new":
        write_marker(exp, "search", [*OUTPUT_FILES],
                     {"name": posixpath.basename(exp.root), "storage": exp.display()})


def prepare_new(exp: Storage, exp_dir: Path, record: dict) -> None:
    """Before a new Tuner: claim `exp`, remove an earlier attempt's outputs, write the record."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    if (exp_dir / STUDY_FILE).exists():
        log.warning("%s has an Optuna study but no restorable Tune state (the driver was "
                    "killed before its first checkpoint); starting the study afresh", exp_dir)
    claim_experiment(exp)
    for name in OUTPUT_FILES:  # nothing of an earlier attempt may pass for this sweep's
        (exp_dir / name).unlink(missing_ok=True)
        if not exp.is_local:
            exp.delete(name)
    (exp_dir / SPACE_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
    if not exp.is_local:
        upload_files(exp_dir, exp, (SPACE_FILE,))


def record_difference(old: dict, new: dict) -> str:
    """What differs between a sweep's search_space.yaml and this run's record, in words (the
    top-level keys, with their values where they are plain): a sweep started under another
    --scheduler, such as the `none` that was the default before BENCHMARKS.md section 20,
    says so."""
    parts = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key), new.get(key)
        if was == now:
            continue
        if isinstance(was, dict | list) or isinstance(now, dict | list):
            parts.append(f"{key} differs")
        else:
            parts.append(f"{key}: {was} there, {now} here")
    return "; ".join(parts)


def prepare_resume(exp: Storage, exp_dir: Path, record: dict, name: str) -> None:
    """Before Tuner.restore: fetch the driver's files (remote storage), and refuse a sweep with
    another space or options, or one started at another location."""
    if not exp.is_local:
        download_files(exp, exp_dir, name)
    old = yaml.safe_load((exp_dir / SPACE_FILE).read_text()) \
        if (exp_dir / SPACE_FILE).is_file() else None
    if old is not None and "startup_trials" not in old and old.get("sampler") in WITH_STARTUP:
        # a sweep started before --startup-trials ran the budget's rule: say so, and match it
        old = {**old, "startup_trials": startup_trials(old["num_samples"])}
    if old != record:
        raise ConfigError(
            f"{exp} holds a sweep with a different search space or options "
            f"({record_difference(old or {}, record)}); pass a new --name (or the same space, "
            "--num-samples, --scheduler, --sampler, --startup-trials and early-stopping "
            "flags) to resume it")
    started = ((read_marker(exp) or {}).get("identity") or {}).get("storage")
    if started is not None and started != exp.display():
        raise ConfigError(
            f"{exp} holds a sweep started at {started}; Tune's state of it (tuner.pkl) names "
            "that place for its Optuna study and MO-ASHA rungs, so it resumes only there: move "
            "it back, or pass a new --name to start afresh")
    log.info("resuming the sweep in %s", exp)
