"""The files of a training run that generation needs, read once by the driver and shipped to
the actors as bytes (so worker nodes need not see --run), with their sha256 digests (part of the
job's identity) and a check that they load.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from regene_ray.generator import ConvexGenerator
from regene_ray.latent_bank import BANK_FILE, THRESHOLDS_FILE
from regene_ray.storage import Storage

RUN_FILES = ("classifier/config.json", "classifier/weights.pt", "decoder/config.json",
             "decoder/weights.pt", BANK_FILE, THRESHOLDS_FILE)  # what ConvexGenerator.from_run reads


def pack_run(run_dir: str | Path) -> dict[str, bytes]:
    """The files a generator needs, as bytes: shipped to actors through Ray's object store, so
    the run folder need not be on storage the worker nodes see. `run_dir` may be local or
    s3://... / gs://... (a run folder uploaded as jobs/train.py wrote it)."""
    st = Storage(run_dir)
    missing = [n for n in RUN_FILES if not st.is_file(n)]
    if missing:
        raise FileNotFoundError(f"--run {st} lacks {missing}; it is not a finished "
                                "jobs/train.py run (train it, or resume its training)")
    return {n: st.read_bytes(n) for n in RUN_FILES}


def check_run_files(files: dict[str, bytes], where: str) -> None:
    """Load the packed run on this process's CPU, as every actor will: a truncated or corrupt
    checkpoint, or a decoder that does not fit its classifier, fails here with the loader's
    message (CheckpointError / ValueError), before the job touches its output."""
    tmp = unpack_run(files)
    try:
        ConvexGenerator.from_run(tmp, device="cpu")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--run {where}: {e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def hashes_of(files: dict[str, bytes]) -> dict[str, str]:
    """sha256 of packed run files (the same digests as run_hashes of the folder)."""
    return {n: hashlib.sha256(data).hexdigest() for n, data in files.items()}


def unpack_run(files: dict[str, bytes]) -> Path:
    """Write packed run files into a new temporary folder; the caller deletes it."""
    root = Path(tempfile.mkdtemp(prefix="regene-run-"))
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def run_hashes(run_dir: str | Path) -> dict[str, str]:
    """sha256 of every file a generation depends on (weights, configs, bank, thresholds)."""
    st = Storage(run_dir)
    return hashes_of({n: st.read_bytes(n) for n in RUN_FILES if st.is_file(n)})

