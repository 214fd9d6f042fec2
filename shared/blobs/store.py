"""The blob store where finished outputs live: one interface, backends for a local directory
(here) and for S3-compatible stores, GCS and Azure Blob (`shared.blobs.objects`, on obstore).

Outputs are written once under a key that names their rendition, generation and attempt, so two
transcoders finishing the same work never overwrite each other's file; only the one recorded on the
rendition is served, and the storage service deletes the rest. `shared.blobs.backends.open_store`
opens the store a configuration names.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import shutil
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

import msgspec

from shared.errors import BadRequest, NotFound, StoreError

CHUNK = 1 << 20
PROBE_DATA = b"vidmesh write probe\n"
_PARTIAL = ".partial"


class StoredBlob(msgspec.Struct, frozen=True, kw_only=True):
    """A blob as stored: its key, size and SHA-256 (computed once, on the way in)."""

    key: str
    size: int
    sha256: str


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A listing or stat entry: size, modification time (Unix seconds) and the store's ETag."""

    key: str
    size: int
    modified: float
    etag: str = ""


class BlobWriter(Protocol):
    """A streaming upload: `write` chunks, then `close` (stored) or `abort` (nothing left)."""

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> StoredBlob: ...

    async def abort(self) -> None: ...


class BlobStore(Protocol):
    """What services need from a blob store. Keys are relative to the store's root or prefix."""

    name: str
    kind: str

    async def put_file(self, key: str, path: Path) -> StoredBlob: ...

    async def writer(self, key: str) -> BlobWriter: ...

    async def delete(self, key: str) -> int: ...

    async def size(self, key: str) -> int | None: ...

    async def stat(self, key: str) -> BlobInfo | None: ...

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]: ...

    def local_path(self, key: str) -> Path | None: ...

    def location(self, key: str) -> tuple[str, str]:
        """The storage (its bucket, without the store's prefix) and the object's whole key there:
        equal for every store that names the same object, however its prefix splits the key."""
        ...

    def read_range(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]: ...

    async def presign(self, key: str, seconds: int) -> str | None: ...

    async def check_writable(self) -> None: ...


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or that object stores spell differently."""
    segments = key.split("/")
    if (
        not key
        or PurePosixPath(key).is_absolute()
        or "\\" in key
        or any(s in ("", ".", "..") for s in segments)
    ):
        raise BadRequest(f"invalid blob key {key!r}")
    return key


def check_range(start: int, end: int) -> None:
    """Reject a byte range [start, end) that is not one."""
    if start < 0 or end < start:
        raise BadRequest(f"invalid byte range [{start}, {end})")


def probe_key() -> str:
    """A key no output uses, for a write probe."""
    return f".vidmesh-probe-{uuid.uuid4().hex}"


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read once in large chunks (blocking: run it in a thread)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_hashing(src: Path, dst: Path) -> str:
    digest = hashlib.sha256()
    with src.open("rb") as reader, dst.open("wb") as writer:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    """Flush a file's data to disk (blocking: run it in a thread)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename into it) durable (blocking: run it in a thread)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staged: Path, target: Path) -> None:
    """Rename a staged file, already synced, into place so that a crash leaves either nothing or
    the whole file under `target`: the folder is synced before the rename (the staged entry)
    and after it (the published name)."""
    _fsync_folder(target.parent)
    os.replace(staged, target)
    _fsync_folder(target.parent)


def _etag(st: os.stat_result) -> str:
    # The ETag aiohttp's FileResponse sends for the same file, so both paths agree.
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


class LocalBlobStore:
    """Blobs as files under one directory (shared by every service on one machine or volume)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.name = f"local:{self.root}"
        self.kind = "local"
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobStore({self.name})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _error(self, exc: OSError, doing: str) -> StoreError:
        """The OSError as a StoreError whose reason a user understands."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StoreError(f"The store {self.name} is full.", details={"errno": exc.errno})
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return StoreError(
                f"The store {self.name} refused to {doing} ({exc.strerror}).",
                retryable=False,
                details={"errno": exc.errno},
            )
        return StoreError(
            f"The store {self.name} could not {doing} ({exc.strerror}).",
            details={"errno": exc.errno},
        )

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def location(self, key: str) -> tuple[str, str]:
        return "local:", str(self._path(key))

    async def put_file(self, key: str, path: Path) -> StoredBlob:
        """Move `path` into the store as `key`, hashing it once (moved, or copied across disks)."""
        return await asyncio.to_thread(self._put_file, key, path)

    def _put_file(self, key: str, path: Path) -> StoredBlob:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                sha = sha256_file(path)
                _fsync_file(path)
                _publish(path, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}{_PARTIAL}")
                try:
                    sha = _copy_hashing(path, partial)  # synced as it is written
                    _publish(partial, target)
                finally:
                    partial.unlink(missing_ok=True)
                path.unlink(missing_ok=True)
            return StoredBlob(key=key, size=target.stat().st_size, sha256=sha)
        except OSError as exc:
            raise self._error(exc, "store the output") from exc

    async def writer(self, key: str) -> BlobWriter:
        """A streaming upload into a `.partial` file, renamed to `key` on close."""
        target = self._path(key)
        partial = target.with_name(f"{target.name}.{uuid.uuid4().hex}{_PARTIAL}")
        try:
            handle = await asyncio.to_thread(_open_partial, partial)
        except OSError as exc:
            raise self._error(exc, "store the output") from exc
        return _LocalWriter(self, key, target, partial, handle)

    async def delete(self, key: str) -> int:
        """Delete a blob; returns the bytes freed (0 when it was not there)."""
        try:
            return await asyncio.to_thread(self._delete, key)
        except OSError as exc:
            raise self._error(exc, "delete a blob") from exc

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
        info = await self.stat(key)
        return None if info is None else info.size

    async def stat(self, key: str) -> BlobInfo | None:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(path.stat)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(exc, "read a blob's size") from exc
        return BlobInfo(key=key, size=st.st_size, modified=st.st_mtime, etag=_etag(st))

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        return await asyncio.to_thread(self._list, prefix)

    def _list(self, prefix: str) -> list[BlobInfo]:
        found: list[BlobInfo] = []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix) or name.endswith(_PARTIAL):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = full.stat()
                    found.append(
                        BlobInfo(key=key, size=st.st_size, modified=st.st_mtime, etag=_etag(st))
                    )
        return found

    async def read_range(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of a blob in chunks of up to 1 MiB (fewer if the blob is shorter)."""
        check_range(start, end)
        path = self._path(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFound(f"The blob {key} is not in the store {self.name}.") from None
        except OSError as exc:
            raise self._error(exc, "read a blob") from exc
        try:
            offset, fd = start, handle.fileno()
            while offset < end:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK, end - offset), offset)
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            handle.close()

    async def presign(self, key: str, seconds: int) -> str | None:
        """None: local blobs are served by the gateway itself (zero-copy)."""
        check_key(key)
        return None

    async def check_writable(self) -> None:
        """Write, read back and delete a small probe file; a StoreError says why not."""
        probe = self.root / f"{probe_key()}{_PARTIAL}"  # `.partial`: never listed as a blob
        try:
            await asyncio.to_thread(_write_probe, probe)
        except OSError as exc:
            raise self._error(exc, "write") from exc

    def wipe(self) -> None:
        """Remove everything (tests and `vidmesh reset`)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)


class _LocalWriter:
    """Writes and hashes chunks into a `.partial` file; close renames it into place."""

    def __init__(
        self, store: LocalBlobStore, key: str, target: Path, partial: Path, handle: BinaryIO
    ) -> None:
        self._store = store
        self._key = key
        self._target = target
        self._partial = partial
        self._handle = handle
        self._digest = hashlib.sha256()
        self._size = 0

    async def write(self, data: bytes) -> None:
        try:
            await asyncio.to_thread(self._write, data)
        except OSError as exc:
            raise self._store._error(exc, "store the output") from exc

    def _write(self, data: bytes) -> None:
        self._handle.write(data)
        self._digest.update(data)
        self._size += len(data)

    async def close(self) -> StoredBlob:
        try:
            await asyncio.to_thread(self._finish)
        except OSError as exc:
            await self.abort()
            raise self._store._error(exc, "store the output") from exc
        return StoredBlob(key=self._key, size=self._size, sha256=self._digest.hexdigest())

    def _finish(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        _publish(self._partial, self._target)

    async def abort(self) -> None:
        await asyncio.to_thread(self._discard)

    def _discard(self) -> None:
        self._handle.close()
        self._partial.unlink(missing_ok=True)


def _open_partial(partial: Path) -> BinaryIO:
    partial.parent.mkdir(parents=True, exist_ok=True)
    return partial.open("xb")


def _write_probe(probe: Path) -> None:
    try:
        with probe.open("xb") as handle:
            handle.write(PROBE_DATA)
            handle.flush()
            os.fsync(handle.fileno())
        if probe.read_bytes() != PROBE_DATA:
            raise OSError(errno.EIO, "the probe file read back differently")
    finally:
        probe.unlink(missing_ok=True)
