"""Who owns an output folder: the marker a job writes when it creates one, and the lease a
running driver holds on it. Every job deletes only what these prove it made.

**Marker.** When a job first writes into a folder it writes `OUT/.regene-ray.json`:

    {"format": "regene-ray output v1", "kind": "run" | "mass" | "search",
     "artefacts": ["config.yaml", "classifier", ...], "identity": {...}, "created": "..."}

`--overwrite` deletes exactly the `artefacts` that marker lists (names directly inside OUT),
then the marker itself, and nothing else: a user's own files beside them stay. A folder without
the marker is never deleted from, whatever files it holds (a `config.yaml` or `job.json` proves
nothing). The current directory, its parents, a home folder, a filesystem root and a folder
holding `.git` are refused as folders to overwrite.

**Lease.** A driver that writes into OUT holds `OUT/.regene-ray.lease` (who, since when, last
heartbeat), refreshed by a thread every `HEARTBEAT_S`. A second driver is refused while the
lease is fresh, with a message naming the holder; a lease whose heartbeat is older than
`STALE_S` (its driver crashed or was killed), or whose driver ran on this host and no longer
exists, is taken over. Locally the lease is read and written under an exclusive flock of the
folder, so of two drivers racing for it exactly one proceeds; on object stores, which have no
create-if-absent here, it is written and read back after a pause (best effort). Staleness
compares the reader's clock with the holder's heartbeat: keep driver hosts' clocks in sync.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import re
import socket
import threading
import time
import uuid
from pathlib import Path

from regene_ray.storage import Storage, StorageError

log = logging.getLogger(__name__)

MARKER_FILE = ".regene-ray.json"
MARKER_FORMAT = "regene-ray output v1"
LEASE_FILE = ".regene-ray.lease"
HEARTBEAT_S = 10.0  # how often a running driver refreshes its lease
STALE_S = 60.0  # a lease not refreshed for this long belongs to a dead driver
REMOTE_SETTLE_S = 2.0  # object stores: wait before reading a written lease back


def is_lease_file(name: str) -> bool:
    """The lease, or a temporary its heartbeat writes beside it (storage's `.NAME.tmp<pid>`):
    a driver resumed after a pause longer than a heartbeat refreshes its lease while it checks
    the folder it holds, so neither counts as the folder's content."""
    return name == LEASE_FILE or re.fullmatch(rf"\.{re.escape(LEASE_FILE)}\.tmp\d+", name) is not None


class OwnershipError(FileExistsError):
    """An output folder this job may not write into or delete from (the message says why)."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# the marker


def read_marker(out: Storage) -> dict | None:
    """The folder's ownership marker, or None when it has none (or an unreadable one)."""
    if not out.is_file(MARKER_FILE):
        return None
    try:
        marker = out.read_json(MARKER_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return None
    artefacts = marker.get("artefacts")
    if not isinstance(artefacts, list) or _bad_names(artefacts):
        return None  # a marker that names anything but plain names inside the folder: not ours
    return marker


def _bad_names(names: list) -> list:
    return [a for a in names if not isinstance(a, str) or not a or "/" in a or "\\" in a
            or a in (".", "..", MARKER_FILE, LEASE_FILE)]


def write_marker(out: Storage, kind: str, artefacts: list[str], identity: dict) -> None:
    """Claim `out` for a job of `kind` that writes `artefacts` (names directly inside it)."""
    bad = _bad_names(artefacts)
    if bad:
        raise ValueError(f"artefacts must be plain names inside the folder, not {bad}")
    out.write_json(MARKER_FILE, {"format": MARKER_FORMAT, "kind": kind,
                                 "artefacts": list(artefacts), "identity": identity,
                                 "created": _now()})


def refuse_unlisted(out: Storage, artefacts: list[str]) -> None:
    """Refuse when one of `artefacts` (what a job is about to write) already exists in `out`
    but its marker does not list it: a file of the user's (in a folder made by an earlier
    version, which wrote fewer artefacts), never written over or deleted."""
    marker = read_marker(out)
    listed = marker["artefacts"] if marker else []
    theirs = [a for a in artefacts if a not in listed and out.exists(a)]
    if theirs:
        raise OwnershipError(f"{out.display(theirs[0])} is not listed in the folder's marker: "
                             "no regene-ray job wrote it, and it is never written over; move "
                             "it away, then run the command again")


def add_artefacts(out: Storage, kind: str, artefacts: list[str]) -> None:
    """Add `artefacts` to the marker of `out`, a folder a job of `kind` made (an output made by
    an earlier version, resumed or exported by this one, then lists what this one writes)."""
    marker = read_marker(out)
    if marker is None or marker.get("kind") != kind:
        raise OwnershipError(f"{out} was not made by a regene-ray {kind} job; nothing is "
                             "written into it")
    refuse_unlisted(out, artefacts)
    missing = [a for a in artefacts if a not in marker["artefacts"]]
    if missing:  # the rest of the marker (identity, created) as it was
        out.write_json(MARKER_FILE, marker | {"artefacts": marker["artefacts"] + missing})


def refuse_protected(out: Storage, flag: str = "--out") -> None:
    """Refuse to delete from the current directory or one above it, a home folder, a filesystem
    root, or a folder holding .git: no job output ever lives there."""
    if not out.is_local:
        return
    path = Path(out.root).resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    why = None
    if path == path.parent:
        why = "a filesystem root"
    elif path == cwd or path in cwd.parents:
        why = "the current directory or one above it"
    elif path == home:
        why = "your home folder"
    elif (path / ".git").exists():
        why = "a folder holding .git (a source checkout)"
    if why:
        raise OwnershipError(f"{flag} {out} is {why}; regene-ray never deletes there. Pass a "
                             "dedicated output folder such as runs/NAME")


def inspect_owned(out: Storage, kind: str, *, overwrite: bool, what: str,
                  flag: str = "--out") -> str:
    """Read-only: what a `kind` job may do with `out`: 'new' (missing or empty; a lease alone
    does not count), 'overwrite' (its own earlier output, and --overwrite), or 'existing' (its
    own earlier output, for the caller to compare identities).

    Raises:
        OwnershipError: a non-empty folder without this kind's marker (`what` names the kind
            of output in the message), or a protected folder with --overwrite.
    """
    if not [n for n in out.names() if not is_lease_file(n)]:
        return "new"
    marker = read_marker(out)
    if marker is None or marker.get("kind") != kind:
        raise OwnershipError(
            f"{flag} {out} is a non-empty folder without a regene-ray ownership marker "
            f"({MARKER_FILE} of a {kind} job), not {what}; choose a new or empty folder. "
            "Nothing in it is deleted, with or without --overwrite")
    if overwrite:
        refuse_protected(out, flag)
        return "overwrite"
    return "existing"


def claim_for_overwrite(out: Storage, kind: str, flag: str = "--out") -> None:
    """Delete the artefacts of the earlier `kind` job in `out`, in the order its marker lists
    them (a job lists the files that mark it complete first, so an interrupted overwrite never
    leaves something that looks finished), then the marker (last, so an interrupted overwrite
    can be run again). Refuses a folder without a marker of this kind, and protected folders."""
    marker = read_marker(out)
    if marker is None or marker.get("kind") != kind:
        what = "has no regene-ray ownership marker" if marker is None else \
            f"belongs to a regene-ray '{marker.get('kind')}' job, not a '{kind}' job"
        raise OwnershipError(
            f"{flag} {out} {what} ({MARKER_FILE}), so --overwrite will not delete anything in "
            "it; choose a new or empty folder (an output of an older regene-ray version must "
            "be removed by hand)")
    refuse_protected(out, flag)
    log.warning("--overwrite: removing the earlier %s job's %s from %s", kind,
                ", ".join(marker["artefacts"]), out)
    for name in marker["artefacts"]:
        if out.is_dir(name):
            out.delete_dir(name)
        else:
            out.delete(name)
    out.delete(MARKER_FILE)


# the lease


class LeaseError(OwnershipError):
    """Another live driver holds the folder."""


def lease_is_dead(held: dict, stale_s: float = STALE_S) -> bool:
    """A lease's driver is gone when its heartbeat is stale, or at once when it ran on this
    host and its process no longer exists (a driver killed with SIGKILL)."""
    if time.time() - float(held.get("heartbeat", 0)) >= stale_s:
        return True
    if held.get("host") == socket.gethostname() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
    return False


def _held_message(out: Storage, held: dict, stale_s: float) -> str:
    age = time.time() - float(held.get("heartbeat", 0))
    return (f"{out} is in use by another driver ({held.get('holder', '?')}, {held.get('job')} "
            f"job, since {held.get('since', '?')}, last heartbeat {age:.0f} s ago). Wait for it "
            "to finish or stop it (`ray job stop`, or kill the process); a lease not refreshed "
            f"for {stale_s:.0f} s is taken over automatically")


def refuse_if_held(out: Storage, stale_s: float = STALE_S) -> None:
    """Raise LeaseError when a live driver holds `out` (read-only: takes nothing)."""
    try:
        held = out.read_json(LEASE_FILE)
    except (OSError, ValueError):
        return
    if isinstance(held, dict) and not lease_is_dead(held, stale_s):
        raise LeaseError(_held_message(out, held, stale_s))


class Lease:
    """The driver's hold on an output folder (see the module docstring). Use as a context
    manager; `lost` turns True if another driver took the lease over (this one stalled for
    longer than STALE_S), and `check()` then raises."""

    def __init__(self, out: Storage, job: str, *, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S):
        self.out = out
        self.heartbeat_s = heartbeat_s
        self.stale_s = stale_s
        self.record = {"holder": f"{socket.gethostname()} pid {os.getpid()}",
                       "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "job": job, "since": _now(),
                       "heartbeat": time.time()}
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> dict | None:
        try:
            return self.out.read_json(LEASE_FILE)
        except (OSError, ValueError):
            return None

    def _is_dead(self, held: dict) -> bool:
        return lease_is_dead(held, self.stale_s)

    def _refuse(self, held: dict) -> None:
        raise LeaseError(_held_message(self.out, held, self.stale_s))

    def acquire(self) -> Lease:
        """Take the lease, or raise LeaseError naming the live driver that holds it."""
        self.out.makedirs()
        if self.out.is_local:
            # Read-then-write under an exclusive flock of the folder itself: two drivers racing
            # for a free or stale lease are serialised, and the lease file is replaced whole.
            fd = os.open(self.out.root, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._take(self._read_or_held())
            finally:
                os.close(fd)  # releases the flock
            return self._start()
        # object stores: no create-if-absent here; write, wait, read back (best effort)
        self._take(self._read_or_held())
        time.sleep(REMOTE_SETTLE_S)
        now = self._read()
        if not now or now.get("token") != self.record["token"]:
            self._refuse(now or {})
        return self._start()

    def _read_or_held(self) -> dict | None:
        """The lease on the folder; an unreadable one counts as a live holder's (a lease being
        written) unless its file is older than the stale limit."""
        held = self._read()
        if held is None and self.out.exists(LEASE_FILE):
            mtime = self.out.fs.get_file_info(self.out.path(LEASE_FILE)).mtime
            age = time.time() - mtime.timestamp() if mtime is not None else 0.0
            held = {"holder": "unknown (an unreadable lease)", "heartbeat": time.time() - age}
        return held

    def _take(self, held: dict | None) -> None:
        if held is not None and not self._is_dead(held):
            self._refuse(held)
        if held is not None:
            log.warning("taking over the lease of %s on %s: its driver is gone (no heartbeat "
                        "for %.0f s)", held.get("holder"), self.out,
                        time.time() - float(held.get("heartbeat", 0)))
        self.out.write_json(LEASE_FILE, self.record)

    def _start(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name="regene-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = self._read()
            if held is not None and held.get("token") != self.record["token"]:
                log.error("lost the lease on %s to %s", self.out, held.get("holder"))
                self.lost = True
                return
            self.record["heartbeat"] = time.time()
            try:
                self.out.write_json(LEASE_FILE, self.record)
            except (OSError, StorageError) as e:  # a passing storage error: try next beat
                log.warning("could not refresh the lease on %s: %s", self.out, e)

    def check(self) -> None:
        if self.lost:
            raise LeaseError(f"another driver took over {self.out} while this one stalled; "
                             "this driver stops without writing more")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held = self._read()
        if held is not None and held.get("token") == self.record["token"]:
            self.out.delete(LEASE_FILE)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
