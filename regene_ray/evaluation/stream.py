"""Training batches streamed from generated Parquet with Ray Data (the evaluation's one Ray
module): `ray.data.read_parquet` -> PNG decoding in `map_batches` -> `iter_torch_batches` with a
seeded local shuffle, optionally mixed with real images at a fixed share of every batch.

Used by jobs/train_on_generated.py, which the Classification Accuracy Score and the low-data
numbers come from; works on local folders and on s3:// / gs:// outputs alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from regene_ray.storage import Storage

SHUFFLE_BUFFER = 8192  # rows in Ray Data's local shuffle buffer


def parquet_files(sources: Sequence[str]) -> tuple[list[str], object]:
    """The Parquet files (OUT/data/*.parquet) of mass-generation outputs, local or s3:// /
    gs://, and the pyarrow filesystem they are on; fails naming a source with none, or sources
    on different filesystems."""
    files: list[str] = []
    fs = None
    for src in sources:
        st = Storage(src)
        names = [n for n in st.list("data") if n.endswith(".parquet")]
        if not names:
            raise FileNotFoundError(f"--generated {src} has no data/*.parquet; pass the --out "
                                    "folder of a finished jobs/mass_generate.py run")
        if fs is not None and type(st.fs) is not type(fs):
            raise ValueError("--generated folders must all be local or all on one object store")
        fs = st.fs
        files += [st.path(f"data/{n}") for n in names]
    return files, fs


def _decode(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """PNG bytes -> uint8 (B, C, H, W); labels -> int64."""
    images = []
    for im in batch["image"]:
        a = np.asarray(Image.open(io.BytesIO(im["bytes"])))
        images.append(a[None] if a.ndim == 2 else np.transpose(a, (2, 0, 1)))
    return {"x": np.stack(images).astype(np.uint8), "label": batch["label"].astype(np.int64)}


def generated_batches(files: Sequence[str], filesystem, *, batch_size: int, seed: int,
                      real: tuple[torch.Tensor, torch.Tensor] | None = None,
                      real_fraction: float = 0.0, max_rows: int | None = None
                      ) -> tuple[Callable[[int, torch.Generator], Iterator], int]:
    """A batch source for evaluation.neutral.fit_classifier, and the generated rows it streams.

    Args:
        files, filesystem: Parquet files of generated images and their filesystem
            (parquet_files).
        batch_size: images per batch, generated and real together.
        seed: the shuffle seed (each epoch shuffles differently, reproducibly).
        real: (uint8 images, labels) to mix in, or None.
        real_fraction: share of every batch drawn (with a seeded generator, without
            replacement within an epoch where possible) from `real`.
        max_rows: stream only the first this many generated rows.
    """
    import ray

    if not 0 <= real_fraction < 1:
        raise ValueError(f"--real-fraction {real_fraction} must be in [0, 1)")
    if real_fraction and real is None:
        raise ValueError("--real-fraction needs real images to mix in")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same rows in the same order every time
    ds = ray.data.read_parquet(list(files), columns=["image", "label"], filesystem=filesystem)
    if max_rows is not None:
        ds = ds.limit(max_rows)
    ds = ds.map_batches(_decode, batch_format="numpy").materialize()  # decoded once, reused
    rows = ds.count()
    n_real = int(round(batch_size * real_fraction))
    n_gen = batch_size - n_real

    def epoch(e: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(real[0]), generator=gen) if n_real else None
        pos = 0
        for b in ds.iter_torch_batches(batch_size=n_gen, local_shuffle_buffer_size=SHUFFLE_BUFFER,
                                       local_shuffle_seed=seed * 1000 + e):
            x, y = b["x"], b["label"]
            if n_real:
                if pos + n_real > len(order):
                    order, pos = torch.randperm(len(real[0]), generator=gen), 0
                idx = order[pos:pos + n_real]
                pos += n_real
                x = torch.cat([x, real[0][idx]])
                y = torch.cat([y, real[1][idx].long()])
            yield x, y

    return epoch, rows
