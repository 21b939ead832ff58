"""Training batches streamed from generated folders with Ray Data (the evaluation's one Ray
module): `ray.data.read_parquet` -> PNG decoding in `map_batches` -> `iter_torch_batches` with a
seeded local shuffle buffer, optionally mixed with real images at a fixed share of every batch.

A generated folder holds one class per data file (`c<label>-k<chunk>.parquet`), written in class
order: the files stream round robin across classes instead (c0-k0, c1-k0, ..., c0-k1, ...), so a
`max_rows` prefix is close to class-balanced (in file order the first 60,000 rows of a 540k-row
MNIST folder were 54,000 zeros and 6,000 ones). Batches mix the classes through the shuffle
buffer, sized to hold two files of every class (shuffle_buffer_rows).

Every epoch streams the folders again: at no point are all decoded images in memory, only the
blocks in flight and the shuffle buffer (sized within SHUFFLE_BUDGET bytes). Through Ray Data's V1
Parquet reader the job's peak memory is nearly flat in the rows (2.6 GB at 54k, 2.7 GB at
540k MNIST rows, benchmarks/stream_memory.py, BENCHMARKS.md section 13); through 2.60's default
DataSourceV2 it grew 1.8x. Ray Data keeps the order of the rows
(`preserve_order`), and the shuffle buffer is seeded per epoch, so the batches are the same on
every run, and the same from a local folder as from its copy on s3:// / gs://.

Used by jobs/train_on_generated.py, which the Classification Accuracy Score and the low-data
numbers come from.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from regene_ray.cluster import data_context
from regene_ray.generated import CHUNK_RE, GeneratedFolder, decode_png, image_bytes

log = logging.getLogger(__name__)

SHUFFLE_BUFFER = 8192  # the fewest rows in Ray Data's local shuffle buffer (shuffle_buffer_rows)
SHUFFLE_FILES = 2  # the buffer holds this many data files of every class, within the budget
SHUFFLE_BUDGET = 256 * 2**20  # decoded image bytes the buffer is sized within (its floor first)
# Ray Data 2.60 reads Parquet through its DataSourceV2 by default. Given a list of files, its
# ListFiles step lists and inspects them in one task per file (up to 200), again every epoch:
# a 54,000-row epoch of 321 files streamed in 13 s against 2 s through the V1 reader, which
# gathers the files' metadata once, when the dataset is made (benchmarks/stream_reader.py,
# BENCHMARKS.md section 13). The dataset's own context picks V1, whatever
# $RAY_DATA_USE_DATASOURCE_V2 says. Either streams every row once an epoch, in the same file
# order; the seeded shuffle sees other blocks, so the batches differ from V2's.
PARQUET_DATASOURCE_V2 = False


def class_interleaved(files: Sequence[str]) -> list[str]:
    """Data files round robin across classes: every class's k-th chunk, then every class's
    (k + 1)-th. Files of other names follow, in their order; so do equal keys (folders)."""
    def key(path: str) -> tuple[float, int]:
        m = CHUNK_RE.match(PurePosixPath(path).name)
        return (int(m[2]), int(m[1])) if m else (math.inf, 0)

    return sorted(files, key=key)


def parquet_files(folders: Sequence[GeneratedFolder]) -> tuple[list[str], object]:
    """The data files (OUT/data/*.parquet) of generated folders and the one pyarrow filesystem
    they are on; fails naming a folder with none, or folders on different filesystems."""
    files: list[str] = []
    fs = None
    for folder in folders:
        if fs is not None and type(folder.storage.fs) is not type(fs):
            raise ValueError("--generated folders must all be local or all on one object store")
        fs = folder.storage.fs
        files += folder.files()
    return files, fs


def decode_batch(batch: pa.Table) -> dict[str, np.ndarray]:
    """A Ray Data batch of Parquet rows -> {"x": uint8 (B, C, H, W), "label": int64 (B,)}."""
    images = [decode_png(b, "--generated: a data file's row")
              for b in image_bytes(batch.column("image"))]
    return {"x": np.stack(images).astype(np.uint8),
            "label": batch.column("label").to_numpy().astype(np.int64)}


def _stream_options():
    """Ray Data's execution options for the stream: the current ones, with the rows in the same
    order every time (set on the dataset's copy of the context, not on the process's)."""
    opts = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    opts.preserve_order = True
    return opts


def shuffle_buffer_rows(files: Sequence[str], rows: int, row_bytes: int) -> int:
    """Rows of the local shuffle buffer every batch is drawn from. A data file holds one class
    and the files stream round robin across classes, so the buffer must span several files of
    every class: a fixed 8,192 rows over 4,096-row files (--chunk-size auto past about 330,000
    images) drew every batch from 3 of MNIST's 10 classes. SHUFFLE_FILES average files of each
    class, within SHUFFLE_BUDGET bytes of decoded images where that still leaves SHUFFLE_BUFFER
    rows (the size before; Ray's batcher holds up to about 1.5x its buffer). A buffer the
    budget cuts short of every class is warned about."""
    names = (CHUNK_RE.match(PurePosixPath(f).name) for f in files)
    classes = len({m[1] for m in names if m}) or 1
    per_file = -(-rows // max(len(files), 1))
    wanted, budget = SHUFFLE_FILES * classes * per_file, SHUFFLE_BUDGET // max(row_bytes, 1)
    if budget < wanted and max(budget, SHUFFLE_BUFFER) < classes * per_file:
        log.warning("the shuffle buffer (%d rows of %d bytes) spans about %d of the %d classes' "
                    "data files of %d rows: batches draw on fewer classes; generate with a "
                    "smaller --chunk-size for better mixed batches", max(budget, SHUFFLE_BUFFER),
                    row_bytes, max(budget, SHUFFLE_BUFFER) // per_file, classes, per_file)
    return max(SHUFFLE_BUFFER, min(wanted, budget))


def decoded_row_bytes(files: Sequence[str], fs) -> int:
    """Bytes of one decoded image of the set: the first row of the first data file that has
    one (a chunk that accepted no image is an empty file); 1 when no file has a row."""
    for path in files:
        with fs.open_input_file(path) as f:
            first = next(pq.ParquetFile(f).iter_batches(batch_size=1, columns=["image"]), None)
        if first is not None and first.num_rows:
            return decode_png(image_bytes(first.column("image"))[0], f"{path}: row 0").nbytes
    return 1


def generated_dataset(folders: Sequence[GeneratedFolder], max_rows: int | None,
                      datasource_v2: bool) -> tuple[ray.data.Dataset, int, int]:
    """The lazy Ray Data dataset of the folders' decoded rows ({"x", "label"}), files round
    robin across classes, at most `max_rows` of them, how many rows it holds, and the shuffle
    buffer's rows for it."""
    files, fs = parquet_files(folders)
    rows = sum(f.count_rows() for f in folders)
    buffer = shuffle_buffer_rows(files, rows, decoded_row_bytes(files, fs))
    with data_context(execution_options=_stream_options(),  # the dataset keeps its own copy
                      use_datasource_v2=datasource_v2):
        ds = ray.data.read_parquet(class_interleaved(files), filesystem=fs)
        ds = ds.select_columns(["image", "label"])
        if max_rows is not None and max_rows < rows:
            ds, rows = ds.limit(max_rows), max_rows
        ds = ds.map_batches(decode_batch, batch_format="pyarrow")  # lazy: runs as epochs read
    return ds, rows, buffer


def check_mix(batch_size: int, real: tuple | None, real_fraction: float,
              generated_weight: float) -> None:
    """generated_batches' mixing settings: a real share in [0, 1) of images there are, and a
    generated weight other than 1 only where a batch holds a real image to weigh against."""
    if not 0 <= real_fraction < 1:
        raise ValueError(f"--real-fraction {real_fraction} must be in [0, 1)")
    if real_fraction and real is None:
        raise ValueError("--real-fraction needs real images to mix in")
    per_batch = round(batch_size * real_fraction)
    if not generated_weight > 0 or (generated_weight != 1 and per_batch < 1):
        raise ValueError(f"--generated-weight {generated_weight} must be > 0, and differ from 1 "
                         "only with --real-fraction of at least one real image a batch")
    if real_fraction and per_batch > len(real[0]):
        raise ValueError(f"--real-fraction {real_fraction} asks for more real images a batch "
                         f"than the {len(real[0])} there are")


def generated_batches(folders: Sequence[GeneratedFolder], *, batch_size: int,
                      real: tuple[torch.Tensor, torch.Tensor] | None = None,
                      real_fraction: float = 0.0, max_rows: int | None = None,
                      generated_weight: float = 1.0,
                      datasource_v2: bool | None = None
                      ) -> tuple[Callable[[int, torch.Generator], Iterator], int]:
    """A batch source for resnet.fit_resnet that streams the generated rows every epoch, and
    how many rows each epoch streams.

    Args:
        folders: the generated folders whose OUT/data/*.parquet rows stream.
        batch_size: images per batch, generated and real together.
        real: (uint8 images, labels) to mix in, or None.
        real_fraction: share of every batch drawn (with the epoch's seeded generator, without
            replacement within an epoch where possible) from `real`.
        max_rows: stream only the first this many generated rows.
        generated_weight: with real images mixed in, each generated image's loss counts this
            many times a real one's: the batches then carry per-image weights (resnet.fit_resnet
            takes the weighted mean). At 1.0 they carry none.
        datasource_v2: read through Ray Data's DataSourceV2 Parquet reader (default:
            PARQUET_DATASOURCE_V2, read at the call; benchmarks/stream_reader.py compares both).
    """
    check_mix(batch_size, real, real_fraction, generated_weight)
    ds, rows, buffer = generated_dataset(
        folders, max_rows, PARQUET_DATASOURCE_V2 if datasource_v2 is None else datasource_v2)
    n_real = int(round(batch_size * real_fraction))
    n_gen = batch_size - n_real  # batches_per_epoch counts with the same split

    def epoch(e: int, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, ...]]:
        # the epoch's seeded generator (loop.epoch_seed: the model seed and the epoch) draws the
        # shuffle, so every epoch and every model seed shuffles differently, reproducibly
        shuffle_seed = int(torch.randint(2**31 - 1, (1,), generator=gen))
        order = torch.randperm(len(real[0]), generator=gen) if n_real else None
        pos = 0
        for b in ds.iter_torch_batches(batch_size=n_gen, local_shuffle_buffer_size=buffer,
                                       local_shuffle_seed=shuffle_seed):
            x, y = b["x"], b["label"]
            generated = len(y)
            if n_real:
                if pos + n_real > len(order):
                    order, pos = torch.randperm(len(real[0]), generator=gen), 0
                idx = order[pos:pos + n_real]
                pos += n_real
                x = torch.cat([x, real[0][idx]])
                y = torch.cat([y, real[1][idx].long()])
            if generated_weight != 1:  # the generated rows first, then the real ones
                w = torch.ones(len(y))
                w[:generated] = generated_weight
                yield x, y, w
            else:
                yield x, y

    return epoch, rows


def batches_per_epoch(rows: int, batch_size: int, real_fraction: float = 0.0) -> int:
    """How many batches generated_batches' epoch yields for `rows` generated rows."""
    return math.ceil(rows / (batch_size - int(round(batch_size * real_fraction))))
