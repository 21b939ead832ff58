"""Small helpers shared by the job scripts: logging and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from regene_ray.checkpoint import CheckpointError
from regene_ray.config import ConfigError

USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ValueError)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(main: Callable[[], object]) -> None:
    """Run a job's main; a user error prints one line and exits 2 instead of a traceback."""
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
