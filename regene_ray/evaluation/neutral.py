"""The neutral classifier: the evaluation's judge of generations, trained once and cached.

The paper measures how recognisable generations are with a classifier that had no part in making
them: a CIFAR-style ResNet v1 (regene_ray.resnet; ResNet-56 in the paper, ResNet-20 by default
here because it trains on a CPU). Its penultimate features are also the fallback feature space
for FID when Inception weights are absent.

What is the evaluation's own: the cache folder (`REPORT/neutral/` or --neutral-cache, shareable
between reports and claimed with an ownership marker so it never overwrites another folder),
and scoring generations. The model, its training and its save/reuse-by-config are the shared
ResNet's (regene_ray.resnet), re-exported here under the names the evaluation has used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from regene_ray.data import DataSplits
from regene_ray.ownership import MARKER_FILE, OwnershipError, read_marker, write_marker
from regene_ray.resnet import (
    METRICS_FILE,
    RESNET_FILES,
    STATE_FILE,
    BasicBlock,
    ResNet,
    ResNetConfig,
    ResNetTrainConfig,
    accuracy,
    fit_resnet,
    load_or_train_resnet,
    predict,
    random_shift,
    train_resnet,
)
from regene_ray.storage import Storage

NEUTRAL_DIR = "neutral"
# the shared ResNet under the names the evaluation (and its callers) have known it by
NeutralClassifier = ResNet
NeutralTrainConfig = ResNetTrainConfig
fit_classifier = fit_resnet
train_neutral = train_resnet

__all__ = [
    # the evaluation's own
    "NEUTRAL_DIR", "claim_cache", "load_or_train_neutral", "score_generations",
    # the shared ResNet's (regene_ray.resnet), under both names
    "METRICS_FILE", "STATE_FILE", "BasicBlock", "ResNet", "ResNetConfig", "ResNetTrainConfig",
    "NeutralClassifier", "NeutralTrainConfig", "accuracy", "fit_classifier", "fit_resnet",
    "predict", "random_shift", "train_neutral", "train_resnet",
]


# training and caching


def load_or_train_neutral(folder: str | Path, data: DataSplits, model_cfg: ResNetConfig,
                          train_cfg: ResNetTrainConfig, device: torch.device,
                          data_identity: dict | None = None, flag: str = "--neutral-cache",
                          what: str = "neutral") -> tuple[ResNet, dict]:
    """The neutral classifier for this data: cached in `folder` when its config matches.

    Args:
        folder: the cache folder (evaluation passes REPORT/neutral or --neutral-cache); it must
            be new, empty or an earlier cache (claim_cache).
        data: the run's splits (train for training, holdout for validation, test for accuracy).
        model_cfg, train_cfg: what to build and how to train it.
        device: where to train.
        data_identity: the data config, stored so a cache for other data is never reused.
        flag: how errors name `folder` to the user; what: how the log names the network.
    Returns:
        (model in eval mode, metrics: test_accuracy, history, cached flag, seconds).
    """
    folder = Path(folder)
    claim_cache(folder, flag)
    return load_or_train_resnet(folder, data, model_cfg, train_cfg, device,
                                data_identity=data_identity, what=what)


def claim_cache(folder: Path, flag: str = "--neutral-cache") -> None:
    """Use `folder` as a neutral-model cache only if it is new, empty or already one (its
    ownership marker says so): a cache pointed at a run or any other folder would overwrite
    files there (metrics.json, weights.pt ...)."""
    st = Storage(folder)
    marker = read_marker(st)
    if marker is None and not st.is_empty():
        raise OwnershipError(
            f"{flag} {folder} is a non-empty folder that is not a neutral-classifier "
            f"cache (no {MARKER_FILE}); pass a new or empty folder, or an earlier cache")
    if marker is not None and marker.get("kind") != "neutral":
        raise OwnershipError(f"{flag} {folder} holds a regene-ray "
                             f"'{marker.get('kind')}' output, not a neutral-classifier cache; "
                             "pass a new or empty folder")
    if marker is None:
        st.makedirs()
        write_marker(st, "neutral", RESNET_FILES, {})


# scoring


def score_generations(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray,
                      n_parents: np.ndarray | None, num_classes: int,
                      device: torch.device | str) -> dict:
    """Fraction of images the neutral classifier assigns to their intended label (paper Fig. 4a).

    Args:
        model: the neutral classifier.
        images: uint8 (N, C, H, W).
        labels: (N,) intended classes.
        n_parents: (N,) parents per image, or None.
        num_classes: K, for the per-class breakdown.
    Returns:
        {"overall", "count", "per_class": {c: acc}, "per_n": {n: acc}, "per_n_class": {n: {c: acc}}};
        classes or n with no images are left out.
    """
    labels = np.asarray(labels, dtype=np.int64)
    hit = (predict(model, images, device).numpy() == labels)

    def by_class(mask: np.ndarray) -> dict:
        return {str(c): float(hit[mask & (labels == c)].mean())
                for c in range(num_classes) if (mask & (labels == c)).any()}

    everything = np.ones(len(labels), dtype=bool)
    out = {"overall": float(hit.mean()) if len(hit) else float("nan"), "count": int(len(hit)),
           "per_class": by_class(everything), "per_n": {}, "per_n_class": {}}
    if n_parents is not None:
        n_parents = np.asarray(n_parents, dtype=np.int64)
        for k in np.unique(n_parents):
            m = n_parents == k
            out["per_n"][str(int(k))] = float(hit[m].mean())
            out["per_n_class"][str(int(k))] = by_class(m)
    return out
