"""The driver's copy of a sweep on remote storage (no Ray): Optuna's sqlite cannot live on an
object store, so for s3:// and gs:// the driver keeps the study and the outputs in a local cache
folder keyed by the URI ($REGENE_CACHE_DIR, else ~/.cache/regene-ray), uploads them, and a resume
on another machine downloads them first.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import yaml

from regene_ray.search.outputs import MOASHA_FILE, OUTPUT_FILES, SPACE_FILE, STUDY_FILE
from regene_ray.storage import Storage

log = logging.getLogger(__name__)

def driver_folder(exp: Storage) -> Path:
    """Where the driver keeps the Optuna sqlite and writes the outputs: the experiment folder
    itself when it is local; for remote storage a cache folder keyed by its URI, so a resumed
    driver on this machine finds the study where the restored searcher looks for it."""
    if exp.is_local:
        return exp.local_path()
    root = Path(os.environ.get("REGENE_CACHE_DIR") or Path.home() / ".cache" / "regene-ray")
    key = hashlib.sha256(exp.display().encode()).hexdigest()[:16]
    return root / "search" / f"{Path(exp.root).name}-{key}"


def upload_files(local: Path, exp: Storage, names=OUTPUT_FILES) -> list[str]:
    """Copy the driver's files up to remote experiment storage; returns the names copied."""
    sent = []
    for name in names:
        if (local / name).is_file():
            exp.write_bytes(name, (local / name).read_bytes())
            sent.append(name)
    return sent


def _study_trials(path: Path, study_name: str) -> int:
    import optuna

    try:
        return len(optuna.load_study(study_name=study_name,
                                     storage=f"sqlite:///{path}").get_trials(deepcopy=False))
    except Exception:  # noqa: BLE001 - missing, empty or not a study: the other copy wins
        return -1


def _moasha_decisions(path: Path, study_name: str) -> int:
    try:
        return len(yaml.safe_load(path.read_text())["decisions"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError):
        return -1


def download_files(exp: Storage, local: Path, study_name: str) -> list[str]:
    """Fetch the sweep's record, study and MO-ASHA rungs from remote storage (a resume on a
    new machine). A study or rung file already in the cache is kept when it holds at least as
    many trials / decisions (the uploaded copy can lag the driver that was stopped)."""
    got = []
    local.mkdir(parents=True, exist_ok=True)
    progress = {STUDY_FILE: _study_trials, MOASHA_FILE: _moasha_decisions}
    for name in (SPACE_FILE, STUDY_FILE, MOASHA_FILE):
        if not exp.is_file(name):
            continue
        tmp = local / f".{name}.download"
        tmp.write_bytes(exp.read_bytes(name))
        if name in progress and (local / name).is_file() and \
                progress[name](local / name, study_name) >= progress[name](tmp, study_name):
            log.info("keeping the cached %s (as new as the uploaded one)", local / name)
            tmp.unlink()
            continue
        tmp.replace(local / name)
        got.append(name)
    return got
