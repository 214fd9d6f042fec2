"""Which blob store an output lives in: the service's own, or a user's storage.

A store reference is "" (the service store) or "user:<user id>:<slot>", where the slot is one of
the user's storage configurations (s3, gcs, blob, oss). Users' credentials are kept sealed with
AES-256-GCM under the operator's storage key, bound to their user and slot.
"""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.blobs.backends import open_store
from shared.blobs.config import StoreConfig, parse_store_url
from shared.blobs.signed_reads import SignedReads
from shared.blobs.store import BlobStore
from shared.config import CommonSettings
from shared.errors import BadRequest, NotConfigured, StoreError
from shared.nats.kv import TypedKV
from shared.outbound import check_url_resolved, policy_for

Slot = Literal["s3", "gcs", "blob", "oss"]
SLOTS: tuple[Slot, ...] = ("s3", "gcs", "blob", "oss")
# Object URIs a job may name as its source, and the slot whose credentials read them.
SOURCE_SCHEMES: dict[str, Slot] = {"s3": "s3", "oss": "oss", "gs": "gcs", "az": "blob"}
_KIND: dict[Slot, str] = {"s3": "s3", "oss": "s3", "gcs": "gcs", "blob": "azure"}
SERVICE = ""


class UserStore(msgspec.Struct, frozen=True, kw_only=True):
    """A user's own storage (key: "<user id>.<slot>"); the credentials are sealed."""

    user_id: str
    slot: Slot
    kind: str
    bucket: str
    prefix: str = ""
    endpoint: str = ""
    region: str = ""
    sealed: str
    created_at: float
    updated_at: float


def user_ref(user_id: str, slot: str) -> str:
    return f"user:{user_id}:{slot}"


def parse_ref(ref: str) -> tuple[str, str] | None:
    """(user id, slot) of a user store reference; None for the service store."""
    if not ref:
        return None
    _, user_id, slot = ref.split(":", 2)
    return user_id, slot


def record_key(user_id: str, slot: str) -> str:
    return f"{user_id}.{slot}"


def kind_of(slot: Slot) -> str:
    return _KIND[slot]


class Sealer:
    """AES-256-GCM with the operator's key; each secret is bound to its user and slot."""

    def __init__(self, key: str) -> None:
        self.configured = bool(key)
        self._aead: AESGCM | None = None
        if key:
            try:
                raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise SystemExit("VIDMESH_STORAGE_KEY must be 32 bytes, base64-encoded.")
            self._aead = AESGCM(raw)

    def _require(self) -> AESGCM:
        if self._aead is None:
            raise NotConfigured(
                "Per-user storage is not configured on this server (set VIDMESH_STORAGE_KEY)."
            )
        return self._aead

    def seal(self, config: StoreConfig, binding: str) -> str:
        nonce = os.urandom(12)
        sealed = self._require().encrypt(nonce, msgspec.json.encode(config), binding.encode())
        return base64.b64encode(nonce + sealed).decode()

    def unseal(self, token: str, binding: str) -> StoreConfig:
        raw = base64.b64decode(token)
        try:
            plain = self._require().decrypt(raw[:12], raw[12:], binding.encode())
        except InvalidTag:
            raise StoreError(
                "Stored credentials could not be opened with this storage key."
            ) from None
        return msgspec.json.decode(plain, type=StoreConfig)


def new_storage_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def service_config(settings: CommonSettings) -> StoreConfig:
    """The service store's configuration, from the settings."""
    if not settings.store or settings.store.startswith("file://") or settings.store.startswith("/"):
        path = settings.store.removeprefix("file://") if settings.store else ""
        folder = path or settings.blob_dir or str(Path(settings.data_dir) / "blobs")
        return StoreConfig(kind="local", path=folder)
    config = parse_store_url(settings.store)
    return msgspec.structs.replace(
        config,
        endpoint=settings.store_endpoint,
        region=settings.store_region,
        access_key_id=settings.store_access_key_id,
        secret_access_key=settings.store_secret_access_key,
        session_token=settings.store_session_token,
        virtual_hosted_style=settings.store_virtual_hosted_style,
        service_account_key=settings.store_service_account_key,
        account_name=settings.store_account_name,
        account_key=settings.store_account_key,
        sas_token=settings.store_sas_token,
        allow_http=settings.store_endpoint.startswith("http://"),
    )


class Stores:
    """Opens (and keeps) the service store and users' stores by reference. Their S3 ranges are
    read through one connection pool, opened on the first read; `close()` closes it."""

    def __init__(
        self, settings: CommonSettings, records: TypedKV[UserStore] | None, sealer: Sealer
    ) -> None:
        self.reads = SignedReads()
        self.service: BlobStore = open_store(service_config(settings), self.reads)
        self.records = records
        self.sealer = sealer
        # users name their endpoints: no Jellyfin exception here, only the operator's networks
        self.policy = policy_for(settings.outbound_allow)
        self._opened: dict[str, tuple[float, BlobStore]] = {}

    async def check_endpoint(self, config: StoreConfig) -> None:
        """Refuse (OutboundRefused, a 400) a user's endpoint the outbound policy refuses, as
        written or as its name resolves now."""
        if config.endpoint:
            await check_url_resolved(config.endpoint, self.policy, what="`endpoint`")

    async def _open_user(self, config: StoreConfig) -> BlobStore:
        """A user's store, its endpoint checked again (a name may resolve elsewhere by now)."""
        try:
            await self.check_endpoint(config)
        except BadRequest as exc:
            raise StoreError(exc.message, retryable=False) from None
        return open_store(config, self.reads)

    async def close(self) -> None:
        await self.reads.close()

    def forget(self, key: str) -> None:
        """Drop a user's opened store (its configuration changed); `key` is its record key."""
        user_id, _, slot = key.rpartition(".")
        self._opened.pop(user_ref(user_id, slot), None)

    async def get(self, ref: str) -> BlobStore:
        """The store a reference names; a user's store is re-read after a minute."""
        user = parse_ref(ref)
        if user is None:
            return self.service
        cached = self._opened.get(ref)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        user_id, slot = user
        if self.records is None:
            raise StoreError("User storage is not available to this service.")
        found = await self.records.get(record_key(user_id, slot))
        if found is None:
            raise StoreError(f"The {slot} storage this job used is no longer configured.")
        config = self.sealer.unseal(found.value.sealed, record_key(user_id, slot))
        store = await self._open_user(config)
        self._opened[ref] = (time.monotonic() + 60, store)
        return store

    async def object_source(self, owner: str, uri: str, seconds: int) -> str:
        """A signed URL ffmpeg reads an object source through (never a full download)."""
        scheme, _, rest = uri.partition("://")
        slot = SOURCE_SCHEMES.get(scheme)
        bucket, _, key = rest.partition("/")
        if slot is None or not bucket or not key:
            raise BadRequest(f"{uri!r} is not an object URI this server can read.")
        store = await self._for_bucket(owner, slot, bucket)
        url = await store.presign(key, seconds)
        if url is None:
            raise StoreError(f"The {slot} storage cannot sign URLs for ffmpeg to read.")
        return url

    async def _for_bucket(self, owner: str, slot: str, bucket: str) -> BlobStore:
        if self.records is None:
            raise StoreError("User storage is not available to this service.")
        found = await self.records.get(record_key(owner, slot))
        if found is None:
            raise BadRequest(
                f"Configure your {slot} storage (POST /api/user/{slot}) to read {slot} sources."
            )
        config = self.sealer.unseal(found.value.sealed, record_key(owner, slot))
        return await self._open_user(msgspec.structs.replace(config, bucket=bucket, prefix=""))
