"""A generated folder: what jobs/mass_generate.py writes, and the one way to read it back.

    OUT/data/c<label>-k<chunk>.parquet   the generations, one file per chunk (the columns:
                                         regene_ray.mass.sinks.SCHEMA)
    OUT/job.json                         the job's identity (spec, checkpoint hashes, ...)
    OUT/summary.json                     written last: the output is complete
    OUT/png/<label>/<shard>/<id>.png     with --png: the same PNG bytes as the image column

Every job that takes `--generated OUT` (jobs/evaluate.py, jobs/train_on_generated.py) means this
folder, local or on s3:// / gs://, and reads its rows from OUT/data/*.parquet only: not
recursively, and names starting with '.' or '_' (temporaries) are never data. `GeneratedFolder`
lists, counts, checks and reads those rows; `decode_png` is the one decoder of their images.
No Ray.
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from regene_ray.run_files import run_hashes
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

DATA_DIR = "data"  # the final Parquet files: the only rows a reader sees
JOB_FILE = "job.json"  # the job's identity, written when the job starts
SUMMARY_FILE = "summary.json"  # the finished job's counts, written last
PNG_DIR = "png"  # with --png: png/<label>/<shard>/<id>.png
CHUNK_RE = re.compile(r"^c(\d+)-k(\d+)\.parquet$")  # a data file's name (chunk_name)
COLUMNS = ("label", "image")  # what every reader needs; n_parents, parent_ids are optional
FINISH_HINT = "pass the --out folder of a finished jobs/mass_generate.py run"


def chunk_name(label: int, chunk: int) -> str:
    """The data file of chunk `chunk` of class `label`: c<label>-k<chunk>.parquet."""
    return f"c{label:03d}-k{chunk:07d}.parquet"


def decode_png(data: bytes, where: str) -> np.ndarray:
    """PNG bytes -> uint8 (C, H, W); unreadable bytes fail naming `where` (file and row)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = np.asarray(im)
    except Exception as e:  # PIL raises many types for bad bytes
        raise ValueError(f"{where}: image bytes are not a readable PNG ({type(e).__name__}); "
                         "regenerate the folder with jobs/mass_generate.py") from e
    return arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))


def image_bytes(column: pa.Array | pa.ChunkedArray) -> list[bytes]:
    """The PNG bytes of an `image` column: struct{bytes, path} (mass generation's, Hugging
    Face's Image) or plain binary."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return (column.field("bytes") if pa.types.is_struct(column.type) else column).to_pylist()


@dataclass
class GeneratedSet:
    """Generations to evaluate, row-aligned."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 intended class
    n_parents: np.ndarray | None  # (N,) int64, None when unknown
    parent_ids: list[np.ndarray] | None  # latent-bank ids per row, None when unknown
    source: str  # "parquet:<folder>" or "in-process"
    total_rows: int  # rows available before subsampling
    weights: str | None = None  # the mixing weights that made the rows (job.json), None: unrecorded

    def __len__(self) -> int:
        return len(self.labels)


class GeneratedFolder:
    """A --generated folder (local, s3:// or gs://): its data files, metadata and rows.

    Args:
        uri: the folder jobs/mass_generate.py --out wrote.
        flag: how messages name the folder to the user.
    """

    def __init__(self, uri: str | Path, flag: str = "--generated"):
        self.uri, self.flag = str(uri), flag
        self.storage = Storage(uri)

    def __str__(self) -> str:
        return self.storage.display()

    def data_files(self) -> list[str]:
        """OUT/data/*.parquet, relative to the folder and sorted; a missing folder or one
        without data files is an error."""
        if not self.storage.is_dir():
            raise FileNotFoundError(f"{self.flag} {self} does not exist; {FINISH_HINT}")
        names = [n for n in self.storage.list(DATA_DIR)
                 if n.endswith(".parquet") and not n.startswith((".", "_"))]
        if not names:
            raise FileNotFoundError(f"{self.flag} {self} has no {DATA_DIR}/*.parquet; "
                                    f"{FINISH_HINT}")
        return [f"{DATA_DIR}/{n}" for n in names]

    def files(self) -> list[str]:
        """The data files' full paths on `self.storage.fs` (what pyarrow and Ray Data read)."""
        return [self.storage.path(rel) for rel in self.data_files()]

    def read_json(self, name: str) -> dict | None:
        """OUT/<name> (job.json, summary.json) as a dict, or None when absent or unreadable."""
        try:
            value = self.storage.read_json(name)
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def count_rows(self) -> int:
        """Rows in OUT/data (reads only the footers)."""
        return sum(pq.read_metadata(f, filesystem=self.storage.fs).num_rows
                   for f in self.files())

    def check(self, run_dir: str | Path, *, allow_partial: bool = False,
              allow_other_run: bool = False) -> None:
        """Refuse a folder that is not a finished mass generation of `run_dir`: without
        summary.json it is partial (a job still running, or killed), with other rows than its
        summary promises files were removed or added, and generations made from other
        checkpoints say nothing about this run. The flags accept them knowingly."""
        self.data_files()  # a missing folder or one without data files: say so first
        if not allow_partial:
            requested = (self.read_json(SUMMARY_FILE) or {}).get("requested")
            if requested is None:
                raise ValueError(
                    f"{self.flag} {self} has no {SUMMARY_FILE}: it is not a finished "
                    "jobs/mass_generate.py output (complete it with --resume), or pass "
                    "--allow-partial to use whatever rows it holds")
            rows = self.count_rows()
            if rows != requested:
                raise ValueError(
                    f"{self.flag} {self} holds {rows} rows where its {SUMMARY_FILE} promises "
                    f"{requested}: files were removed or added since it finished. Complete it "
                    "with jobs/mass_generate.py --resume, or pass --allow-partial")
        made_by = (self.read_json(JOB_FILE) or {}).get("checkpoint_sha256")
        if made_by != run_hashes(run_dir) and not allow_other_run:
            why = "were made from other checkpoints than" if made_by else \
                f"carry no record ({JOB_FILE}) of the checkpoints that made them, so may not " \
                "come from"
            raise ValueError(
                f"{self.flag} {self}: its generations {why} --run {run_dir}; pass the run "
                "that made them, or --allow-other-run to use them with this run anyway")

    def read(self, *, max_images: int = 20000, seed: int = 0) -> GeneratedSet:
        """The folder's rows as a GeneratedSet: beyond `max_images` rows a seeded random subset
        (only its images are decoded), in file order.

        Columns used: label and image {bytes, path} (required); n_parents and parent_ids
        (optional: n_parents comes from the parent_ids lengths when its column is absent).
        """
        files = self.data_files()
        tables = [self._columns(f) for f in files]
        counts = np.array([t.num_rows for t in tables])
        total = int(counts.sum())
        if total == 0:
            raise ValueError(f"{self.flag} {self}: its Parquet files hold no rows; {FINISH_HINT}")
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(total)[:max_images]) if total > max_images \
            else np.arange(total)
        starts = np.concatenate([[0], np.cumsum(counts)])
        parts = [self._rows(f, t, keep[(keep >= lo) & (keep < hi)] - lo)
                 for f, t, lo, hi in zip(files, tables, starts[:-1], starts[1:], strict=True)]
        parts = [p for p in parts if p is not None]
        images = [im for p in parts for im in p["images"]]
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise ValueError(f"{self.flag} {self}: images have mixed shapes {sorted(shapes)}")
        log.info("read %d of %d generated rows from %d Parquet file(s) under %s", len(images),
                 total, len(files), self)
        has_parents = all("parent_ids" in t.column_names for t in tables)
        has_n = all({"n_parents", "parent_ids"} & set(t.column_names) for t in tables)
        return GeneratedSet(
            images=torch.from_numpy(np.stack(images)),
            labels=np.concatenate([p["labels"] for p in parts]),
            n_parents=np.concatenate([p["n_parents"] for p in parts]) if has_n else None,
            parent_ids=[r for p in parts for r in p["parent_ids"]] if has_parents else None,
            source=f"parquet:{self.where()}", total_rows=total,
            weights=((self.read_json(JOB_FILE) or {}).get("spec") or {}).get("weights"))

    def where(self) -> str:
        """The folder as reports record it: an absolute local path, or scheme://bucket/key
        without credentials or options (Storage.display), so a report names its folder the
        same way whatever directory it ran in and however the URI was spelled."""
        return str(self.storage.local_path().resolve()) if self.storage.is_local \
            else self.storage.display()

    def _columns(self, rel: str) -> pa.Table:
        """A data file's label / n_parents / parent_ids columns (its images stay on disk)."""
        path, fs = self.storage.path(rel), self.storage.fs
        try:
            names = pq.read_schema(path, filesystem=fs).names
        except (pa.ArrowException, OSError) as e:
            raise ValueError(f"{self.flag}: {self.storage.display(rel)} is not a readable "
                             f"Parquet file ({e})") from e
        missing = set(COLUMNS) - set(names)
        if missing:
            raise ValueError(f"{self.flag}: {self.storage.display(rel)} lacks column(s) "
                             f"{sorted(missing)}; expected mass generation's schema (id, label, "
                             "parent_ids, ..., image)")
        cols = [c for c in ("label", "n_parents", "parent_ids") if c in names]
        return pq.read_table(path, columns=cols, filesystem=fs)

    def _rows(self, rel: str, t: pa.Table, rows: np.ndarray) -> dict | None:
        """Rows `rows` of one data file (its metadata columns `t`), images decoded."""
        if len(rows) == 0:
            return None
        idx = pa.array(rows)
        image = pq.read_table(self.storage.path(rel), columns=["image"],
                              filesystem=self.storage.fs)
        raw = image_bytes(image.column("image").take(idx))
        where = self.storage.display(rel)
        parents = [np.asarray(p, np.int64) for p in t.column("parent_ids").take(idx).to_pylist()
                   ] if "parent_ids" in t.column_names else []
        n = t.column("n_parents").take(idx).to_numpy() if "n_parents" in t.column_names \
            else np.array([len(p) for p in parents])
        return {"images": [decode_png(b, f"{where} row {int(r)}") for b, r in zip(raw, rows,
                                                                                  strict=True)],
                "labels": t.column("label").take(idx).to_numpy().astype(np.int64),
                "n_parents": np.asarray(n, np.int64), "parent_ids": parents}
