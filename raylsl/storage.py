"""Durable storage for runs and sweeps: a URI Ray's storage layer understands.

A local path, an NFS mount, ``s3://bucket/prefix`` or ``gs://bucket/prefix``, through pyarrow's
filesystems (the ones Ray Train and Tune use for ``storage_path``). S3-compatible servers are
reached by setting ``AWS_ENDPOINT_URL`` for every process (the driver and each ``ray start``).

A run lives in two places: its **local run directory** on the machine that started it (what the
user reads) and its **storage directory** (what survives the machine and what other nodes reach).
Without ``storage=`` they are the same directory. `RunDir` writes every record to both; files
are written whole (a temporary file, fsynced, renamed into place locally; a single object put
remotely), so no reader ever sees half a file, and a file renamed into place survives a crash of
the machine.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path
from typing import Any

from raylsl.errors import RaylslError, StateError


class StorageError(RaylslError):
    """Storage cannot be reached or read; the message names the URI and what to check."""


def is_remote(uri: str | os.PathLike | None) -> bool:
    return uri is not None and "://" in str(uri) and not str(uri).startswith("file://")


class Storage:
    """One directory in a filesystem: ``Storage("s3://bucket/runs").child("run-1")``."""

    def __init__(self, uri: str | os.PathLike):
        import pyarrow.fs

        text = str(uri)
        if not is_remote(text):
            text = str(Path(text.removeprefix("file://")).expanduser().resolve())
        self.uri = text.rstrip("/") or text
        if not is_remote(self.uri):  # a local path as it is: a file:// URI would need '%' and '#' escaped
            self.fs, self.root = pyarrow.fs.LocalFileSystem(), self.uri
            return
        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)
        except OSError as exc:  # e.g. the bucket's region cannot be looked up
            raise StorageError(f"cannot reach storage {self.uri}: {str(exc).strip().splitlines()[0]}.{_hint(self.uri)}") from None
        except (ValueError, TypeError) as exc:
            raise StorageError(f"storage={uri!s} is not a storage URI Ray understands ({exc}); use a local path or "
                               f"s3://bucket/prefix, gs://bucket/prefix") from None

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    @property
    def local(self) -> Path | None:
        """The directory as a local path, or None for object storage."""
        return None if is_remote(self.uri) else Path(self.uri)

    def child(self, *parts: str) -> "Storage":
        return Storage(posixpath.join(self.uri, *parts) if is_remote(self.uri) else Path(self.uri, *parts))

    def path(self, rel: str = "") -> str:
        """``rel`` inside this directory, as a path of ``self.fs``."""
        return posixpath.join(self.root, rel) if rel else self.root

    def uri_of(self, rel: str) -> str:
        return posixpath.join(self.uri, rel) if is_remote(self.uri) else str(Path(self.uri, rel))

    # --- reading ----------------------------------------------------------------------------------

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs

        info = self._call("read", lambda: self.fs.get_file_info(self.path(rel)))
        return info.type != pyarrow.fs.FileType.NotFound

    def is_file(self, rel: str) -> bool:
        import pyarrow.fs

        return self._call("read", lambda: self.fs.get_file_info(self.path(rel))).type == pyarrow.fs.FileType.File

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (empty when it does not exist)."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path(rel), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self._call("list", lambda: self.fs.get_file_info(selector)))

    def read_bytes(self, rel: str) -> bytes:
        def read():
            with self.fs.open_input_stream(self.path(rel)) as fh:
                return fh.read()

        return self._call("read", read)

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def read_json(self, rel: str) -> Any:
        """The JSON file ``rel``.

        Raises:
            StateError: the file is not valid JSON (cut short by a crash, or edited).
        """
        try:
            return json.loads(self.read_bytes(rel))
        except ValueError as exc:
            raise StateError(f"{self.uri_of(rel)} is damaged (not valid JSON: {exc}); restore it from a copy, or "
                             f"start again under a new name") from None

    def sizes(self, rel: str = "") -> dict[str, int]:
        """Every file under ``rel`` (recursively, empty when it does not exist) with its size in
        bytes, by its path relative to ``rel``."""
        import pyarrow.fs

        base = self.path(rel)
        selector = pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._call("list", lambda: self.fs.get_file_info(selector))
        return {posixpath.relpath(i.path, base): i.size for i in infos if i.type == pyarrow.fs.FileType.File}

    def download(self, rel: str, target: Path) -> Path:
        """Copies file or directory ``rel`` to the local ``target`` (replaced whole)."""
        import pyarrow.fs

        target = Path(target)
        staging = target.with_name(f".{target.name}.partial")
        _remove(staging)
        if self.is_file(rel):
            staging.parent.mkdir(parents=True, exist_ok=True)
            staging.write_bytes(self.read_bytes(rel))
        else:
            staging.mkdir(parents=True)
            self._call("read", lambda: pyarrow.fs.copy_files(
                self.path(rel), str(staging), source_filesystem=self.fs,
                destination_filesystem=pyarrow.fs.LocalFileSystem()))
        _remove(target)
        staging.rename(target)
        return target

    # --- writing ----------------------------------------------------------------------------------

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Writes a whole file: locally through a temporary file renamed into place, remotely as
        one object put (object stores never expose a partial object)."""
        if self.local is not None:
            path = self.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)  # the rename itself is durable only once its directory is
            return

        def put():
            with self.fs.open_output_stream(self.path(rel)) as fh:
                fh.write(data)

        self._call("write", put)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_json(self, rel: str, payload: Any) -> None:
        self.write_text(rel, json.dumps(payload, indent=2))

    def upload(self, source: Path, rel: str) -> None:
        """Copies a local file or directory to ``rel`` (a no-op when it already is that path)."""
        import pyarrow.fs

        source = Path(source)
        if self.local is not None and (self.local / rel).resolve() == source.resolve():
            return
        if source.is_file() and self.local is not None:  # through a temporary file renamed into place
            path = self.local / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            os.close(fd)
            shutil.copyfile(source, tmp)
            os.replace(tmp, path)
            return
        if source.is_file():  # streamed (model shards are GBs), one object put
            self._call("write", lambda: pyarrow.fs.copy_files(
                str(source), self.path(rel), source_filesystem=pyarrow.fs.LocalFileSystem(),
                destination_filesystem=self.fs))
            return
        self._call("write", lambda: self.fs.create_dir(self.path(rel), recursive=True))
        self._call("write", lambda: pyarrow.fs.copy_files(
            str(source), self.path(rel), source_filesystem=pyarrow.fs.LocalFileSystem(),
            destination_filesystem=self.fs))

    def delete(self, rel: str) -> None:
        import pyarrow.fs

        info = self._call("read", lambda: self.fs.get_file_info(self.path(rel)))
        if info.type == pyarrow.fs.FileType.Directory:
            self._call("write", lambda: self.fs.delete_dir(self.path(rel)))
        elif info.type == pyarrow.fs.FileType.File:
            self._call("write", lambda: self.fs.delete_file(self.path(rel)))

    def check_writable(self) -> None:
        """Creates the directory and round-trips a probe file; raises `StorageError` with the
        reason when the storage cannot be reached (wrong bucket, no credentials, no endpoint)."""
        probe = f".raylsl-probe-{os.getpid()}"
        self._call("write", lambda: self.fs.create_dir(self.root, recursive=True))
        self.write_bytes(probe, b"ok")
        if self.read_bytes(probe) != b"ok":
            raise StorageError(f"storage {self.uri} returned something else than was written to it")
        self.delete(probe)

    def _call(self, what: str, fn):
        try:
            return fn()
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot {what} storage {self.uri}: {str(exc).strip().splitlines()[0]}.{_hint(self.uri)}") from None


def _hint(uri: str) -> str:
    if uri.startswith("s3://"):
        return (" Check the bucket and the AWS credentials; for S3-compatible servers set AWS_ENDPOINT_URL for the "
                "driver and every Ray node.")
    return ""


def fsync_dir(path: Path) -> None:
    """Makes the entries of directory ``path`` (files created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Makes every file under ``root`` and every directory entry there durable (before ``root``
    is renamed into place)."""
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif path.is_dir():
            fsync_dir(path)
    fsync_dir(Path(root))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class RunDir:
    """A run's local directory and its storage directory (the same one without ``storage=``).

    Records go to both; `sync` copies what a run wrote locally to storage.
    """

    def __init__(self, local: Path, storage: Storage | None = None):
        self.local = Path(local)
        self.storage = storage or Storage(self.local)

    @property
    def shared(self) -> bool:
        """True when storage is somewhere else than the local directory."""
        return self.storage.local is None or self.storage.local.resolve() != self.local.resolve()

    def write_json(self, rel: str, payload: Any) -> None:
        Storage(self.local).write_json(rel, payload)
        if self.shared:
            self.storage.write_json(rel, payload)

    def write_text(self, rel: str, text: str) -> None:
        Storage(self.local).write_text(rel, text)
        if self.shared:
            self.storage.write_text(rel, text)

    def sync(self, *rels: str) -> None:
        """Copies local files or directories ``rels`` to storage (when storage is elsewhere)."""
        if self.shared:
            for rel in rels:
                if (self.local / rel).exists():
                    self.storage.upload(self.local / rel, rel)
