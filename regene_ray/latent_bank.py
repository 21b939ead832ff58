"""The latent bank (training codes per class, as Parquet) and the per-class thresholds tau_c:
their files, read and written. Torch-free, so a job reads a run while torch loads; they are
built from the trained networks in regene_ray.bank_build."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regene_ray.config import CheckpointError, save_json
from regene_ray.storage import atomic_write

if TYPE_CHECKING:
    import torch

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
        import torch  # the one use of torch here: kept lazy (see the module docstring)

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
