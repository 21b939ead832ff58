"""Output folders on any pyarrow filesystem: a local path, s3://bucket/prefix, gs://bucket/prefix.

`Storage(uri)` is a folder; every method takes a path relative to it, with "/" separators.
Remote folders are resolved by `pyarrow.fs.FileSystem.from_uri`, so the usual options work:

    s3://bucket/gen                                    credentials and region from the AWS chain
    s3://bucket/gen?endpoint_override=127.0.0.1:9000&scheme=http   an S3-compatible server
    gs://bucket/gen                                    Google default credentials

(the AWS_ENDPOINT_URL environment variable works as well as endpoint_override). A Storage
pickles as its URI, so Ray actors and tasks reopen the filesystem where they run.

Atomic writes: a local file is written under a temporary name and renamed; for an object store
the file is first built in memory and then sent in one upload, and the store publishes an object
only when its upload completes, so a reader or a resumed job never sees half a file either way. `move` is a rename locally and copy-then-delete on object stores; callers make
that safe by treating "in both places" as "moved" (see regene_ray.mass.scan).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import posixpath
import re
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) \
    if sys.platform.startswith("linux") else None
REMOTE_THREADS = 16  # requests in flight for many small files on an object store
MARKER_PREFIX = ".regene-shared-check-"  # regene_ray.cluster.check_shared_folder's probe files (never output)
_SCHEME_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


class StorageError(ValueError):
    """A storage URI or folder that cannot be used (the message says what to do)."""


def is_remote(uri: str | os.PathLike) -> bool:
    m = _SCHEME_RE.match(str(uri))
    return bool(m) and m[1].lower() != "file"


def redact(uri: str | os.PathLike) -> str:
    """The URI for messages, logs and recorded provenance: without credentials in its user part
    (s3://KEY:SECRET@bucket/...) and without its ?options (they may hold keys too)."""
    base, sep, _ = str(uri).partition("?")
    m = _SCHEME_RE.match(base)
    if m and "@" in base[m.end():]:  # the last @ ends the user part (a secret may hold / or @)
        base = m[0] + "***@" + base[m.end():].rpartition("@")[2]
    return base + ("?..." if sep else "")


_SECRET_RE = re.compile(r"(?i)((?:secret|access|session)[_-]?key|token|password)=[^&\s'\"]*")


def redact_text(text: str, uri: str) -> str:
    """A message that may quote `uri` (pyarrow's errors do), with its credentials removed."""
    text = text.replace(str(uri), redact(uri))
    return _SECRET_RE.sub(lambda m: f"{m[1]}=***", text)


def _fsync_dir(folder: str) -> None:
    """Make a rename in `folder` durable (a power loss after it keeps the new name)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it). Plain and file:// paths become absolute local paths."""
    text = str(uri)
    m = _SCHEME_RE.match(text)
    if not m:
        return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    scheme = m[1].lower()
    if scheme == "file":
        return pafs.LocalFileSystem(), str(Path(text[len("file://"):]).resolve())
    if scheme not in REMOTE_SCHEMES:
        raise StorageError(f"{redact(text)}: unsupported scheme {scheme}://; use a local path, "
                           "s3:// or gs://")
    parts = urlsplit(text)
    if not parts.path.strip("/"):
        raise StorageError(f"{redact(text)}: give a folder inside the bucket, e.g. "
                           f"{scheme}://{parts.netloc}/gen")
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError with its own wording
        raise StorageError(f"{redact(text)}: cannot open this storage URI "
                           f"({redact_text(str(e), text)}); check the bucket name and options "
                           "such as ?endpoint_override=host:port&scheme=http") from None
    return fs, path.rstrip("/")


def _local_tmp(path: str) -> str:
    """A temporary name beside local `path` (its folder created), for write-then-rename."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *,
                 durable: bool = True) -> None:
    """The project's one atomic local write: `write(tmp)` fills `.NAME.tmp<pid>` beside `path`,
    which is fsynced and renamed over `path` (and the rename fsynced), so a reader, a resumed
    job or a power loss sees the old file or the new one, never half of one. durable=False
    skips the fsyncs (many small files made durable together by Storage.sync)."""
    path = str(path)
    tmp = _local_tmp(path)
    try:
        write(tmp)
        if durable:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(posixpath.dirname(path) or ".")


def atomic_write_bytes(path: str | os.PathLike, data: bytes | str) -> None:
    """atomic_write of bytes (str is written as UTF-8)."""
    data = data.encode() if isinstance(data, str) else data
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


class Storage:
    """A folder on a local or remote filesystem (see the module docstring)."""

    def __init__(self, uri: str | os.PathLike):
        self.uri = str(uri)
        self.fs, self.root = resolve(self.uri)
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):
        return Storage, (self.uri if is_remote(self.uri) else self.root,)

    def __repr__(self) -> str:
        return f"Storage({self.display()!r})"

    def __str__(self) -> str:
        return self.display()

    def display(self, rel: str = "") -> str:
        """Where `rel` is, for messages: the local path, or scheme://bucket/key without options."""
        if self.is_local:
            return self.path(rel)
        scheme = _SCHEME_RE.match(self.uri)[1]
        return f"{scheme}://{self.path(rel)}"

    def path(self, rel: str = "") -> str:
        """The full path of `rel`, which must lie inside this folder: absolute paths and '..'
        are refused, so no read, write or delete can reach outside it (a path read from a file,
        such as a Parquet row's image.path, is checked here before it is used)."""
        if not rel:
            return self.root
        parts = str(rel).split("/")
        if str(rel).startswith("/") or "\\" in str(rel) or ".." in parts or "." in parts \
                or "" in parts[:-1]:
            raise StorageError(f"{rel!r} is not a path inside {self}; refusing to touch it")
        return posixpath.join(self.root, rel)

    def local_path(self, rel: str = "") -> Path:
        if not self.is_local:
            raise StorageError(f"{self.display(rel)} is not on the local filesystem")
        return Path(self.path(rel))

    def child(self, rel: str) -> Storage:
        """The sub-folder `rel` (relative, no '..') as a Storage of its own."""
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts or "?" in rel or "#" in rel:
            raise StorageError(f"{rel!r}: give a relative folder name inside {self}, without "
                               "'..', '?' or '#'")
        if self.is_local:
            return Storage(self.path(rel))
        base, _, query = self.uri.partition("?")
        return Storage(posixpath.join(base.rstrip("/"), rel) + (f"?{query}" if query else ""))

    # queries

    def _info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def is_file(self, rel: str = "") -> bool:
        return self._info(rel).type == pafs.FileType.File

    def is_dir(self, rel: str = "") -> bool:
        return self._info(rel).type == pafs.FileType.Directory

    def exists(self, rel: str = "") -> bool:
        return self._info(rel).type != pafs.FileType.NotFound

    def list(self, rel: str = "", *, recursive: bool = False) -> list[str]:
        """Files under `rel`, relative to `rel` and sorted; [] when the folder is missing."""
        base = self.path(rel)
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True,
                                                        recursive=recursive))
        return sorted(posixpath.relpath(i.path, base) for i in infos
                      if i.type == pafs.FileType.File)

    def names(self, rel: str = "") -> list[str]:
        """Names of the files and folders directly in `rel`, sorted; [] when it is missing.
        Probe markers of regene_ray.cluster.check_shared_folder (left by a killed driver) are not counted."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        return sorted(n for n in (posixpath.basename(i.path) for i in infos)
                      if not n.startswith(MARKER_PREFIX))

    def is_empty(self, rel: str = "") -> bool:
        """True when `rel` is missing or holds nothing (not even empty folders)."""
        return not self.names(rel)

    def check_reachable(self) -> None:
        """Touch the storage once (a listing), so bad credentials, a wrong region or a missing
        bucket fail here with a clear message rather than deep inside a job."""
        try:
            self.fs.get_file_info(self.path())
            bucket = self.root.split("/", 1)[0]
            if not self.is_local and \
                    self.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise StorageError(f"{self}: the bucket {bucket} does not exist, or these "
                                   "credentials cannot see it; create it first (e.g. `aws s3 mb "
                                   f"s3://{bucket}`) or fix the credentials")
        except OSError as e:
            raise StorageError(f"cannot reach {self}: {redact_text(str(e), self.uri)}. Check the "
                               "credentials (AWS_* / GOOGLE_APPLICATION_CREDENTIALS or the "
                               "node's role), the region and that the bucket exists") from None

    def check_writable(self, flag: str) -> None:
        """Fail now, with a message that says what to do, when this folder cannot be written:
        a read-only folder, filesystem or bucket. An existing folder (and any object store) gets
        a probe file written and deleted; a missing local folder is not created here (nothing
        is touched before every input is validated): the nearest existing folder above it must
        be writable instead."""
        try:
            if self.is_local and not self.exists():
                parent = Path(self.root)
                while not parent.exists():
                    parent = parent.parent
                if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                    raise PermissionError(13, f"cannot create folders in {parent}")
                return
            probe = f"{MARKER_PREFIX}write-{uuid.uuid4().hex}"
            self.write_bytes(probe, b"write check\n")
            self.delete(probe)
        except OSError as e:
            raise StorageError(
                f"{flag} {self} is not writable ({getattr(e, 'strerror', None) or e}); choose a "
                "folder you can write to, or fix its permissions (or the bucket's credentials)"
            ) from e

    # reading and writing

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str):
        return json.loads(self.read_bytes(rel))

    def write_bytes(self, rel: str, data: bytes, *, durable: bool = True) -> None:
        """Atomic: a temporary name and a rename locally, one upload remotely. Locally the file
        and its folder are fsynced (durable=False leaves that to a later `sync()`)."""
        path = self.path(rel)
        if self.is_local:
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), durable=durable)
            return
        with self.fs.open_output_stream(path) as f:
            f.write(data)

    def write_many(self, items: list[tuple[str, bytes]]) -> None:
        """write_bytes for many small files (PNGs): in a thread pool on object stores, where
        each file is one request and its round trip, not the bytes, is the cost. Locally the
        files are made durable together by one `sync()` of the filesystem, not one fsync each."""
        if self.is_local:
            for rel, data in items:
                self.write_bytes(rel, data, durable=False)
            if items:
                self.sync()
            return
        if len(items) < 2:
            for rel, data in items:
                self.write_bytes(rel, data)
            return
        with ThreadPoolExecutor(REMOTE_THREADS) as pool:
            list(pool.map(lambda item: self.write_bytes(*item), items))

    def sync(self) -> None:
        """Flush this local folder's filesystem to disk (Linux syncfs; elsewhere os.sync), so
        files written with durable=False survive a power loss. Nothing to do on object stores."""
        if not self.is_local:
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            if _LIBC is not None and _LIBC.syncfs(fd) == 0:
                return
            os.sync()
        finally:
            os.close(fd)

    def delete_many(self, rels: list[str]) -> None:
        """delete for many files, in a thread pool on object stores."""
        if self.is_local or len(rels) < 2:
            for rel in rels:
                self.delete(rel)
            return
        with ThreadPoolExecutor(REMOTE_THREADS) as pool:
            list(pool.map(self.delete, rels))

    def write_json(self, rel: str, obj) -> None:
        self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def write_with(self, rel: str, write) -> None:
        """Atomic write by a callback `write(where, filesystem)` (e.g. pq.write_table): locally
        to a temporary file that is then renamed; remotely into memory, then one upload (a
        failure while writing must not complete, and so publish, a partial object)."""
        path = self.path(rel)
        if self.is_local:
            atomic_write(path, lambda tmp: write(tmp, self.fs))
        else:
            buf = pa.BufferOutputStream()
            write(buf, None)
            self.write_bytes(rel, buf.getvalue().to_pybytes())

    def makedirs(self, rel: str = "") -> None:
        if self.is_local:
            Path(self.path(rel)).mkdir(parents=True, exist_ok=True)
        # object stores have no folders: a key's "parents" exist once it is written

    def move(self, src: str, dst: str) -> None:
        """Rename locally; copy, then delete, on object stores."""
        if self.is_local:
            Path(self.path(dst)).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path(src), self.path(dst))
            _fsync_dir(posixpath.dirname(self.path(dst)))
        else:
            self.fs.copy_file(self.path(src), self.path(dst))
            self.delete(src)

    def delete(self, rel: str) -> None:
        """Delete a file inside this folder; nothing when it is missing."""
        if not rel:
            raise StorageError(f"refusing to delete {self} itself; name a file inside it")
        try:
            self.fs.delete_file(self.path(rel))
        except FileNotFoundError:
            pass

    def delete_dir(self, rel: str) -> None:
        """Delete a sub-folder and everything under it; nothing when it is missing. Never the
        folder itself (callers delete the artefacts they listed, one by one)."""
        if not rel:
            raise StorageError(f"refusing to delete {self} itself; name a folder inside it")
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))
