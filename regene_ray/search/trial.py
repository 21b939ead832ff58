"""One trial of the sweep, in plain torch (no Ray): jobs/train.py's own train_classifier, then
train_decoder on the frozen codes, each calling `report(metrics, state)` after every epoch
through its on_epoch hook. regene_ray.search.tuner.train_trial is the Tune trainable around it.

`state` is a folder holding the trial's resume files as of that epoch (classifier_train_state.pt
and decoder_train_state.pt, regene_ray.train's one format): the Tune wrapper reports it as the
trial's checkpoint and, on restore, copies it back into `work`, where the same functions
continue from the last finished epoch.

Every report carries both objectives. While the classifier trains there is no decoder yet, so
val_mae holds the placeholder WORST_MAE (1.0: the largest possible MAE of [0, 1] pixels) and
`phase` says "classifier", except at an early-stopping rung (`estimate_at`), where the trial
estimates the MAE its codes allow (val_mae_early) and, with `tell_estimate`, reports it as
val_mae too: Optuna is told a trial's last report, so a trial stopped at a rung is told its
estimate rather than a placeholder that says nothing about its architecture. The final report
of a finished trial holds the measured values. trials.parquet records a measured MAE only
(regene_ray.search.outputs), so an estimate never reaches the front.

Two estimates (BENCHMARKS.md section 11 compares them with the trained decoder): "ridge", a
linear decoder in closed form (regene_ray.train.ridge_decoder_mae, about 0.5 s), at every rung;
"fit", the same at all but the last rung and a short fit of the trial's own decoder at the last
one (estimate_decoder_mae, 100 steps, about 10x the cost, rank correlation 0.976 against the
ridge's 0.929), where the last decision before the decoder trains is made.
"""

from __future__ import annotations

import copy
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from regene_ray.data import DataSplits, load_data
from regene_ray.losses import build_perceptual
from regene_ray.run import RunConfig, build_models, load_or_train_judge
from regene_ray.search.outputs import WORST_MAE
from regene_ray.search.space import SearchSpace
from regene_ray.train import (
    CLASSIFIER_STATE,
    DECODER_STATE,
    estimate_decoder_mae,
    resolve_device,
    ridge_decoder_mae,
    train_classifier,
    train_decoder,
)

STATE_FILES = (CLASSIFIER_STATE, DECODER_STATE)  # what a trial's checkpoint holds
ESTIMATES = ("ridge", "fit")  # the early MAE estimates a rung can use

# report(metrics, state): state is a folder of the resume files as of this report (valid
# during the call), or None for a repeated final result that needs no checkpoint
Report = Callable[[dict, Path | None], None]


def run_trial(config: dict, space: SearchSpace, report: Report, work: Path, *,
              device: str = "cpu", estimate_at: tuple[int, ...] = (), estimate: str = "ridge",
              tell_estimate: bool = True) -> None:
    """Train one trial's classifier, then its decoder, reporting after every epoch.

    Args:
        config: the searched values (dotted RunConfig paths), chosen by the sampler.
        space: the search space; its base holds the fixed per-trial budget.
        report: called with each epoch's metrics and a snapshot of the resume files.
        work: the trial's state folder; resume files already in it (a restored checkpoint)
            continue training from their last finished epoch.
        device: "cpu", or "auto" for the GPU (share) the trial was given.
        estimate_at: training iterations (1-based classifier epochs) whose report carries an
            early MAE estimate in val_mae_early (the rungs of ASHA and MO-ASHA).
            Decoder-phase reports carry the measured val_mae there.
        estimate: "ridge" or "fit" (see the module docstring).
        tell_estimate: report the estimate as val_mae at a rung (else the WORST_MAE placeholder).
    """
    if estimate not in ESTIMATES:
        raise ValueError(f"estimate {estimate!r}: use one of {', '.join(ESTIMATES)}")
    cfg = space.run_config(config)
    dev = resolve_device(device)
    data = load_data(cfg.data)
    clf, dec = build_models(cfg, data)
    reported = []

    def send(metrics: dict) -> None:
        reported.append(metrics)
        with tempfile.TemporaryDirectory() as snap:  # the resume files as of this epoch
            for name in STATE_FILES:
                if (work / name).is_file():
                    shutil.copy(work / name, snap)
            report(metrics, Path(snap))

    def classifier_report(epoch: int, stats: dict) -> None:
        metrics = _classifier_metrics(epoch, stats)
        if epoch + 1 in estimate_at:  # a rung: how well do these codes decode already?
            if estimate == "fit" and epoch + 1 == max(estimate_at):  # an untrained copy
                kind = "fit"
                est = estimate_decoder_mae(clf, copy.deepcopy(dec), data, cfg.decoder_training,
                                           dev, seed=cfg.seed)
            else:
                kind, est = "ridge", ridge_decoder_mae(clf, data, dev)
            metrics.update(val_mae_early=est["mae"], mae_estimate_s=est["seconds"], estimate=kind)
            if tell_estimate:
                metrics["val_mae"] = est["mae"]
        send(metrics)

    clf_hist = train_classifier(clf, data, cfg.classifier_training, dev,
                                checkpoint=work / CLASSIFIER_STATE, seed=cfg.seed,
                                on_epoch=classifier_report)
    clf_last = _classifier_metrics(len(clf_hist) - 1, clf_hist[-1])
    n_clf = cfg.classifier_training.epochs
    dec_hist = train_decoder(dec, clf, data, cfg.decoder_training, dev,
                             _perceptual(cfg, data, clf, dev),
                             checkpoint=work / DECODER_STATE, seed=cfg.seed,
                             on_epoch=lambda e, s: send(_decoder_metrics(clf_last, n_clf, e, s)))
    if not reported:  # restored after its last epoch: repeat the final result
        report(_decoder_metrics(clf_last, n_clf, len(dec_hist) - 1, dec_hist[-1]), None)


def _perceptual(cfg: RunConfig, data: DataSplits, clf: torch.nn.Module, dev: torch.device):
    """The decoder's perceptual loss; a 'judge' network is the trial's own (not cached)."""
    with tempfile.TemporaryDirectory() as judge_dir:
        judge, _ = load_or_train_judge(cfg, data, Path(judge_dir), dev)
    return build_perceptual(cfg.decoder_training.loss, clf, judge)[0]


def _classifier_metrics(epoch: int, stats: dict) -> dict:
    """A classifier-phase report: val_mae is the WORST_MAE placeholder (no decoder yet)."""
    return {"phase": "classifier", "epoch": epoch, "classifier_epochs_done": epoch + 1,
            "val_accuracy": stats["val_accuracy"], "latent_sparsity": stats["latent_sparsity"],
            "val_mae": WORST_MAE, "val_mae_early": math.nan, "mae_estimate_s": 0.0,
            "estimate": "",
            "val_ssim": 0.0, "train_loss": stats["train_loss"]}


def _decoder_metrics(classifier_last: dict, n_clf: int, epoch: int, stats: dict) -> dict:
    """A decoder-phase report: the classifier's final values and this epoch's MAE / SSIM."""
    return {**classifier_last, "phase": "decoder", "epoch": n_clf + epoch,
            "val_mae": stats["val_mae"], "val_mae_early": stats["val_mae"],
            "mae_estimate_s": 0.0, "val_ssim": stats["val_ssim"],
            "train_loss": stats["train_loss"]}
