"""Mass generation, the output folder: its layout, what it allows a job to do (create, resume,
overwrite), and the finished chunks it holds. Nothing here deletes a file the job cannot prove
it wrote (the ownership marker, the chunk metadata's job key, this job's temporary names). No Ray.

Layout: OUT/.regene-ray.json (ownership marker), OUT/.regene-ray.lease (the running driver),
OUT/job.json (the job's identity), OUT/_chunks/, OUT/data/c<label>-k<chunk>.parquet,
OUT/png/<label>/<shard>/<id>.png (with --png), OUT/README.md and OUT/croissant.json (the
dataset card and Croissant metadata, regene_ray.publish), OUT/summary.json (last); jobs/export.py
adds OUT/shards/.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from pathlib import Path

import pyarrow as pa

from regene_ray.generated import (  # noqa: F401 - the layout, re-exported by regene_ray.mass
    CHUNK_RE,
    DATA_DIR,
    JOB_FILE,
    PNG_DIR,
    SUMMARY_FILE,
    GeneratedFolder,
    chunk_name,
)
from regene_ray.mass.identity import differences, same_job
from regene_ray.mass.plan import ChunkInfo
from regene_ray.mass.sinks import read_metadata
from regene_ray.ownership import (
    LEASE_FILE,
    Lease,
    add_artefacts,
    claim_for_overwrite,
    inspect_owned,
    refuse_if_held,
    refuse_unlisted,
    write_marker,
)
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

CHUNKS_DIR = "_chunks"  # staging: complete chunks, before trimming to the exact count


PNG_RE = re.compile(r"^(\d{5})/(\d+)\.png$")  # png/<label>/ + <shard>/<id>.png (sinks.png_relpath)


# what a mass generation writes directly inside OUT (--overwrite deletes these, and only these)
# (in the order --overwrite deletes them: what marks the output complete and whose it is first)
# README.md, croissant.json: the dataset card and Croissant metadata (regene_ray.publish),
# written before summary.json (jobs/export.py adds shards/ when it writes shards)
MASS_ARTEFACTS = [SUMMARY_FILE, JOB_FILE, DATA_DIR, CHUNKS_DIR, PNG_DIR, "README.md",
                  "croissant.json"]


def inspect_output(out: Storage, identity: dict, *, resume: bool, overwrite: bool,
                   lease: Lease | None = None) -> str:
    """What OUT allows for this job, without touching it: 'new', 'resume' or 'overwrite'.
    Without `lease` (this driver's, once taken), a live driver's lease on OUT is refused first.

    Raises:
        FileExistsError (OwnershipError): a file; a folder no mass-generation job made; a
            different job's output without --overwrite; this job's output without --resume.
    """
    if out.is_file():
        raise FileExistsError(f"--out {out} is a file; pass a folder path")
    if lease is None:
        refuse_if_held(out)  # another live driver: say so, whatever state the folder is in
    action = inspect_owned(out, "mass", overwrite=overwrite, what="a mass-generation output")
    if action != "new":  # an earlier version's folder may hold a README.md of the user's
        refuse_unlisted(out, MASS_ARTEFACTS)
    if action != "existing":
        return action
    if not out.is_file(JOB_FILE):
        raise FileExistsError(
            f"--out {out} holds what is left of an interrupted --overwrite (no {JOB_FILE}); run "
            "with --overwrite again to finish replacing it")
    old = out.read_json(JOB_FILE)
    if not same_job(old, identity):
        raise FileExistsError(
            f"--out {out} holds a different job's output (differs in: "
            f"{', '.join(differences(old, identity)) or 'format'}); pass --overwrite to replace "
            "it, or choose another --out")
    if not resume:
        raise FileExistsError(
            f"--out {out} already holds this job's output; pass --resume to complete it, or "
            "--overwrite to start again")
    return "resume"


def prepare_output(out: Storage, identity: dict, *, resume: bool, overwrite: bool,
                   lease: Lease | None = None) -> bool:
    """Create OUT or check it holds this job (inspect_output), then act: --overwrite deletes the
    earlier job's artefacts, as its marker lists them. Call it only once every input was
    validated and the lease is held. Returns True when an earlier attempt is resumed."""
    action = inspect_output(out, identity, resume=resume, overwrite=overwrite, lease=lease)
    if action == "resume":
        add_artefacts(out, "mass", MASS_ARTEFACTS)  # an earlier version's marker listed fewer
        n = delete_temporaries(out)  # leftovers of local writes cut short by a crash
        if n:
            log.info("deleted %d temporary files of writes cut short", n)
        return True
    if action == "overwrite":
        claim_for_overwrite(out, "mass")
    out.makedirs()
    write_marker(out, "mass", MASS_ARTEFACTS, {"job_key": identity["job_key"]})
    out.write_json(JOB_FILE, identity)
    return False


_TMP_RE = re.compile(r"^\..+\.tmp\d+$")  # regene_ray.storage's temporary names


def delete_temporaries(out: Storage) -> int:
    """Delete the `.NAME.tmp<pid>` files this job's own writes leave when cut short, in the
    folders the job owns (never anything else)."""
    if not out.is_local:
        return 0  # object stores publish whole objects only: nothing half-written to clean
    beating = f".{LEASE_FILE}.tmp{os.getpid()}"  # this driver's heartbeat may be writing it
    rels = [n for n in out.list() if _TMP_RE.match(n) and n != beating]
    for folder in (CHUNKS_DIR, DATA_DIR, PNG_DIR):
        rels += [f"{folder}/{n}" for n in out.list(folder, recursive=True)
                 if _TMP_RE.match(posixpath.basename(n))]
    for rel in rels:
        out.delete(rel)
    return len(rels)


class ForeignChunkError(FileExistsError):
    """A chunk file in OUT that another job wrote."""


def scan(out: Storage, key: str) -> dict[tuple[int, int], ChunkInfo]:
    """Finished chunks of the job `key` in OUT/data and OUT/_chunks (data wins when a chunk is
    in both, as an object-store move cut short leaves it).

    A chunk file that cannot be read (a write cut short by a power loss on a filesystem that
    lost the data) is deleted, so the chunk is generated again. A readable chunk of another job
    stops the job with a message naming the file: rows of two jobs never mix.
    """
    found: dict[tuple[int, int], ChunkInfo] = {}
    for folder in (CHUNKS_DIR, DATA_DIR):
        for name in out.list(folder):
            m = CHUNK_RE.match(name)
            if not m:
                continue
            rel = f"{folder}/{name}"
            try:
                meta = read_metadata(rel, out)
            except pa.ArrowInvalid as e:  # not Parquet: a write lost to a power loss
                log.warning("%s is not a readable Parquet file (%s); deleting it, its chunk is "
                            "generated again", out.display(rel), e)
                out.delete(rel)
                continue
            except ValueError as e:  # Parquet, but not written by regene-ray
                raise ForeignChunkError(f"{e}; then run again with --resume") from None
            # any other error (OSError: storage unreachable, throttled) stops the job as is
            if meta.get("job_key") != key:
                raise ForeignChunkError(
                    f"{out.display(rel)} was written by another job (job key "
                    f"{str(meta.get('job_key'))[:12]}, seed {meta.get('spec', {}).get('seed')}), "
                    "not this one: is another driver writing into --out, or were files copied "
                    "in? Move the file out of --out, then run again with --resume")
            c = meta["chunk"]
            if (c["label"], c["chunk"]) != (int(m[1]), int(m[2])):
                raise ForeignChunkError(f"{out.display(rel)} holds chunk ({c['label']}, "
                                        f"{c['chunk']}) under another chunk's name; move it out "
                                        "of --out, then run again with --resume")
            found[(int(m[1]), int(m[2]))] = ChunkInfo(
                c["label"], c["chunk"], c["tried"], c["latent_passed"], c["accepted"], rel,
                novelty_rejected=c.get("novelty_rejected", 0))
    return found


def count_rows(out: str | Path | Storage) -> int:
    """Rows in OUT/data (reads only the footers)."""
    out = out if isinstance(out, Storage) else Storage(out)
    return GeneratedFolder(out.root if out.is_local else out.uri, "--out").count_rows()
