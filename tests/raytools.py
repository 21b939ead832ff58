"""Helpers for tests that start their own Ray processes or servers: free ports, and stopping a
process session (a `ray start --block` head, a fake autoscaling cluster, an S3 server) without
touching any other Ray on the machine (never `ray stop --force`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
RAY = str(VENV_BIN / "ray") if (VENV_BIN / "ray").exists() else shutil.which("ray")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def session_pids(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout
    return [int(p) for p, s in (line.split() for line in out.splitlines()) if int(s) == sid]


def kill_session(sid: int) -> None:
    """SIGTERM, then SIGKILL, every process of one process session."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 5
        while session_pids(sid) and time.time() < deadline:
            time.sleep(0.2)


def wait_for_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen | None = None
                  ) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    return False
