"""The latent bank (training codes per class, as Parquet) and the per-class thresholds tau_c."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from regene_ray.checkpoint import CheckpointError
from regene_ray.classifier import Classifier
from regene_ray.config import save_json
from regene_ray.data import to_float, to_uint8
from regene_ray.decoder import Decoder
from regene_ray.filtering import label_confidence
from regene_ray.storage import atomic_write

BANK_FILE = "latent_bank.parquet"
THRESHOLDS_FILE = "thresholds.json"


@dataclass
class LatentBank:
    """Codes of training images. Row i: id (index in the train split), label, code, confidence.

    `correct` marks codes the head assigns to their own label; only those are parents, since
    Lemma 1 promises class-preserving mixes for codes inside the class's region.
    """

    ids: np.ndarray  # (N,) int64
    labels: np.ndarray  # (N,) int64
    latents: np.ndarray  # (N, latent_dim) float32; read-only once loaded (never written)
    confidence: np.ndarray  # (N,) float32, head softmax of the own label
    correct: np.ndarray  # (N,) bool, head argmax == label

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def latent_dim(self) -> int:
        return int(self.latents.shape[1])

    def latents_tensor(self) -> torch.Tensor:
        """The codes as a (N, latent_dim) float32 tensor sharing their memory: a bank loaded from
        Parquet, or mapped from Ray's object store, is read-only and only ever indexed."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.ascontiguousarray(self.latents, np.float32))

    def pools(self, num_classes: int) -> list[np.ndarray]:
        """Row indices of eligible parents for each class (sorted, so stable across loads)."""
        return [np.flatnonzero((self.labels == c) & self.correct) for c in range(num_classes)]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        table = pa.table({
            "id": pa.array(self.ids, pa.int64()),
            "label": pa.array(self.labels.astype(np.int16), pa.int16()),
            "latent": pa.FixedSizeListArray.from_arrays(
                pa.array(self.latents.reshape(-1), pa.float32()), self.latent_dim),
            "confidence": pa.array(self.confidence, pa.float32()),
            "correct": pa.array(self.correct, pa.bool_()),
        })
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))

    @classmethod
    def load(cls, path: str | Path | bytes, *, name: str | None = None) -> LatentBank:
        """From a file, or from its bytes (a run read once, or from remote storage); errors
        name `name` (default: the path), the file as the user gave it."""
        if isinstance(path, bytes):
            source, path = pa.BufferReader(path), name or "(in memory)"
        else:
            path = Path(path)
            if not path.is_file():
                raise CheckpointError(f"latent bank {path} is missing; rerun jobs/train.py for "
                                      "this run")
            source = path
        try:
            t = pq.read_table(source)
            d = t.column("latent").type.list_size
            # a read-only view of Arrow's buffer, not a copy: copying 220 MB (the MNIST-size
            # bank) cost more than reading it (BENCHMARKS.md section 12)
            lat = t.column("latent").combine_chunks().flatten().to_numpy().reshape(-1, d)
            return cls(
                ids=t.column("id").to_numpy().astype(np.int64),
                labels=t.column("label").to_numpy().astype(np.int64),
                latents=lat.astype(np.float32, copy=False),
                confidence=t.column("confidence").to_numpy().astype(np.float32),
                correct=t.column("correct").to_numpy(zero_copy_only=False).astype(bool),
            )
        except (pa.ArrowException, KeyError, AttributeError, ValueError) as e:
            raise CheckpointError(
                f"latent bank {path} is corrupt or has the wrong columns ({e}); rerun jobs/train.py"
            ) from e


@torch.no_grad()
def build_bank(classifier: Classifier, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               batch_size: int = 512) -> LatentBank:
    """Encode uint8 images `x` with labels `y` into a LatentBank (ids = row positions)."""
    classifier.eval()
    zs, confs, preds = [], [], []
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
        z = classifier.encode(to_float(xb, device))  # (B, latent_dim)
        logits = classifier.classify_latent(z)
        zs.append(z.float().cpu())
        confs.append(label_confidence(logits, yb.to(device)).cpu())
        preds.append(logits.argmax(1).cpu())
    labels = y.numpy().astype(np.int64)
    return LatentBank(
        ids=np.arange(len(x), dtype=np.int64),
        labels=labels,
        latents=torch.cat(zs).numpy(),
        confidence=torch.cat(confs).numpy().astype(np.float32),
        correct=torch.cat(preds).numpy() == labels,
    )


# How the image step's tau is set. "originals" is the paper's: tau_c is the classifier's mean
# confidence in class c on held-out images of class c, for both steps. "reconstructions" (this
# project's earlier default) judges decoded held-out codes instead, rounded to stored pixels like
# generations: less recognisable than originals, so a more lenient threshold.
THRESHOLD_RULES = ("originals", "reconstructions")


@torch.no_grad()
def compute_thresholds(classifier: Classifier, decoder: Decoder, x: torch.Tensor, y: torch.Tensor,
                       num_classes: int, device: torch.device, batch_size: int = 512, *,
                       image_rule: str = "originals") -> dict:
    """tau_c for both filter steps, from held-out uint8 images `x` with labels `y`.

    latent: the mean of head(enc(x))[c] (softmax) over held-out images of class c, which is the
        classifier's confidence on the originals, clf(x)[c].
    image: with image_rule 'originals' (the paper's), the same values; with 'reconstructions',
        the mean of clf(round(dec(enc(x))))[c]: reconstructions rounded to uint8 pixels and
        classified exactly as a stored generation is.
    """
    if image_rule not in THRESHOLD_RULES:
        raise ValueError(f"image_threshold {image_rule!r} must be one of {THRESHOLD_RULES}")
    classifier.eval()
    decoder.eval()
    lat, img = [], []
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size), strict=True):
        yb = yb.to(device)
        z = classifier.encode(to_float(xb, device))
        lat.append(label_confidence(classifier.classify_latent(z), yb).cpu())
        if image_rule == "reconstructions":
            stored = to_uint8(decoder(z)).float() / 255.0
            img.append(label_confidence(classifier(stored), yb).cpu())
    labels = y.numpy()
    lat_c = torch.cat(lat).double().numpy()
    img_c = torch.cat(img).double().numpy() if img else lat_c
    missing = [c for c in range(num_classes) if not (labels == c).any()]
    if missing:
        raise ValueError(
            f"holdout split has no images of class(es) {missing}; raise holdout_fraction or "
            "max_train so every class is held out"
        )
    return {
        "latent": [float(lat_c[labels == c].mean()) for c in range(num_classes)],
        "image": [float(img_c[labels == c].mean()) for c in range(num_classes)],
        "holdout_count": [int((labels == c).sum()) for c in range(num_classes)],
        "image_rule": image_rule,
        "rule": "tau_c = mean classifier confidence in class c on held-out images of class c "
                + ("(originals, both steps)" if image_rule == "originals" else
                   "(latent: originals; image: their reconstructions as uint8 pixels)"),
    }


def save_thresholds(thresholds: dict, path: str | Path) -> None:
    save_json(thresholds, path)


def parse_thresholds(text: str | bytes, num_classes: int, name: str) -> dict:
    """thresholds.json's contents, checked: one latent and one image tau per class."""
    try:
        t = json.loads(text)
        ok = all(len(t[k]) == num_classes for k in ("latent", "image"))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{name} is corrupt ({e}); rerun jobs/train.py") from e
    if not ok:
        raise CheckpointError(
            f"{name} does not hold {num_classes} latent and image thresholds; rerun jobs/train.py"
        )
    return t
