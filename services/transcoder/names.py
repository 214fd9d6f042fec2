"""Object names in users' storage: an output lands under the name its job asked for
(`destination.filename`) unless another rendition was given that name in the same storage first;
then under that name made its own (`movie-<rendition key>.mp4`), so no job's object is ever
written over by another's. A name is given once, by a create-only KV write keyed by the object
itself: its bucket and its whole key there (a store's prefix is part of the key, so two users'
stores of one bucket under overlapping prefixes name each object once); downloads still offer the
name the job asked for."""

from __future__ import annotations

import hashlib
import time
from pathlib import PurePosixPath

import structlog

from services.transcoder.attempt import TranscodeFailed
from shared.blobs.store import BlobStore
from shared.blobs.users import Stores
from shared.errors import StoreError
from shared.messages.records import OutputNameClaim
from shared.messages.work import JoinWork, TranscodeWork
from shared.nats.kv import Stale, TypedKV
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")


class OutputNames:
    """Gives object names in users' storage to renditions, each name once."""

    def __init__(self, claims: TypedKV[OutputNameClaim]) -> None:
        self.claims = claims

    async def target(
        self,
        stores: Stores,
        work: TranscodeWork | JoinWork,
        rendition: str,
        extension: str,
        service_key: str,
    ) -> tuple[str, BlobStore, str]:
        """Where an attempt's output goes: (store name, store, key) in the user's destination, or
        `service_key` in the service store."""
        if work.destination is None:
            return "", stores.service, service_key
        try:
            store = await stores.get(work.destination.store)
        except StoreError as exc:
            raise TranscodeFailed(
                JobError(code="store_failed", reason=exc.message, retryable=False)
            ) from exc
        name = work.output_name or f"{rendition[:16]}.{extension}"
        prefix = work.destination.prefix.strip("/")
        wanted = f"{prefix}/{name}" if prefix else name
        # another job's object under the same name is never written over
        key = await self.claim(store, wanted, rendition)
        return work.destination.store, store, key

    async def claim(self, store: BlobStore, key: str, rendition: str) -> str:
        """The object key rendition `rendition` writes to in `store`: `key`, or `key` with the
        rendition's key added when another rendition has that object already."""
        for candidate in (key, _own(key, rendition[:12]), _own(key, rendition)):
            if await self._take(store, candidate, rendition):
                if candidate != key:
                    log.info("output.renamed", wanted=key, key=candidate)
                return candidate
        reason = f"Every name tried for the output {key!r} in your storage is taken."
        raise TranscodeFailed(JobError(code="store_failed", reason=reason, retryable=False))

    async def _take(self, store: BlobStore, key: str, rendition: str) -> bool:
        """Whether the object `key` names in `store` is now this rendition's (given now, or
        earlier to it)."""
        bucket, whole_key = store.location(key)
        record_key = hashlib.sha256(f"{bucket}\n{whole_key}".encode()).hexdigest()[:40]
        claim = OutputNameClaim(store=bucket, key=whole_key, rendition=rendition, at=time.time())
        try:
            await self.claims.create(record_key, claim)
            return True
        except Stale:
            held = await self.claims.get(record_key)
            return held is not None and held.value.rendition == rendition


def _own(key: str, tag: str) -> str:
    """`folder/movie.mp4` as `folder/movie-<tag>.mp4`."""
    path = PurePosixPath(key)
    return str(path.with_name(f"{path.stem}-{tag}{path.suffix}"))
