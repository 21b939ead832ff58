"""Sinks for generated images: Parquet files with provenance, sharded PNG files.

Every file is written atomically (locally a temporary name in the same folder, then a rename;
on object stores one upload; see regene_ray.storage), so a reader or a resumed job never sees
half a file. The Parquet schema is the one in DESIGN.md:

    id int64, label int64, n_parents int8, parent_ids list<int64>, weights list<float32>,
    latent_confidence float32, image_confidence float32, image struct{bytes: binary, path: string},
    nearest_train_id int64, nearest_train_distance float32 (the novelty step's; null without it)

The `image` struct is the layout Hugging Face `datasets` uses for its Image feature; the schema
carries the `huggingface` metadata key that tells `datasets.load_dataset("parquet", ...)` so, and
declares `label` a ClassLabel with the run's class names (the job identity's `class_names`).
pandas, pyarrow and duckdb read it as plain columns. Job-level provenance (run folder, seed,
thresholds, checkpoint hashes, chunk statistics) lives in the file's key-value metadata under
`regene_ray`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regene_ray.generator import GenerationBatch
from regene_ray.storage import Storage

METADATA_KEY = b"regene_ray"
PNG_SHARD = 1000  # PNG files per sub-folder of png/<label>/

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("label", pa.int64()),  # int64: Hugging Face reads a ClassLabel only from int64 (not int16)
    ("n_parents", pa.int8()),
    ("parent_ids", pa.list_(pa.int64())),
    ("weights", pa.list_(pa.float32())),
    ("latent_confidence", pa.float32()),
    ("image_confidence", pa.float32()),
    ("image", IMAGE_TYPE),
    ("nearest_train_id", pa.int64()),
    ("nearest_train_distance", pa.float32()),
])
_HF_FEATURES = {
    "id": {"dtype": "int64", "_type": "Value"},
    "label": {"dtype": "int64", "_type": "Value"},
    "n_parents": {"dtype": "int8", "_type": "Value"},
    "parent_ids": {"feature": {"dtype": "int64", "_type": "Value"}, "_type": "Sequence"},
    "weights": {"feature": {"dtype": "float32", "_type": "Value"}, "_type": "Sequence"},
    "latent_confidence": {"dtype": "float32", "_type": "Value"},
    "image_confidence": {"dtype": "float32", "_type": "Value"},
    "image": {"_type": "Image"},
    "nearest_train_id": {"dtype": "int64", "_type": "Value"},
    "nearest_train_distance": {"dtype": "float32", "_type": "Value"},
}


def hf_metadata(class_names: list[str] | None) -> dict[bytes, bytes]:
    """The `huggingface` schema metadata: Image for `image`, ClassLabel(names) for `label`."""
    features = dict(_HF_FEATURES)
    if class_names:
        features["label"] = {"names": list(class_names), "_type": "ClassLabel"}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def _ragged(values: np.ndarray, lengths: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """(B, n_max) padded rows cut to their lengths -> list<value_type> (B,)."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    keep = np.arange(values.shape[1])[None, :] < lengths[:, None]  # (B, n_max)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                    pa.array(values[keep], value_type))


def rows_table(batch: GenerationBatch, pngs: list[bytes], paths: list[str]) -> pa.Table:
    """Accepted candidates -> a table with SCHEMA (rows in the batch's order)."""
    n = batch.n_parents.astype(np.int64)
    image = pa.StructArray.from_arrays(
        [pa.array(pngs, pa.binary()), pa.array(paths, pa.string())], fields=list(IMAGE_TYPE))
    return pa.Table.from_arrays([
        pa.array(batch.ids, pa.int64()),
        pa.array(batch.labels.astype(np.int64), pa.int64()),
        pa.array(n.astype(np.int8), pa.int8()),
        _ragged(batch.parent_ids, n, pa.int64()),
        _ragged(batch.weights, n, pa.float32()),
        pa.array(batch.latent_confidence, pa.float32()),
        pa.array(batch.image_confidence, pa.float32()),
        image,
        pa.array(batch.nearest_train_id, pa.int64(), mask=batch.nearest_train_id < 0),
        pa.array(batch.nearest_train_distance, pa.float32(),
                 mask=np.isnan(batch.nearest_train_distance)),
    ], schema=SCHEMA)


def _where(path: str | Path, storage: Storage | None) -> tuple[Storage, str]:
    """A path relative to `storage`, or (without one) a local path."""
    if storage is not None:
        return storage, str(path)
    path = Path(path)
    return Storage(path.parent), path.name


def write_parquet_atomic(table: pa.Table, path: str | Path, metadata: dict,
                         storage: Storage | None = None) -> None:
    """Write `table` with `metadata` (JSON) to `path` (relative to `storage`, when given)."""
    storage, rel = _where(path, storage)
    meta = {**hf_metadata(metadata.get("class_names")),
            METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()}
    table = table.replace_schema_metadata(meta)
    storage.write_with(rel, lambda p, fs: pq.write_table(table, p, filesystem=fs,
                                                         compression="zstd"))


def read_metadata(path: str | Path, storage: Storage | None = None) -> dict:
    """The `regene_ray` metadata of a Parquet file written by write_parquet_atomic."""
    storage, rel = _where(path, storage)
    meta = pq.read_schema(storage.path(rel), filesystem=storage.fs).metadata or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"{storage.display(rel)} was not written by regene-ray (no "
                         f"'{METADATA_KEY.decode()}' metadata); move it out of the output folder")
    return json.loads(meta[METADATA_KEY])


def png_relpath(label: int, index: int, candidate_id: int) -> str:
    """png/<label>/<shard>/<id>.png, sharded by the per-class candidate index."""
    return f"png/{label}/{index // PNG_SHARD:05d}/{candidate_id}.png"
