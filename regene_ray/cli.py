"""Small helpers shared by the job scripts: logging and error reporting."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from regene_ray.checkpoint import CheckpointError
from regene_ray.config import ConfigError

# ValueError covers StorageError; FileExistsError covers OwnershipError and LeaseError;
# PermissionError is a folder the user cannot write (said in one line, not a traceback).
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, PermissionError,
               ValueError)
USER_ERROR_EXIT = 2


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(main: Callable[[], object]) -> None:
    """Run a job's main; a user error prints one line and exits 2 instead of a traceback.

    The exit skips interpreter teardown (os._exit after flushing and stopping Ray): native
    threads of torch, pyarrow or Ray still running at that point used to abort the process
    ("terminate called without an active exception", exit 134) after the message was printed.
    """
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        exit_now(USER_ERROR_EXIT)


def exit_now(code: int) -> None:
    """Flush output and logs, stop a Ray this process started or joined, and exit with `code`."""
    try:
        if "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
    except Exception:  # noqa: BLE001 - the exit code must stay the user-error one
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
