"""Small helpers shared by the job scripts: logging, error reporting, a fast exit, and the
wall-clock phases of a job from process start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def command_of(parser: argparse.ArgumentParser, args: argparse.Namespace, script: str) -> str:
    """The command that gives `args`, as a user would type it again: the flags whose values
    differ from their defaults (credentials in URIs removed). The same whether the job ran from
    the shell or was called in-process."""
    import shlex

    from regene_ray.storage import redact

    parts = ["python", script]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value == action.default:
            continue
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # store_true
            parts.append(flag)
        elif action.nargs in ("+", "*"):
            parts += [flag, *(redact(v) for v in value)]
        else:  # a tuple from a type such as int_list is typed with commas
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            parts += [flag, redact(text)]
    return shlex.join(parts)


# argparse types of the jobs' flags; each names its flag in the error


def int_list(flag: str):
    """argparse type: whole numbers separated by commas, e.g. 2 or 2,3,5."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: give whole numbers separated by commas, e.g. 2 or 2,3,5"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} is empty")
        return values

    return parse


def min_max(flag: str):
    """argparse type: N or MIN,MAX with 1 <= MIN <= MAX (an actor pool's size)."""

    def parse(text: str) -> tuple[int, int]:
        try:
            parts = [int(v) for v in text.split(",")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            parts *= 2
        if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: give N or MIN,MAX with 1 <= MIN <= MAX, e.g. 1,4")
        return parts[0], parts[1]

    return parse


def positive_int(flag: str):
    """argparse type: a whole number >= 1."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {text} must be at least 1")
        return value

    return parse


_job = {"running": False}  # a job's main is running: SIGTERM stops it (else: it is ending)


def run_main(main: Callable[[], object], *, again: str = "run the same command again") -> None:
    """Run a job's main and exit. Whatever ends it, the last line says why in the user's terms:
    a user error in one line (exit 2); a fault, also one raised inside a Ray worker (a full
    disk, a lost node), after its traceback, in one line that names the cause and says how to
    continue (`again`: e.g. "run the same command with --resume to continue"; exit 1); SIGTERM
    or Ctrl-C stop it cleanly (exit 143 / 130). Ray is always shut down whole first, and a
    SIGTERM that arrives while it shuts down no longer cuts that short (which left Ray's agents
    running).

    The exit skips interpreter teardown (os._exit after flushing and stopping Ray): native
    threads of torch, pyarrow or Ray still running at that point used to abort the process
    ("terminate called without an active exception", exit 134) after the message was printed,
    and the teardown itself cost the user seconds at the prompt.
    """
    _job["running"] = True
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        code, last = _outcome(main, again)
    except Stopped as e:  # a SIGTERM while another ending was being reported
        code, last = e.code, f"stopped by {e}; {again}: finished output is kept"
    exit_now(code, last)


def _outcome(main: Callable[[], object], again: str) -> tuple[int, str | None]:
    """Run main; (exit code, the last line that says how it ended) (run_main)."""
    try:
        main()
        _job["running"] = False
        return 0, None
    except Stopped as e:
        return e.code, f"stopped by {e}; {again}: finished output is kept"
    except KeyboardInterrupt:
        _job["running"] = False
        return 130, f"interrupted; {again}: finished output is kept"
    except SystemExit as e:  # argparse (--help, a bad flag) and sys.exit
        _job["running"] = False
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1), None
    except BaseException as e:  # noqa: BLE001 - every failure ends in one line
        _job["running"] = False
        cause = root_cause(e)
        if isinstance(cause, USER_ERRORS):
            return USER_ERROR_EXIT, f"error: {cause}"
        traceback.print_exception(e)
        where = " (in a Ray worker)" if cause is not e and _from_ray(e) else ""
        return 1, (f"error{where}: {describe(cause)}; fix that, then {again}: finished output "
                   "is kept")


class Stopped(BaseException):
    """SIGTERM reached the job (a scheduler or `ray job stop` stopping it)."""

    code = 128 + signal.SIGTERM

    def __str__(self) -> str:
        return "SIGTERM"


def _stop_on_sigterm(signum, frame) -> None:
    """Stop a running job (once); a job already ending (exit_now) ends as it was."""
    if _job["running"]:
        _job["running"] = False
        raise Stopped()


def _from_ray(e: BaseException) -> bool:
    return type(e).__module__.startswith("ray")


def root_cause(e: BaseException) -> BaseException:
    """The error a user can act on: through Ray's wrappers (Ray re-raises what a task or
    actor raised wrapped, with the worker's traceback in its message, and Ray Data wraps that
    again), down to the first exception that is not Ray's."""
    seen = {id(e)}
    while _from_ray(e):
        nxt = getattr(e, "cause", None)
        nxt = nxt if isinstance(nxt, BaseException) else e.__cause__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        e = nxt
    return e


def describe(e: BaseException) -> str:
    """One line for an error: an OSError by its errno's message and the file it names (when
    it names one), anything else by its type and the first line of its message."""
    if isinstance(e, OSError) and e.errno:
        if isinstance(e.strerror, str) and e.strerror.startswith(os.strerror(e.errno)):
            return e.strerror.splitlines()[0]  # the message already says what and where
        named = e.filename if isinstance(e.filename, str) and "\n" not in e.filename else None
        return f"{os.strerror(e.errno)}{f': {named}' if named else ''}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def exit_now(code: int, last: str | None = None) -> None:
    """Stop a Ray this process started or joined (whole: a SIGTERM arriving meanwhile is
    ignored), print `last` as the last line, flush output and logs, and exit with `code`.
    Ray Data's log is silenced first: a stream still running in a thread (the job was stopped,
    or failed) would only report, after the job's own last line, that Ray went away."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    try:
        if "ray" in sys.modules:
            t = time.perf_counter()
            sys.modules["ray"].shutdown()
            logging.getLogger(__name__).debug("Ray shut down in %.1f s",
                                              time.perf_counter() - t)
    except Exception:  # noqa: BLE001 - the exit code must stay the job's
        pass
    logging.shutdown()
    sys.stdout.flush()
    if last:
        print(last, file=sys.stderr)
    sys.stderr.flush()
    os._exit(code)


def smoke_run(out: str | os.PathLike, *, device: str = "cpu", epochs: int = 6,
              grid_n_parents: tuple[int, ...] = (2, 3)) -> Path:
    """The run a job's --smoke-test without --run works on: regene_ray.run.smoke_run_config
    trained into `out`, or reused when it is already there (its trainings are finished)."""
    from regene_ray.latent_bank import THRESHOLDS_FILE
    from regene_ray.run import smoke_run_config, train_run

    out = Path(out)
    if not (out / THRESHOLDS_FILE).is_file():
        train_run(smoke_run_config(epochs=epochs, grid_n_parents=grid_n_parents), out,
                  device=device)
    return out


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
