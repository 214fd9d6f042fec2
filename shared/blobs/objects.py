"""Blob stores in object storage, all through obstore's one async client: S3-compatible stores
(AWS S3, Cloudflare R2, MinIO, SeaweedFS, Alibaba OSS), Google Cloud Storage and Azure Blob.

Uploads are multipart and hash on the way; reads are ranged and streamed; signed URLs come from
obstore (SigV4, GCS V4, Azure SAS). Every backend error becomes a `StoreError` whose one-sentence
reason names the store by its safe name and says whether retrying may help.

Never `repr()` or log an obstore store object (an AzureStore's repr panics inside obstore).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import mimetypes
from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec
import obstore as obs
import structlog
from obstore.exceptions import BaseError
from obstore.store import AzureStore, GCSStore, S3Store

from shared.blobs.config import StoreConfig, store_name
from shared.blobs.errors import first_line_without_query, http_status, is_absent, store_error
from shared.blobs.signed_reads import SignedReads
from shared.blobs.store import (
    CHUNK,
    PROBE_DATA,
    BlobInfo,
    BlobWriter,
    StoredBlob,
    check_key,
    check_range,
    probe_key,
)
from shared.errors import BadRequest, NotFound, StoreError

if TYPE_CHECKING:
    from obstore import AsyncWritableFile, ObjectMeta
    from obstore.store import AzureCredential, S3Credential

    Client = S3Store | GCSStore | AzureStore

log = structlog.get_logger(__name__)
C = TypeVar("C")

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # the longest S3 SigV4 allows
_HASH_IN_THREAD = 256 * 1024  # hashing a chunk this big would hold the event loop too long
_UPLOAD_CONCURRENCY = 4
# A signed URL the process reads itself: as long as S3 tolerates clocks apart (15 minutes)
_SIGNED_READ_SECONDS = 15 * 60


def _quoted(etag: str) -> str:
    """An ETag as HTTP spells it (Azure lists them without the quotes)."""
    return etag if not etag or etag.startswith(('"', "W/")) else f'"{etag}"'


def build_client(config: StoreConfig) -> Client:
    """The obstore client for a remote configuration, every relevant setting given explicitly.

    obstore's constructors also read AWS_*/GOOGLE_*/AZURE_* variables; passing each setting we own
    explicitly, and credentials as providers, keeps the environment from changing them. Raises
    StoreError (not retryable).
    """
    client_options: dict[str, Any] = {
        "allow_http": config.allow_http,
        "connect_timeout": timedelta(seconds=5),
        "read_timeout": timedelta(minutes=5),
        "timeout": timedelta(hours=6),  # a whole request: long streamed reads of big outputs
    }
    retry = {"max_retries": config.max_retries, "retry_timeout": timedelta(minutes=3)}
    common: dict[str, Any] = {
        "client_options": client_options,
        "retry_config": retry,
        "skip_signature": False,
    }
    if config.endpoint:
        common["base_url" if config.kind == "gcs" else "endpoint"] = config.endpoint
    try:
        match config.kind:
            case "s3":
                return S3Store(config.bucket, **common, **_s3_settings(config))
            case "gcs":
                if config.service_account_key:
                    common["service_account_key"] = config.service_account_key
                return GCSStore(config.bucket, **common)
            case "azure":
                return AzureStore(config.bucket, **common, **_azure_settings(config))
            case _:
                raise BadRequest(f"{config.kind!r} is not an object store kind.")
    except (BaseError, ValueError, TypeError) as exc:
        raise StoreError(
            f"The store {store_name(config)} is not configured correctly: its credentials or "
            "endpoint could not be used.",
            retryable=False,
            details={"error": type(exc).__name__},
        ) from None  # the message may quote part of a key


def _s3_settings(config: StoreConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "region": config.region or "us-east-1",
        "virtual_hosted_style_request": config.virtual_hosted_style,
        "request_payer": False,
        "unsigned_payload": False,
    }
    if config.access_key_id:
        # As a provider: no AWS_* variable (a stray AWS_SESSION_TOKEN) is mixed into the keys.
        credential: S3Credential = {
            "access_key_id": config.access_key_id,
            "secret_access_key": config.secret_access_key,
            "token": config.session_token or None,
            "expires_at": None,
        }
        settings["credential_provider"] = _Static(credential)
    return settings


class _Static(Generic[C]):
    """Configured credentials handed to obstore as a provider, which takes precedence over
    anything obstore would read from the environment."""

    def __init__(self, credential: C) -> None:
        self._credential = credential

    def __call__(self) -> C:
        return self._credential

    def __repr__(self) -> str:
        return "StaticCredentials(***)"


def _azure_settings(config: StoreConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"account_name": config.account_name, "use_emulator": False}
    credential: AzureCredential | None = None
    if config.account_key:
        credential = {"access_key": config.account_key, "expires_at": None}
    elif config.sas_token:
        credential = {"sas_token": config.sas_token.removeprefix("?"), "expires_at": None}
    if credential is not None:
        # As a provider: an AZURE_STORAGE_ACCOUNT_KEY in the environment would otherwise win
        # over a configured SAS token (measured), signing a user's requests with ours.
        settings["credential_provider"] = _Static(credential)
    return settings


class ObjectBlobStore:
    """A blob store in a bucket (S3, GCS) or container (Azure), under an optional key prefix."""

    def __init__(self, config: StoreConfig, reads: SignedReads | None = None) -> None:
        self.name = store_name(config)
        # the bucket itself, whatever part of it this store's prefix names
        self._bucket = store_name(msgspec.structs.replace(config, prefix=""))
        self.kind: str = config.kind
        self._client = build_client(config)
        self._prefix = config.prefix.strip("/")
        self._part_size = config.part_size_mib << 20
        # Signing needs the account key; a SAS-token store would have to hand out its own token.
        self._can_sign = not (config.kind == "azure" and not config.account_key)
        self._max_retries = config.max_retries
        # S3 ranges read over a signed URL in this event loop (see shared.blobs.signed_reads)
        self._reads = reads if config.kind == "s3" else None

    def __repr__(self) -> str:
        return f"ObjectBlobStore({self.name})"

    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self._prefix}/{key}" if self._prefix else key

    def _relative(self, path: str) -> str:
        return path[len(self._prefix) + 1 :] if self._prefix else path

    def local_path(self, key: str) -> Path | None:
        check_key(key)
        return None

    def location(self, key: str) -> tuple[str, str]:
        return self._bucket, self._full(key)

    async def put_file(self, key: str, path: Path) -> StoredBlob:
        """Upload a file in parts, streaming and hashing it once; the file itself is left in
        place (the caller removes it)."""
        writer = await self.writer(key)
        try:
            handle = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            await writer.abort()
            raise StoreError(
                f"The output for {self.name} could not be read ({exc.strerror}).",
                retryable=False,
            ) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, 4 * CHUNK):
                await writer.write(chunk)
        except BaseException:
            await asyncio.shield(writer.abort())
            raise
        finally:
            handle.close()
        return await writer.close()

    async def writer(self, key: str) -> BlobWriter:
        """A multipart upload that hashes what it sends; parts go out while writing goes on."""
        full = self._full(key)
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        upload = obs.open_writer_async(
            self._client,
            full,
            attributes={"Content-Type": content_type},
            buffer_size=self._part_size,
            max_concurrency=_UPLOAD_CONCURRENCY,
        )
        return _ObjectWriter(self.name, key, upload)

    async def delete(self, key: str) -> int:
        """Delete a blob; returns the bytes freed (0 when it was not there)."""
        info = await self.stat(key)
        if info is None:
            return 0
        try:
            await obs.delete_async(self._client, self._full(key))
        except (BaseError, OSError) as exc:
            if is_absent(exc):
                return 0
            raise store_error(self.name, exc, "delete a blob") from exc
        return info.size

    async def size(self, key: str) -> int | None:
        info = await self.stat(key)
        return None if info is None else info.size

    async def stat(self, key: str) -> BlobInfo | None:
        """The blob's size, time and ETag; None when absent (a HEAD cannot tell a missing
        bucket from a missing key: check_writable can)."""
        try:
            meta = await obs.head_async(self._client, self._full(key))
        except (BaseError, OSError) as exc:
            if is_absent(exc):
                return None
            raise store_error(self.name, exc, "read a blob's size") from exc
        return self._info(meta)

    def _info(self, meta: ObjectMeta) -> BlobInfo:
        return BlobInfo(
            key=self._relative(meta["path"]),
            size=meta["size"],
            modified=meta["last_modified"].timestamp(),
            etag=_quoted(meta["e_tag"] or ""),
        )

    async def list_blobs(self, prefix: str = "") -> list[BlobInfo]:
        """Blobs whose key starts with `prefix` (any string, not only whole folders)."""
        if ".." in prefix.split("/"):
            raise BadRequest(f"invalid blob prefix {prefix!r}")
        wanted = f"{self._prefix}/{prefix}" if self._prefix else prefix
        folder = wanted.rpartition("/")[0]  # obstore lists whole path segments only
        found: list[BlobInfo] = []
        try:
            async for batch in obs.list(self._client, prefix=folder or None, chunk_size=1000):
                for meta in batch:
                    info = self._info(meta)
                    if info.key.startswith(prefix) and not info.key.startswith(".vidmesh-probe-"):
                        found.append(info)
        except (BaseError, OSError) as exc:
            if is_absent(exc):
                return found
            raise store_error(self.name, exc, "list blobs") from exc
        return found

    async def read_range(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Bytes [start, end) of a blob, streamed, never all in memory. A range past the end
        yields what there is. An S3 store given SignedReads reads it in this event loop over a
        signed URL, chunks as they arrive; otherwise obstore streams it in chunks of 1 MiB."""
        check_range(start, end)
        full = self._full(key)
        if start == end:
            return
        if self._reads is not None:
            url = await self._sign(full, _SIGNED_READ_SECONDS, "read a blob")
            read = self._reads.read(self.name, key, url, start, end, max_retries=self._max_retries)
            async with contextlib.aclosing(read):
                async for chunk in read:
                    yield chunk
            return
        try:
            result = await obs.get_async(self._client, full, options={"range": (start, end)})
        except (BaseError, OSError) as exc:
            if is_absent(exc):
                raise NotFound(f"The blob {key} is not in the store {self.name}.") from None
            if http_status(str(exc)) == 416:
                return  # the range starts at or after the end
            raise store_error(self.name, exc, "read a blob") from exc
        try:
            async for chunk in result.stream(min_chunk_size=CHUNK):
                yield chunk
        except (BaseError, OSError) as exc:
            raise store_error(self.name, exc, "read a blob") from exc

    async def presign(self, key: str, seconds: int) -> str | None:
        """A GET URL valid for `seconds` (None when this store's credentials cannot sign)."""
        full = self._full(key)
        if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
            raise BadRequest(f"A signed URL lasts 1 to {MAX_PRESIGN_SECONDS} seconds.")
        if not self._can_sign:
            return None
        return await self._sign(full, seconds, "sign a URL")

    async def _sign(self, full: str, seconds: int, doing: str) -> str:
        try:
            return await obs.sign_async(self._client, "GET", full, timedelta(seconds=seconds))
        except (BaseError, OSError) as exc:
            raise store_error(self.name, exc, doing) from exc

    async def check_writable(self) -> None:
        """Write, read back and delete a small probe object; a StoreError says why not."""
        full = self._full(probe_key())
        try:
            await obs.put_async(self._client, full, PROBE_DATA)
            meta = await obs.head_async(self._client, full)
            await obs.delete_async(self._client, full)
        except (BaseError, OSError) as exc:
            raise store_error(self.name, exc, "write") from exc
        if meta["size"] != len(PROBE_DATA):
            raise StoreError(f"The store {self.name} kept a probe object at the wrong size.")


class _ObjectWriter:
    """Hashes every chunk once and hands it to obstore's buffered multipart writer."""

    def __init__(self, name: str, key: str, upload: AsyncWritableFile) -> None:
        self._name = name
        self._key = key
        self._upload = upload
        self._digest = hashlib.sha256()
        self._size = 0
        self._done = False

    async def write(self, data: bytes) -> None:
        if len(data) >= _HASH_IN_THREAD:
            await asyncio.to_thread(self._digest.update, data)
        else:
            self._digest.update(data)
        self._size += len(data)
        try:
            await self._upload.write(data)
        except (BaseError, OSError) as exc:
            await self.abort()
            raise store_error(self._name, exc, "store the output") from exc

    async def close(self) -> StoredBlob:
        self._done = True
        try:
            await self._upload.close()
        except (BaseError, OSError) as exc:
            raise store_error(self._name, exc, "store the output") from exc
        return StoredBlob(key=self._key, size=self._size, sha256=self._digest.hexdigest())

    async def abort(self) -> None:
        """Abort the multipart upload (uploaded parts are discarded); best effort, idempotent."""
        if self._done:
            return
        self._done = True
        try:
            # obstore aborts a writer only through its context-manager exit with an exception.
            await self._upload.__aexit__(_Aborted, _Aborted(), None)
        except (BaseError, OSError) as exc:
            error = first_line_without_query(str(exc))
            log.warning("blob.abort_failed", store=self._name, key=self._key, error=error)


class _Aborted(Exception):
    """Marks an upload abandoned on purpose."""
