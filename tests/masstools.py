"""Helpers shared by the mass-generation tests: the job module, running it in-process on a
test's Ray cluster, and reading its output back with pyarrow."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import load_job

from regene_ray import mass

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "jobs" / "mass_generate.py"


job = load_job("mass_generate")


def generate(run: Path, out: Path, *flags: str) -> mass.Summary:
    """Run jobs/mass_generate.py's main in this process, on the module's Ray cluster."""
    args = job.get_args_parser().parse_args(["--run", str(run), "--out", str(out), *flags])
    return job.main(args)


def read_out(out: Path) -> pa.Table:
    files = sorted((out / mass.DATA_DIR).glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).sort_by("id")


def kill_after_chunks(cmd: list[str], out: Path, chunks: int = 2, timeout_s: float = 180) -> None:
    """Start a mass-generation command in its own session and SIGKILL it (the driver and the
    Ray it started) once `chunks` chunk files are in OUT/_chunks, or after timeout_s."""
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and \
                len(list((out / mass.CHUNKS_DIR).glob("*.parquet"))) < chunks:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
