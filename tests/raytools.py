"""Helpers for tests that start their own Ray processes or servers: free ports, and stopping a
process session (a `ray start --block` head, a fake autoscaling cluster, an S3 server) without
touching any other Ray on the machine (never `ray stop --force`)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
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


def head_command(prefix: str, *extra: str, num_cpus: int | None = 2
                 ) -> tuple[list[str], dict, Path, dict[str, int]]:
    """`ray start --head --block` on free ports, with token authentication on and a fresh token
    of its own (as cluster/*.yaml mount one; a fresh machine has no ~/.ray/auth_token).

    Returns (command, env for the head and its clients, its temp dir, {"gcs", "dashboard"} ports).
    """
    gcs, dash, client, agent, agent_grpc, metrics, rt_env, node_mgr, obj_mgr = free_ports(9)
    temp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))  # short: Unix socket paths
    token = temp_dir / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    env.pop("RAY_ADDRESS", None)
    cmd = [RAY, "start", "--head", "--block", "--port", str(gcs),
           *(["--num-cpus", str(num_cpus)] if num_cpus is not None else []),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--ray-client-server-port", str(client), "--dashboard-agent-listen-port", str(agent),
           "--dashboard-agent-grpc-port", str(agent_grpc), "--metrics-export-port", str(metrics),
           "--runtime-env-agent-port", str(rt_env), "--node-manager-port", str(node_mgr),
           "--object-manager-port", str(obj_mgr), "--object-store-memory", str(200 * 1024**2),
           "--temp-dir", str(temp_dir), "--disable-usage-stats", *extra]
    return cmd, env, temp_dir, {"gcs": gcs, "dashboard": dash}


def session_pids(sid: int) -> list[int]:
    """The live processes of session `sid` (zombies left out: they have exited, and the session
    leader stays one until the test reaps it)."""
    out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout
    return [int(p) for p, s, stat in (line.split() for line in out.splitlines())
            if int(s) == sid and not stat.startswith("Z")]


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
