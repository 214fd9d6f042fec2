"""The blob store where finished outputs live. Today: a local directory (obstore backends later).

Outputs are written once under a key that names their rendition, generation and attempt, so two
transcoders finishing the same work never overwrite each other's file; only the one recorded on the
rendition is served, and the storage service deletes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Protocol

import msgspec

from shared.errors import BadRequest, StoreError

_CHUNK = 1 << 20


class StoredBlob(msgspec.Struct, frozen=True, kw_only=True):
    """A blob as stored: its key, size and SHA-256 (computed once, on the way in)."""

    key: str
    size: int
    sha256: str


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A listing entry."""

    key: str
    size: int
    modified: float


class BlobStore(Protocol):
    """What services need from a blob store."""

    name: str

    async def put_file(self, key: str, path: Path) -> StoredBlob: ...

    async def delete(self, key: str) -> int: ...

    async def size(self, key: str) -> int | None: ...

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]: ...

    def local_path(self, key: str) -> Path | None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root."""
    path = PurePosixPath(key)
    if not key or path.is_absolute() or ".." in path.parts or "\\" in key:
        raise BadRequest(f"invalid blob key {key!r}")
    return key


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read once in large chunks (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as reader, dst.open("wb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


class LocalBlobStore:
    """Blobs as files under one directory (shared by every service on one machine or volume)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.name = f"local:{self.root}"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    async def put_file(self, key: str, path: Path) -> StoredBlob:
        """Move `path` into the store as `key`, hashing it once (moved, or copied across disks)."""
        return await asyncio.to_thread(self._put_file, key, path)

    def _put_file(self, key: str, path: Path) -> StoredBlob:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha = sha256_file(path)
                os.replace(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                partial = target.with_name(target.name + ".partial")
                sha = _copy_hashing(path, partial)
                os.replace(partial, target)
                path.unlink(missing_ok=True)
            return StoredBlob(key=key, size=target.stat().st_size, sha256=sha)
        except OSError as exc:
            reason = "the store is full" if exc.errno == errno.ENOSPC else exc.strerror
            raise StoreError(f"could not store the output: {reason}") from exc

    async def delete(self, key: str) -> int:
        """Delete a blob; returns the bytes freed (0 when it was not there)."""
        return await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> int:
        target = self._path(key)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        with contextlib.suppress(OSError):
            parent = target.parent
            while parent != self.root and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent
        return size

    async def size(self, key: str) -> int | None:
        try:
            return (await asyncio.to_thread(self._path(key).stat)).st_size
        except FileNotFoundError:
            return None

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[BlobInfo]:
        found: list[BlobInfo] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or name.endswith(".partial"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = full.stat()
                    found.append(BlobInfo(key=key, size=st.st_size, modified=st.st_mtime))
        return found

    def wipe(self) -> None:
        """Remove everything (tests and `vidmesh reset`)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)


def output_key(rendition: str, generation: int, attempt: int, extension: str) -> str:
    """Where an attempt's output is stored."""
    return f"outputs/{rendition[:2]}/{rendition}/{generation}-{attempt}.{extension}"
