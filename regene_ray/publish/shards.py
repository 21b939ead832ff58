"""WebDataset shards of a finished generated folder: OUT/shards/00000.tar, 00001.tar, ...

Each sample is three tar members, KEY.png (the image column's PNG bytes), KEY.cls (the label, as
text) and KEY.json (its provenance: the row's columns, the class name, the job key), with KEY the
row's id in ten digits. The rows are taken in id order (ids interleave the classes, so a shard
of many more samples than classes mixes them all), shard i holding the rows of ranks
[i * size, (i + 1) * size): a shard's
content is fixed by the data and the size alone, and a tar member's header carries no time or
owner, so the same folder gives byte-identical shards whoever writes them, in one go or resumed.

Exactly once, resumable: OUT/shards/.plan.json (size, the job key, the rows) is written first, each
shard atomically (Storage), OUT/shards/index.json last (per shard: samples, first and last id,
sha256). A rerun writes only the shards that are missing (and deletes the temporary files of
writes a kill cut short); a plan of another size or job is refused unless overwrite, which
deletes only the shards the plan names. `prepare` reads and checks everything (row count,
unique ids, what shards/ holds) before `write_shards` touches the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from regene_ray.generated import GeneratedFolder, image_bytes
from regene_ray.ownership import OwnershipError
from regene_ray.publish.facts import SHARDS_DIR, SHARDS_INDEX
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

PLAN_FILE = f"{SHARDS_DIR}/.plan.json"
SHARD_RE = re.compile(r"^\d{5,}\.tar$")
# regene_ray.storage's temporary name of a local write of one of the export's files
TMP_RE = re.compile(r"^\.(\d{5,}\.tar|index\.json|\.plan\.json)\.tmp\d+$")
PROVENANCE = ["id", "label", "n_parents", "parent_ids", "weights", "latent_confidence",
              "image_confidence", "nearest_train_id", "nearest_train_distance"]


def shard_name(i: int) -> str:
    return f"{SHARDS_DIR}/{i:05d}.tar"


def _order(out: Storage, files: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row's (id, file index, row index in that file), sorted by id."""
    ids, where, rows = [], [], []
    for k, rel in enumerate(files):
        col = pq.read_table(out.path(rel), columns=["id"], filesystem=out.fs).column("id")
        ids.append(col.to_numpy())
        where.append(np.full(len(col), k))
        rows.append(np.arange(len(col)))
    ids, where, rows = (np.concatenate(a) if a else np.zeros(0, np.int64)
                        for a in (ids, where, rows))
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{out.display('data')} repeats an id; regenerate the folder with "
                         "jobs/mass_generate.py")
    order = np.argsort(ids, kind="stable")
    return ids[order], where[order], rows[order]


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _shard_bytes(table: pa.Table, class_names: list[str], job_key: str) -> bytes:
    """The tar of `table`'s rows (in its order)."""
    pngs = image_bytes(table.column("image"))
    meta = table.select(PROVENANCE).to_pylist()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for png, m in zip(pngs, meta, strict=True):
            key = f"{m['id']:010d}"
            record = m | {"class_name": class_names[m["label"]], "job_key": job_key}
            _member(tar, f"{key}.png", png)
            _member(tar, f"{key}.cls", str(m["label"]).encode())
            _member(tar, f"{key}.json", json.dumps(record, sort_keys=True).encode())
    return buf.getvalue()


def inspect_plan(out: Storage, plan: dict) -> str:
    """What OUT/shards/ holds for this plan, touching nothing: 'new' (nothing of an export),
    'same' (this plan's shards, complete or not) or 'other' (another plan's). Raises on files
    no export wrote."""
    names = out.names(SHARDS_DIR) if out.is_dir(SHARDS_DIR) else []
    foreign = [n for n in names if not (SHARD_RE.match(n) or n in ("index.json", ".plan.json"))
               and not n.startswith(".")]
    if foreign:
        raise OwnershipError(f"{out.display(SHARDS_DIR)} holds files no export wrote "
                             f"({', '.join(sorted(foreign)[:3])}); move them away first")
    if not out.is_file(PLAN_FILE):
        if any(SHARD_RE.match(n) or n == "index.json" for n in names):
            raise OwnershipError(f"{out.display(SHARDS_DIR)} holds shards without an export's "
                                 "plan (.plan.json); move them away first")
        return "new"
    return "same" if out.read_json(PLAN_FILE) == plan else "other"


def plan_of(identity: dict, rows: int, shard_size: int) -> dict:
    """What fixes the shards' bytes: the size, the job (its key) and its rows."""
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    return {"shard_size": shard_size, "shards": max(1, -(-rows // shard_size)), "rows": rows,
            "job_key": identity["job_key"]}


def check_plan(out: Storage, plan: dict, *, overwrite: bool) -> str:
    """inspect_plan, refusing another plan's shards without overwrite."""
    state = inspect_plan(out, plan)
    if state == "other" and not overwrite:
        old = out.read_json(PLAN_FILE)
        what = (f"shard size {old.get('shard_size')}, not {plan['shard_size']}"
                if old.get("shard_size") != plan["shard_size"] else "another job's rows")
        raise FileExistsError(
            f"{out.display(SHARDS_DIR)} holds the shards of another export ({what}); pass "
            f"--shard-size {old.get('shard_size')} to complete those, or --overwrite to "
            "replace them")
    return state


def _delete_earlier(out: Storage) -> None:
    """Delete the shards and index an earlier plan names, then the plan: nothing else."""
    old = out.read_json(PLAN_FILE)
    out.delete(SHARDS_INDEX)
    out.delete_many([shard_name(i) for i in range(int(old.get("shards", 0)))])
    out.delete(PLAN_FILE)


@dataclass
class Prepared:
    """An export checked and planned, before anything is written."""

    plan: dict
    state: str  # inspect_plan's: new, same or other
    files: list[str]
    ids: np.ndarray  # every row's id, in id order
    where: np.ndarray  # its file (index into files)
    at: np.ndarray  # its row in that file


def prepare(out: Storage, identity: dict, rows: int, shard_size: int, *,
            overwrite: bool = False) -> Prepared:
    """Read and check the rows (as many as summary.json says, ids unique) and what shards/
    holds (check_plan), touching nothing."""
    plan = plan_of(identity, rows, shard_size)
    state = check_plan(out, plan, overwrite=overwrite)
    files = GeneratedFolder(out.uri).data_files()
    ids, where, at = _order(out, files)
    if len(ids) != rows:
        raise ValueError(f"{out.display('data')} holds {len(ids)} rows, its summary.json says "
                         f"{rows}; finish the job with jobs/mass_generate.py --resume")
    return Prepared(plan, state, files, ids, where, at)


def write_shards(out: Storage, identity: dict, p: Prepared) -> dict:
    """Write (or complete) OUT/shards/ as `p` plans it; returns the index."""
    if p.state == "other":
        _delete_earlier(out)
    elif out.is_file(SHARDS_INDEX):
        log.info("%s is complete already", out.display(SHARDS_DIR))
        return out.read_json(SHARDS_INDEX)
    out.makedirs(SHARDS_DIR)
    if out.is_local:  # writes a kill cut short: provably this export's
        out.delete_many([f"{SHARDS_DIR}/{n}" for n in out.names(SHARDS_DIR) if TMP_RE.match(n)])
    out.write_json(PLAN_FILE, p.plan)
    index, written, reader = [], 0, _Reader(out, p.files)
    size = p.plan["shard_size"]
    for i in range(p.plan["shards"]):
        sel = slice(i * size, (i + 1) * size)
        if out.is_file(shard_name(i)):
            data = out.read_bytes(shard_name(i))  # an earlier attempt's: complete (atomic)
        else:
            data = _shard_bytes(reader.rows(p.where[sel], p.at[sel]), identity["class_names"],
                                identity["job_key"])
            out.write_bytes(shard_name(i), data)
            written += 1
        index.append({"name": shard_name(i).split("/")[-1], "samples": int(len(p.ids[sel])),
                      "first_id": int(p.ids[sel][0]), "last_id": int(p.ids[sel][-1]),
                      "sha256": hashlib.sha256(data).hexdigest()})
    result = p.plan | {"shards": index, "format": "webdataset: KEY.png, KEY.cls, KEY.json"}
    out.write_json(SHARDS_INDEX, result)
    log.info("%d WebDataset shards of up to %d samples in %s (%d written now)",
             p.plan["shards"], size, out.display(SHARDS_DIR), written)
    return result


class _Reader:
    """Rows by (file, row): each file read once while consecutive shards need it (the rows of
    a file are in id order, so the shards that need it follow one another)."""

    def __init__(self, out: Storage, files: list[str]):
        self.out, self.files, self.cache = out, files, {}

    def rows(self, where: np.ndarray, at: np.ndarray) -> pa.Table:
        """The rows (file index, row index) in the given order."""
        need = np.unique(where)
        self.cache = {k: t for k, t in self.cache.items() if k in need}
        parts, positions = [], []
        for k in need:
            if k not in self.cache:
                self.cache[k] = pq.read_table(self.out.path(self.files[k]),
                                              filesystem=self.out.fs).replace_schema_metadata(None)
            mask = where == k
            parts.append(self.cache[k].take(pa.array(at[mask])))
            positions.append(np.flatnonzero(mask))
        table = pa.concat_tables(parts)
        return table.take(pa.array(np.argsort(np.concatenate(positions), kind="stable")))
