"""Architecture search on Ray Tune + Optuna: two objectives (accuracy up, decoder MAE down).
With searcher.py, the only modules of regene_ray.search that import Ray; the pieces handed to
Tune are plain Python elsewhere in the package.

- `train_trial`: the Tune trainable around trial.run_trial (the plain classifier-then-decoder
  training), which reports each epoch's metrics with its resume files as the checkpoint.
- the searcher (searcher.py): `SweepSearch` around ConcurrencyLimiter(`StudySearch`), Optuna's
  seeded multi-objective study in the sweep's driver folder, brought in line with the restored
  trial list on resume.
- `make_scheduler`: none (FIFO), ASHA, or `MOASHAScheduler`, Tune's adaptor of moasha.MOASHA.
- `run_sweep`: builds or restores the Tuner, runs it, and writes the outputs: trials.parquet,
  pareto.png, best_config.yaml and summary.json.

Storage: `storage_path` is a local folder, s3://bucket/prefix or gs://bucket/prefix (see
regene_ray.storage). Tune writes its experiment state and the trial checkpoints there through the
pyarrow filesystem. Optuna's sqlite cannot live on an object store, so for remote storage the
driver keeps it (and writes the outputs) in a local cache folder keyed by the URI
(regene_ray.search.sync.driver_folder) and uploads them: the study and MO-ASHA's rungs whenever
they changed while the sweep runs (`UploadFiles`), everything at the end. A resume on another
machine downloads them first.

Where things are: Tune pickles the searcher, the scheduler and the callbacks into tuner.pkl
when the Tuner is made and unpickles them on Tuner.restore, perhaps on another machine. Each
keeps the sweep's location `exp` (a Storage: a local path or a URI) and works out its driver
folder from it where it runs (for remote storage, a cache folder under that machine's
$REGENE_CACHE_DIR), so no process-wide setting tells them, and two sweeps in one process never
share one. The searcher's state (searcher-state-*.pkl) is written without its study storage
(regene_ray.search.study.save_state), which `StudySearch.restore` reopens there. Because
tuner.pkl names the location, a sweep resumes only where it started (sweep.prepare_resume
refuses a moved one).

A trial that stops before its decoder finished (an error, ASHA or MO-ASHA) gets val_mae = NaN
in trials.parquet and is never on the front.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from pathlib import Path

import ray
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from regene_ray.config import ConfigError, save_json
from regene_ray.search.moasha import MOASHA
from regene_ray.search.outputs import (
    MOASHA_FILE,
    STUDY_FILE,
    SUMMARY_FILE,
    trials_table,
    write_outputs,
)
from regene_ray.search.searcher import StudySearch, SweepSearch
from regene_ray.search.space import SearchSpace
from regene_ray.search.sweep import (
    SweepOptions,
    check_name,
    default_concurrency,
    estimate_rungs,
    moasha_rungs,
    prepare_new,
    prepare_resume,
    space_record,
    trial_resources,
)
from regene_ray.search.sync import driver_folder, upload_files
from regene_ray.search.trial import run_trial
from regene_ray.storage import Storage

log = logging.getLogger(__name__)


# the trainable


def train_trial(config: dict, space: SearchSpace, threads: int = 1, device: str = "cpu",
                estimate_at: tuple[int, ...] = (), estimate: str = "ridge",
                tell_estimate: bool = True) -> None:
    """Tune trainable: trial.run_trial, its resume files restored from and reported as Tune
    checkpoints, each report naming the trial's node (trials.parquet's node_id)."""
    torch.set_num_threads(max(1, threads))  # process-wide, but the process is a Tune worker
    # (never the driver) that runs only trials of this sweep, each with the same share
    node = ray.get_runtime_context().get_node_id()

    def report(metrics: dict, state: Path | None) -> None:
        tune.report({**metrics, "node_id": node},
                    checkpoint=None if state is None else tune.Checkpoint.from_directory(state))

    with tempfile.TemporaryDirectory() as work:
        if (restored := tune.get_checkpoint()) is not None:
            restored.to_directory(work)
        run_trial(config, space, report, Path(work), device=device, estimate_at=estimate_at,
                  estimate=estimate, tell_estimate=tell_estimate)


# the schedulers


class MOASHAScheduler(FIFOScheduler):
    """Tune's adaptor of moasha.MOASHA: each result's objectives go to `moasha`, which keeps
    the rungs and decides. Its rungs file is driver_folder(exp)/moasha_rungs.yaml, worked out
    on first use on the machine running the sweep (`moasha` is pickled into tuner.pkl without
    one)."""

    def __init__(self, moasha: MOASHA, exp: Storage, time_attr: str = "training_iteration"):
        super().__init__()
        self._metric = None  # several objectives: nothing for Tune's single-metric checks
        self.moasha, self.exp, self.time_attr = moasha, exp, time_attr

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # the objectives are fixed at construction

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self.moasha.state_file is None:
            self.moasha.state_file = driver_folder(self.exp) / MOASHA_FILE
        return self.moasha.on_result(trial.trial_id, result.get(self.time_attr), result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        pass  # a finished trial's rungs were recorded as it passed them

    def debug_string(self) -> str:
        return f"Using {self.moasha.describe()}"


def make_asha(space: SearchSpace, reduction_factor: float = 2.0) -> ASHAScheduler:
    """Opt-in ASHA on val_accuracy, deciding only during the classifier phase.

    ASHA ranks trials on one scalar, so it cannot be honest about MAE: here it compares
    classifier accuracy at rungs of `classifier_epochs_done` (1, eta, eta^2, ... epochs) and
    never stops a trial once its decoder trains. Bias: it drops architectures whose classifiers
    learn slowly (often the deep or strongly sparse ones) without ever measuring their MAE,
    although such a trial can sit on the front at the low-MAE end. Stopped trials are told to
    Optuna with the early MAE estimate of their last rung (or WORST_MAE, see trial.py) and are
    marked STOPPED in trials.parquet.
    """
    epochs = space.run_config().classifier_training.epochs
    return ASHAScheduler(time_attr="classifier_epochs_done", metric="val_accuracy", mode="max",
                         max_t=epochs + 1, grace_period=1, reduction_factor=reduction_factor)


SCHEDULERS = ("none", "asha", "moasha")


def make_scheduler(name: str, space: SearchSpace, exp: Storage, reduction_factor: float = 2.0):
    """The Tune scheduler for --scheduler (None for none: FIFO, every trial runs to the end);
    moasha: sweep.moasha_rungs, its rungs kept in the driver folder of `exp`."""
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    if name == "moasha":
        return MOASHAScheduler(moasha_rungs(space, reduction_factor=reduction_factor), exp)
    return make_asha(space, reduction_factor) if name == "asha" else None


class UploadFiles(tune.Callback):
    """Uploads the Optuna study (and MO-ASHA's rungs) of a sweep on remote storage `exp`
    whenever they changed (checked after every step of the Tune loop, and at the end), so
    remote storage does not lag the searcher."""

    def __init__(self, exp: Storage):
        self.exp, self.mtime = exp, None

    def _sync(self) -> None:
        local = driver_folder(self.exp)  # on the machine the callback runs on
        names = [n for n in (STUDY_FILE, MOASHA_FILE) if (local / n).is_file()]
        mtime = [(local / n).stat().st_mtime_ns for n in names]
        if mtime != self.mtime:
            upload_files(local, self.exp, names)
            self.mtime = mtime

    def on_step_end(self, iteration, trials, **info):
        self._sync()

    def on_experiment_end(self, trials, **info):
        self._sync()


# the sweep


def _new_tuner(trainable, space: SearchSpace, opts: SweepOptions, exp: Storage,
               num_samples: int) -> tune.Tuner:
    """A new Tuner for the sweep in `exp`, with its searcher, scheduler and storage."""
    concurrency = opts.max_concurrent or default_concurrency(
        ray.cluster_resources(), opts.cpus_per_trial, opts.gpus_per_trial)
    searcher = SweepSearch(StudySearch(space, exp, opts.name, num_samples, opts.sampler,
                                       opts.startup_trials), concurrency)
    log.info("sweep %s: %d trials, %d at once, %s per trial, sampler %s, scheduler %s",
             exp, num_samples, concurrency,
             trial_resources(opts.cpus_per_trial, opts.gpus_per_trial),
             opts.sampler or space.sampler, opts.scheduler)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher,
                                    scheduler=make_scheduler(opts.scheduler, space, exp,
                                                             opts.reduction_factor),
                                    num_samples=num_samples,  # metric/mode: on the searcher
                                    time_budget_s=opts.time_budget_s,
                                    # a trial's worker process runs the next trial: Python,
                                    # torch and data imports are paid once per worker
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=opts.name, storage_path=Storage(opts.storage_path).path(),
            storage_filesystem=None if exp.is_local else exp.fs,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
            callbacks=[] if exp.is_local else [UploadFiles(exp)],
            # experiment state to remote storage at least every 30 s (Tune's default: 300 s,
            # sooner when trials checkpoint); what a resume after a driver crash starts from
            sync_config=tune.SyncConfig(sync_period=30)),
    )


def run_sweep(space: SearchSpace, opts: SweepOptions) -> dict:
    """Run (or resume) the sweep and write its outputs into storage_path/name.

    Resume: when storage_path/name holds a Tune experiment, it is restored with
    Tuner.restore(resume_unfinished=True, resume_errored=False, restart_errored=...): finished
    trials are kept, unfinished ones continue from their last epoch checkpoint, and the searcher
    (with its Optuna study in the same folder) continues where it stopped.

    Returns:
        The summary written to summary.json.
    """
    check_name(opts.name)
    exp = Storage(opts.storage_path).child(opts.name)
    exp_dir = driver_folder(exp)  # == the experiment folder, when local
    fs = None if exp.is_local else exp.fs  # Tune's default for local paths
    num_samples = opts.num_samples or space.num_samples
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space,
                             threads=max(1, math.floor(opts.cpus_per_trial)),
                             device="auto" if opts.gpus_per_trial > 0 else "cpu",
                             estimate_at=estimate_rungs(opts, space),
                             estimate=opts.early_estimate, tell_estimate=opts.tell_estimate),
        trial_resources(opts.cpus_per_trial, opts.gpus_per_trial),
    )
    record = space_record(space, num_samples, opts)
    t0 = time.perf_counter()
    resumed = tune.Tuner.can_restore(exp.path(), storage_filesystem=fs)
    if resumed:
        prepare_resume(exp, exp_dir, record, opts.name)
        tuner = tune.Tuner.restore(exp.path(), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=opts.restart_errored,
                                   storage_filesystem=fs)
    else:
        prepare_new(exp, exp_dir, record)
        tuner = _new_tuner(trainable, space, opts, exp, num_samples)
    table = trials_table(tuner.fit(), space)
    try:
        summary = write_outputs(table, space, exp_dir, opts.name, opts.accuracy_tolerance,
                                where=exp)
        summary.update(resumed=resumed, wall_s=time.perf_counter() - t0, num_samples=num_samples,
                       storage=str(exp))
        save_json(summary, exp_dir / SUMMARY_FILE)
    finally:
        if not exp.is_local:
            log.info("uploaded %s to %s", upload_files(exp_dir, exp), exp)
    return summary
