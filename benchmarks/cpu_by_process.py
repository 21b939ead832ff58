"""Where a command's CPU time goes: run it, sample every process of its tree twice a second,
and print the CPU seconds (user + system, from /proc/<pid>/stat) per process kind.

    python benchmarks/cpu_by_process.py -- python jobs/mass_generate.py --run runs/mnist \\
        --count 300000 --out /tmp/cpu-by-process
    python benchmarks/cpu_by_process.py --window 20,30 -- python benchmarks/plain_pool.py ...

With `--window START,LENGTH` it counts only the CPU spent between START and START + LENGTH
seconds after the command started (the steady state, without start-up and exit).

It shows what a Ray job spends besides its actors (the driver, raylet, GCS, Ray Data's own
actors) on a small box. The command's output goes to a new temporary file, whose path is
printed. A process's last sample counts, so a process that lives under half a second is missed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_throughput import process_tree  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def sample(pid: int, seen: dict[int, tuple[float, str]]) -> None:
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        name = seen.get(p, (0.0, ""))[1] if not cmd else cmd  # an exiting process has none
        seen[p] = ((int(fields[11]) + int(fields[12])) / TICK, name)


def kind(cmd: str) -> str:
    words = cmd.split()
    if not words:
        return "(gone before its name was read)"
    if words[0].startswith("ray::"):
        return words[0]
    return " ".join([Path(words[0]).name] + [Path(w).name for w in words[1:2]])


def main(argv: list[str], window: tuple[float, float] | None = None) -> None:
    if not argv:
        raise SystemExit("usage: cpu_by_process.py [--window START,LENGTH] -- COMMAND ...")
    fd, log_path = tempfile.mkstemp(prefix="cpu_by_process-", suffix=".log")
    snaps: list[dict[int, tuple[float, str]]] = []  # at the window's start and end
    with os.fdopen(fd, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, tuple[float, str]] = {}
        while proc.poll() is None:
            sample(proc.pid, seen)
            if window and len(snaps) < 2 and time.time() - t0 >= window[0] + window[1] * len(snaps):
                snaps.append(dict(seen))
            time.sleep(0.5)
    wall = time.time() - t0
    if window:
        if len(snaps) < 2:
            raise SystemExit(f"the command ended after {wall:.1f} s, before the window ended")
        start, seen = snaps
        seen = {p: (cpu - start.get(p, (0.0, ""))[0], cmd) for p, (cpu, cmd) in seen.items()}
        wall = window[1]
    per: dict[str, float] = {}
    for cpu, cmd in seen.values():
        per[kind(cmd)] = per.get(kind(cmd), 0.0) + cpu
    total = sum(per.values())
    print(f"command output: {log_path}")
    print(f"exit {proc.returncode}; {'window' if window else 'wall'} {wall:.1f} s; CPU "
          f"{total:.1f} s over {len(seen)} processes on {os.cpu_count()} cores "
          f"({total / wall / os.cpu_count():.0%} busy)")
    for name, cpu in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"{cpu:8.1f} s  {cpu / max(total, 1e-9):6.1%}  {name}")


if __name__ == "__main__":
    args, win = sys.argv[1:], None
    if args[:1] == ["--window"]:
        win = tuple(float(v) for v in args[1].split(","))
        args = args[2:]
    main(args[1:] if args[:1] == ["--"] else args, win)
