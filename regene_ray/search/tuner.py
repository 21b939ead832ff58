"""Architecture search on Ray Tune + Optuna: two objectives (accuracy up, decoder MAE down).

Pieces, in pipeline order:
- `train_trial`: the Tune trainable: jobs/train.py's train_classifier (reporting val_accuracy
  and latent_sparsity each epoch), then train_decoder on the frozen codes (reporting val_mae),
  through their on_epoch hook; the checkpoint is their resume files, so a restored trial
  continues where it stopped.
- `make_searcher`: OptunaSearch with metric=[val_accuracy, val_mae], mode=[max, min], a seeded
  sampler and an Optuna sqlite storage in the experiment folder (optuna-dashboard opens it).
- `run_sweep`: builds or restores the Tuner, runs it, and writes the outputs: trials.parquet,
  pareto.png, best_config.yaml and summary.json.

Storage: `storage_path` is a local folder, s3://bucket/prefix or gs://bucket/prefix (see
regene_ray.storage). Tune writes its experiment state and the trial checkpoints there through the
pyarrow filesystem. Optuna's sqlite cannot live on an object store, so for remote storage the
driver keeps it (and writes the outputs) in a local cache folder keyed by the URI
(`$REGENE_CACHE_DIR`, else ~/.cache/regene-ray) and uploads them: the study whenever it changed
while the sweep runs (`UploadFiles`), everything at the end. A resume on another machine downloads
them, and the restored searcher reopens the study there (StudySearch, below).

Every report carries both objectives. While the classifier trains there is no decoder yet, so
val_mae holds the placeholder WORST_MAE (1.0: the largest possible MAE of [0, 1] pixels) and
`phase` says "classifier"; the final report of a finished trial holds the measured values, and
that final report is what Optuna is told. A trial that stops before its decoder finished (an
error, or ASHA) gets val_mae = NaN in trials.parquet and is never on the front.

Why StudySearch:
Ray Tune pickles the searcher twice: the object itself into tuner.pkl (when the Tuner is made)
and its `__dict__` into searcher-state-*.pkl (at every experiment checkpoint). Optuna's
RDBStorage pickles its URL, `sqlite:////abs/path/optuna.sqlite`, and reopens that path when
unpickled. When the driver's folder for the study differs on resume (remote storage: a cache
folder on whatever machine resumes; local storage: a moved experiment folder), the old path is
wrong: sqlite fails ("unable to open database file") or silently starts an empty study there.

`StudySearch` therefore
* leaves the live study out of its own pickle (tuner.pkl): Tune restores it right after from the
  searcher state, which always happens on resume;
* restores the searcher state with an unpickler that reopens every RDBStorage at `relocate_to`
  (set by regene_ray.search.run_sweep before Tuner.restore).
"""

from __future__ import annotations

import logging
import math
import pickle
import posixpath
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from optuna.storages import RDBStorage
from ray.tune.search.optuna import OptunaSearch

from regene_ray.config import ConfigError, save_json, to_dict
from regene_ray.data import load_data
from regene_ray.losses import build_perceptual
from regene_ray.ownership import MARKER_FILE, OwnershipError, read_marker, write_marker
from regene_ray.run import build_models, load_or_train_judge
from regene_ray.search.moasha import use_state_folder
from regene_ray.search.outputs import (
    METRICS,
    MOASHA_FILE,
    MODES,
    OUTPUT_FILES,
    SPACE_FILE,
    STUDY_FILE,
    SUMMARY_FILE,
    WORST_MAE,
    study_url,
    trials_table,
    write_outputs,
)
from regene_ray.search.space import SearchSpace
from regene_ray.search.sync import download_files, driver_folder, upload_files
from regene_ray.storage import Storage
from regene_ray.train import (
    CLASSIFIER_STATE,
    DECODER_STATE,
    resolve_device,
    ridge_decoder_mae,
    train_classifier,
    train_decoder,
)

log = logging.getLogger(__name__)


# the Optuna searcher whose study may move


_relocate_to: str | None = None  # the study URL for storages unpickled from now on


def relocate_to(url: str | None) -> None:
    """Make restored searchers open their Optuna study at `url` (None: where it was)."""
    global _relocate_to
    _relocate_to = url


class RelocatedRDBStorage(RDBStorage):
    """RDBStorage that, when unpickled, opens the URL given to `relocate_to` instead."""

    def __setstate__(self, state: dict) -> None:
        super().__setstate__({**state, "url": _relocate_to or state["url"]})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        cls = super().find_class(module, name)
        if isinstance(cls, type) and issubclass(cls, RDBStorage):
            return RelocatedRDBStorage
        return cls


class StudySearch(OptunaSearch):
    """OptunaSearch that survives its sqlite study moving (see the module docstring)."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_ot_study=None, _storage=None, _ot_trials={})  # back from restore()
        return state

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = _Unpickler(f).load()
        if not isinstance(state, dict):
            raise ValueError(f"{checkpoint_path}: not a searcher state written by StudySearch")
        self.__dict__.update(state)

    def suggest(self, trial_id: str):
        if self._ot_study is None:  # Tune logged why restore() failed and went on without it
            raise RuntimeError(
                "the sweep's Optuna searcher state could not be restored (see the 'Failed to "
                "restore the run state' error above); rerun with a new --name to start afresh")
        return super().suggest(trial_id)




def train_trial(config: dict, space: SearchSpace, threads: int = 1, device: str = "cpu",
                estimate_at: tuple[int, ...] = ()) -> None:
    """Tune trainable: jobs/train.py's own train_classifier, then train_decoder on the frozen
    codes, each reporting and checkpointing through its on_epoch hook.

    The checkpoint is the run folder's resume files (classifier_train_state.pt and
    decoder_train_state.pt, regene_ray.train's one format): a restored trial copies them back
    and the same functions continue from the last finished epoch.

    Args:
        config: the searched values (dotted RunConfig paths), chosen by the sampler.
        space: the search space; its base holds the fixed per-trial budget.
        threads: torch CPU threads (the trial's CPU share).
        device: "cpu", or "auto" for the GPU (share) Tune gave the trial.
        estimate_at: training iterations (1-based classifier epochs) whose report carries an
            early MAE estimate in val_mae_early (the MO-ASHA rungs; ridge_decoder_mae).
            Decoder-phase reports carry the measured val_mae there.
    """
    import ray
    from ray import tune

    torch.set_num_threads(max(1, threads))
    cfg = space.run_config(config)
    dev = resolve_device(device)
    data = load_data(cfg.data)
    clf, dec = build_models(cfg, data)
    n_clf, node = cfg.classifier_training.epochs, ray.get_runtime_context().get_node_id()
    reported = []

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        restored = tune.get_checkpoint()
        if restored is not None:
            with restored.as_directory() as d:
                for name in (CLASSIFIER_STATE, DECODER_STATE):
                    if (Path(d) / name).is_file():
                        shutil.copy(Path(d) / name, work / name)

        def report(metrics: dict) -> None:  # each report names the trial's node (trials.parquet)
            reported.append({**metrics, "node_id": node})
            with tempfile.TemporaryDirectory() as snap:  # the state files as of this epoch
                for f in work.iterdir():
                    shutil.copy(f, snap)
                tune.report(reported[-1], checkpoint=tune.Checkpoint.from_directory(snap))

        def classifier_report(epoch: int, stats: dict) -> None:
            metrics = _classifier_metrics(epoch, stats)
            if epoch + 1 in estimate_at:  # a rung: how well do these codes decode already?
                est = ridge_decoder_mae(clf, data, dev)
                metrics.update(val_mae_early=est["mae"], mae_estimate_s=est["seconds"])
            report(metrics)

        clf_hist = train_classifier(clf, data, cfg.classifier_training, dev,
                                    checkpoint=work / CLASSIFIER_STATE, seed=cfg.seed,
                                    on_epoch=classifier_report)
        clf_last = _classifier_metrics(len(clf_hist) - 1, clf_hist[-1])
        with tempfile.TemporaryDirectory() as judge_dir:  # perceptual 'judge': a trial's own
            judge, _ = load_or_train_judge(cfg, data, Path(judge_dir), dev)
        perceptual, _ = build_perceptual(cfg.decoder_training.loss, clf, judge)
        dec_hist = train_decoder(dec, clf, data, cfg.decoder_training, dev, perceptual,
                                 checkpoint=work / DECODER_STATE, seed=cfg.seed,
                                 on_epoch=lambda e, s: report(_decoder_metrics(clf_last, n_clf,
                                                                               e, s)))
        if not reported:  # restored after its last epoch: repeat the final result
            tune.report({**_decoder_metrics(clf_last, n_clf, len(dec_hist) - 1, dec_hist[-1]),
                         "node_id": node})


def _classifier_metrics(epoch: int, stats: dict) -> dict:
    """A classifier-phase report: val_mae is the WORST_MAE placeholder (no decoder yet)."""
    return {"phase": "classifier", "epoch": epoch, "classifier_epochs_done": epoch + 1,
            "val_accuracy": stats["val_accuracy"], "latent_sparsity": stats["latent_sparsity"],
            "val_mae": WORST_MAE, "val_mae_early": math.nan, "mae_estimate_s": 0.0,
            "val_ssim": 0.0, "train_loss": stats["train_loss"]}


def _decoder_metrics(classifier_last: dict, n_clf: int, epoch: int, stats: dict) -> dict:
    """A decoder-phase report: the classifier's final values and this epoch's MAE / SSIM."""
    return {**classifier_last, "phase": "decoder", "epoch": n_clf + epoch,
            "val_mae": stats["val_mae"], "val_mae_early": stats["val_mae"],
            "mae_estimate_s": 0.0, "val_ssim": stats["val_ssim"],
            "train_loss": stats["train_loss"]}


# the searcher


def optuna_distributions(space: SearchSpace) -> dict:
    """The space's dimensions as Optuna distributions (keys are the dotted paths)."""
    import optuna

    out = {}
    for path, dim in space.search.items():
        if dim.choices is not None:
            out[path] = optuna.distributions.CategoricalDistribution(dim.choices)
        elif dim.is_int:
            out[path] = optuna.distributions.IntDistribution(dim.low, dim.high, log=dim.log)
        else:
            out[path] = optuna.distributions.FloatDistribution(float(dim.low), float(dim.high),
                                                               log=dim.log)
    return out


def make_sampler(name: str, seed: int, num_samples: int):
    """A seeded Optuna sampler sized for a small budget.

    tpe: multivariate multi-objective TPE; its random start-up phase is a third of the budget
    (3 to 10 trials) instead of Optuna's fixed 10, so a 16-trial sweep is mostly guided.
    nsga2: a population of a quarter of the budget (at least 4). random: the baseline.
    """
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                          n_startup_trials=min(10, max(3, num_samples // 3)))
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, num_samples // 4))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"unknown sampler '{name}'; use tpe, nsga2 or random")


def make_searcher(space: SearchSpace, exp_dir: Path, study_name: str, num_samples: int,
                  sampler: str | None = None):
    """OptunaSearch over `space`, both objectives, seeded, stored in exp_dir/optuna.sqlite.

    Ray 2.60's OptunaSearch takes `storage=` (an optuna BaseStorage instance, not a URL) and
    `study_name=`, and creates the study with load_if_exists=True.
    """
    import optuna


    storage = optuna.storages.RDBStorage(study_url(exp_dir))
    return StudySearch(optuna_distributions(space), metric=METRICS, mode=MODES,
                       sampler=make_sampler(sampler or space.sampler, space.seed, num_samples),
                       study_name=study_name, storage=storage)


def make_asha(space: SearchSpace):
    """Opt-in ASHA on val_accuracy, deciding only during the classifier phase.

    ASHA ranks trials on one scalar, so it cannot be honest about MAE: here it compares
    classifier accuracy at rungs of `classifier_epochs_done` (1, 2, 4, ... epochs) and never
    stops a trial once its decoder trains. Bias: it drops architectures whose classifiers learn
    slowly (often the deep or strongly sparse ones) without ever measuring their MAE, although
    such a trial can sit on the front at the low-MAE end. Stopped trials are told to Optuna
    with val_mae = WORST_MAE (dominated) and are marked STOPPED in trials.parquet.
    """
    from ray.tune.schedulers import ASHAScheduler

    epochs = space.run_config().classifier_training.epochs
    return ASHAScheduler(time_attr="classifier_epochs_done", metric="val_accuracy", mode="max",
                         max_t=epochs + 1, grace_period=1, reduction_factor=2)


def make_moasha(space: SearchSpace):
    """MO-ASHA over (val_accuracy, val_mae_early) at rungs of 1, 2, 4, ... classifier epochs,
    the rungs of make_asha, so the two differ only in what they rank on. At a rung
    val_mae_early is the early estimate (ridge_decoder_mae) the trainable computes at exactly
    these epochs. A trial whose decoder has started is never stopped: BENCHMARKS.md section 11
    measured rungs in the decoder phase too, where the MAE after one decoder epoch (of three)
    stopped all but one trial of a 5-minute MNIST sweep."""
    from regene_ray.search.moasha import MOASHAScheduler

    return MOASHAScheduler(["val_accuracy", "val_mae_early"], ["max", "min"],
                           max_t=space.run_config().classifier_training.epochs + 1,
                           grace_period=1, reduction_factor=2)


SCHEDULERS = ("none", "asha", "moasha")


def make_scheduler(name: str, space: SearchSpace):
    """The Tune scheduler for --scheduler (None for none: FIFO, every trial runs to the end)."""
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    return {"none": lambda _: None, "asha": make_asha, "moasha": make_moasha}[name](space)


def estimate_rungs(name: str, space: SearchSpace) -> tuple[int, ...]:
    """Classifier epochs (1-based) whose reports need the early MAE estimate: MO-ASHA's rungs;
    none for the other schedulers (they never read it)."""
    return tuple(make_moasha(space).milestones) if name == "moasha" else ()


@dataclass
class SweepOptions:
    storage_path: str | Path  # experiments live in storage_path/name: local, s3:// or gs://
    name: str  # experiment name; the same name resumes
    num_samples: int | None = None  # trials; None -> the space's num_samples
    cpus_per_trial: float = 1.0  # CPUs per trial (also torch threads)
    gpus_per_trial: float = 0.0  # GPUs per trial, fractional allowed; 0 asks for none
    max_concurrent: int | None = None  # None -> leave one CPU free for the driver
    max_failures: int = 1  # retries per trial (from its last checkpoint) before ERROR
    scheduler: str = "none"  # none, asha (make_asha) or moasha (make_moasha)
    accuracy_tolerance: float = 0.005  # best_config: lowest MAE within this of the best accuracy
    restart_errored: bool = False  # on resume, rerun errored trials from scratch
    sampler: str | None = None  # override the space's sampler (tpe, nsga2, random)
    time_budget_s: float | None = None  # wall-clock cap of a new sweep (Tune's time_budget_s)


def default_concurrency(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials at once: all CPUs but one (headroom for the driver and Ray), and the GPUs."""
    import ray

    res = ray.cluster_resources()
    n = max(1, int((res.get("CPU", 1) - 1) // cpus_per_trial))
    if gpus_per_trial > 0:
        n = min(n, max(1, int(res.get("GPU", 0) // gpus_per_trial)))
    log.info("running %d trial(s) at once: what the cluster holds now (%s CPU, %s GPU). On an "
                "autoscaling cluster pass --max-concurrent N, or the autoscaler is never asked "
                "for more nodes", n, res.get("CPU", 0), res.get("GPU", 0))
    return n


def trial_resources(cpus: float, gpus: float) -> dict:
    """Resource request; no GPU key at all for CPU trials (num_gpus=0 has been read as a request)."""
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"--cpus-per-trial {cpus} must be > 0 and --gpus-per-trial {gpus} >= 0")
    return {"cpu": cpus, **({"gpu": gpus} if gpus > 0 else {})}


def _space_record(space: SearchSpace, num_samples: int, opts: SweepOptions) -> dict:
    rec = to_dict(space)
    rec.pop("source")
    rec["num_samples"] = num_samples
    rec["scheduler"] = opts.scheduler
    rec["sampler"] = opts.sampler or space.sampler
    return rec


def claim_experiment(exp: Storage) -> None:
    """Before a new sweep starts in `exp`: refuse a non-empty folder that no regene-ray sweep
    made (its files are never deleted), then mark the folder as this sweep's."""
    marker = read_marker(exp)
    if marker is None and not exp.is_empty():
        raise OwnershipError(
            f"{exp} is a non-empty folder that is not a regene-ray sweep (no {MARKER_FILE}); "
            "pass another --name or --storage-path. Nothing in it is deleted")
    if marker is not None and marker.get("kind") != "search":
        raise OwnershipError(f"{exp} holds a regene-ray '{marker.get('kind')}' output, not a "
                             "sweep; pass another --name or --storage-path")
    if marker is None:
        write_marker(exp, "search", [*OUTPUT_FILES], {"name": posixpath.basename(exp.root)})


def upload_callback(exp: Storage):
    """A Tune callback that uploads the Optuna study (and MO-ASHA's rungs) whenever they changed
    (checked after every step of the Tune loop, and at the end), so remote storage does not lag
    the searcher. The cache folder is worked out where the callback runs (it is pickled into
    tuner.pkl)."""
    from ray.tune import Callback

    class UploadFiles(Callback):
        def __init__(self):
            self.mtime = None

        def _sync(self) -> None:
            local = driver_folder(exp)
            names = [n for n in (STUDY_FILE, MOASHA_FILE) if (local / n).is_file()]
            mtime = [(local / n).stat().st_mtime_ns for n in names]
            if mtime != self.mtime:
                upload_files(local, exp, names)
                self.mtime = mtime

        def on_step_end(self, iteration, trials, **info):
            self._sync()

        def on_experiment_end(self, trials, **info):
            self._sync()

    return UploadFiles()


def check_name(name: str) -> str:
    """An experiment name is a folder name in the storage path (local or a bucket key)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ConfigError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (it names a "
                          "folder in the storage path)")
    return name


def _restored_tuner(trainable, space: SearchSpace, opts: SweepOptions, record: dict,
                    exp: Storage, exp_dir: Path, num_samples: int):
    """Tuner.restore of the sweep in `exp`, after checking it was started with this space."""
    from ray import tune

    if not exp.is_local:
        download_files(exp, exp_dir, opts.name)
    old = yaml.safe_load((exp_dir / SPACE_FILE).read_text()) \
        if (exp_dir / SPACE_FILE).is_file() else None
    if old != record:
        raise ConfigError(
            f"{exp} holds a sweep with a different search space or options; pass a new "
            "--name (or the same space, --num-samples, --scheduler and sampler) to resume it")
    log.info("resuming the sweep in %s", exp)
    relocate_to(study_url(exp_dir))  # the restored searcher reopens its study here
    return tune.Tuner.restore(exp.path(), trainable=trainable, resume_unfinished=True,
                              resume_errored=False, restart_errored=opts.restart_errored,
                              storage_filesystem=None if exp.is_local else exp.fs)


def _new_tuner(trainable, space: SearchSpace, opts: SweepOptions, record: dict, exp: Storage,
               exp_dir: Path, num_samples: int):
    """A new Tuner for the sweep: claims `exp`, records the space, builds searcher and scheduler."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

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
    concurrency = opts.max_concurrent or default_concurrency(opts.cpus_per_trial,
                                                             opts.gpus_per_trial)
    searcher = ConcurrencyLimiter(
        make_searcher(space, exp_dir, opts.name, num_samples, opts.sampler), concurrency)
    scheduler = make_scheduler(opts.scheduler, space)
    log.info("sweep %s: %d trials, %d at once, %s per trial, sampler %s, scheduler %s",
             exp, num_samples, concurrency,
             trial_resources(opts.cpus_per_trial, opts.gpus_per_trial),
             opts.sampler or space.sampler, opts.scheduler)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=num_samples,  # metric/mode: on the searcher
                                    time_budget_s=opts.time_budget_s),
        run_config=tune.RunConfig(
            name=opts.name, storage_path=Storage(opts.storage_path).path(),
            storage_filesystem=None if exp.is_local else exp.fs,
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2), verbose=1,
            callbacks=[] if exp.is_local else [upload_callback(exp)],
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
    from ray import tune

    check_name(opts.name)
    store = Storage(opts.storage_path)
    fs = None if store.is_local else store.fs  # Tune's default for local paths
    exp = store.child(opts.name)
    exp_dir = driver_folder(exp)  # == the experiment folder, when local
    num_samples = opts.num_samples or space.num_samples
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, space=space,
                             threads=max(1, math.floor(opts.cpus_per_trial)),
                             device="auto" if opts.gpus_per_trial > 0 else "cpu",
                             estimate_at=estimate_rungs(opts.scheduler, space)),
        trial_resources(opts.cpus_per_trial, opts.gpus_per_trial),
    )
    record = _space_record(space, num_samples, opts)
    use_state_folder(exp_dir)  # MO-ASHA keeps its rungs beside the study (resumable)
    t0 = time.perf_counter()
    resumed = tune.Tuner.can_restore(exp.path(), storage_filesystem=fs)
    tuner = (_restored_tuner if resumed else _new_tuner)(trainable, space, opts, record, exp,
                                                         exp_dir, num_samples)
    grid = tuner.fit()
    table = trials_table(grid, space)
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
