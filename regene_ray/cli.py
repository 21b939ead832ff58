"""Small helpers shared by the job scripts: logging, error reporting, a fast exit, and the
wall-clock phases of a job from process start."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# ValueError covers ConfigError, CheckpointError and StorageError; FileExistsError covers
# OwnershipError and LeaseError; PermissionError is a folder the user cannot write (said in one
# line, not a traceback). No torch or Ray imported here: jobs import this first, and fast.
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, ValueError)
USER_ERROR_EXIT = 2


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(main: Callable[[], object]) -> None:
    """Run a job's main and exit; a user error prints one line and exits 2 instead of a
    traceback.

    The exit skips interpreter teardown (os._exit after flushing and stopping Ray): native
    threads of torch, pyarrow or Ray still running at that point used to abort the process
    ("terminate called without an active exception", exit 134) after the message was printed,
    and the teardown itself cost the user seconds at the prompt.
    """
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        exit_now(USER_ERROR_EXIT)
    exit_now(0)


def exit_now(code: int) -> None:
    """Flush output and logs, stop a Ray this process started or joined, and exit with
    `code`."""
    try:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            t = time.perf_counter()
            sys.modules["ray"].shutdown()
            logging.getLogger(__name__).debug("Ray shut down in %.1f s",
                                              time.perf_counter() - t)
    except Exception:  # noqa: BLE001 - the exit code must stay the job's
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def process_start_time() -> float:
    """When this process started (wall clock; Linux /proc), else now."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in open("/proc/stat")
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


class Phases:
    """Wall-clock phases of a job, measured from process start: `with phases("read run"):`, or
    `phases.add(name, start, end)` for a span measured elsewhere (a background thread)."""

    def __init__(self):
        self.t0 = process_start_time()
        self.spans: dict[str, tuple[float, float]] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.time()
        try:
            yield
        finally:
            self.add(name, start, time.time())

    def add(self, name: str, start: float, end: float) -> None:
        self.spans[name] = (start, end)

    def since_start(self) -> float:
        return time.time() - self.t0

    def record(self) -> dict[str, float]:
        """{phase: seconds}, plus each phase's end as seconds from process start."""
        return {name: round(end - start, 3) for name, (start, end) in self.spans.items()} | \
            {f"{name} ends at": round(end - self.t0, 3) for name, (_, end) in self.spans.items()}
