"""Storage face: each user's own S3-compatible, GCS, Azure Blob or Alibaba OSS storage (as in
hosted download APIs). The operators' storage summary and cache maintenance are in
`storage_admin.py`.

Every route is served under `/api/user/...`, the download-jobs API's base URL, and at the root
(`/user/...`) where it was first served; both take a bearer token or `x-api-key`.

Credentials are accepted only after a real write and delete with them, stored sealed (AES-GCM
under the operator's key), and never returned.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Handler, Tag, caller
from services.gateway.http import Message, json_response
from services.gateway.state import gateway
from shared.blobs.backends import open_store
from shared.blobs.config import (
    BUCKET_PATTERN,
    ENDPOINT_PATTERN,
    REGION_PATTERN,
    TOKEN_PATTERN,
    StoreConfig,
)
from shared.blobs.users import Slot, UserStore, kind_of, record_key
from shared.errors import BadRequest, NotFound, StoreError

TAG = Tag.STORAGE
# Names, regions, endpoints and credentials go into URLs and signed headers: ASCII only.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=BUCKET_PATTERN)]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=TOKEN_PATTERN)]
Token = Annotated[str, msgspec.Meta(max_length=4096, pattern=TOKEN_PATTERN)]
Region = Annotated[str, msgspec.Meta(max_length=64, pattern=REGION_PATTERN)]
Prefix = Annotated[str, msgspec.Meta(max_length=512, pattern=r"^[^\x00-\x1f\x7f]*$")]
Endpoint = Annotated[str, msgspec.Meta(max_length=512, pattern=ENDPOINT_PATTERN)]


def _route(
    method: str, path: str, *, summary: str, **declared: Any
) -> Callable[[Handler], Handler]:
    """Declare `handler` at `/api{path}` and at `path` (its operation id there ends in
    `_at_root`: ids are unique in the document)."""

    def register(handler: Handler) -> Handler:
        async def at_root(request: web.Request, **kwargs: Any) -> web.StreamResponse:
            return await handler(request, **kwargs)

        at_root.__name__ = f"{handler.__name__}_at_root"
        API.route(method, f"/api{path}", summary=summary, **declared)(handler)
        API.route(method, path, summary=f"{summary} (also at the root)", **declared)(at_root)
        return handler

    return register


class S3Storage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An S3 or S3-compatible bucket (AWS, Cloudflare R2, MinIO, SeaweedFS...)."""

    bucket: Name
    access_key_id: Secret
    secret_access_key: Secret
    session_token: Token = ""
    region: Region = ""
    endpoint: Endpoint = ""
    prefix: Prefix = ""
    virtual_hosted_style: bool = False


class OssStorage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An Alibaba Cloud OSS bucket, through its S3-compatible endpoint."""

    bucket: Name
    endpoint: Annotated[str, msgspec.Meta(min_length=8, max_length=512, pattern=ENDPOINT_PATTERN)]
    access_key_id: Secret
    secret_access_key: Secret
    region: Region = ""
    prefix: Prefix = ""


class GcsStorage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A Google Cloud Storage bucket and a service account's JSON key."""

    bucket: Name
    service_account_key: Annotated[str, msgspec.Meta(min_length=2, max_length=16384)]
    prefix: Prefix = ""


class AzureStorage(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An Azure Blob Storage container, with an account key or a SAS token."""

    account_name: Annotated[str, msgspec.Meta(min_length=3, max_length=64, pattern=REGION_PATTERN)]
    container: Annotated[str, msgspec.Meta(min_length=3, max_length=63, pattern=BUCKET_PATTERN)]
    account_key: Token = ""
    sas_token: Token = ""
    endpoint: Endpoint = ""
    prefix: Prefix = ""


class StorageView(msgspec.Struct, kw_only=True):
    """A configured storage, without its credentials."""

    slot: str
    kind: str
    bucket: str
    prefix: str
    endpoint: str
    region: str
    created_at: datetime
    updated_at: datetime


def _view(record: UserStore) -> StorageView:
    return StorageView(
        slot=record.slot,
        kind=record.kind,
        bucket=record.bucket,
        prefix=record.prefix,
        endpoint=record.endpoint,
        region=record.region,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        updated_at=datetime.fromtimestamp(record.updated_at, UTC),
    )


async def _configure(request: web.Request, slot: Slot, config: StoreConfig) -> web.Response:
    """Check the credentials with a real write and delete, then keep them sealed."""
    gw = gateway(request)
    user_id = caller(request).user_id
    key = record_key(user_id, slot)
    sealed = gw.stores.sealer.seal(config, key)  # refuses at once when no storage key is set
    await gw.stores.check_endpoint(config)  # the caller names the host: keep off our insides
    try:
        await open_store(config).check_writable()
    except StoreError as exc:
        raise BadRequest(f"These credentials were refused: {exc.message}") from None
    now = time.time()
    found = await gw.userstores.get(key)
    record = UserStore(
        user_id=user_id,
        slot=slot,
        kind=kind_of(slot),
        bucket=config.bucket,
        prefix=config.prefix,
        endpoint=config.endpoint,
        region=config.region,
        sealed=sealed,
        created_at=found.value.created_at if found else now,
        updated_at=now,
    )
    if found is None:
        await gw.userstores.create(key, record)
    else:
        await gw.userstores.update(key, record, found.revision)
    gw.stores.forget(key)
    return json_response(_view(record), 201)


def _http(endpoint: str) -> bool:
    return endpoint.startswith("http://")


def _s3(body: S3Storage) -> StoreConfig:
    return StoreConfig(
        kind="s3",
        bucket=body.bucket,
        prefix=body.prefix.strip("/"),
        endpoint=body.endpoint,
        region=body.region or "us-east-1",
        access_key_id=body.access_key_id,
        secret_access_key=body.secret_access_key,
        session_token=body.session_token,
        virtual_hosted_style=body.virtual_hosted_style,
        allow_http=_http(body.endpoint),
    )


@_route(
    "POST",
    "/user/s3",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Use your S3-compatible bucket for sources and destinations",
    body=S3Storage,
    response=StorageView,
)
async def configure_s3(request: web.Request, body: S3Storage) -> web.Response:
    return await _configure(request, "s3", _s3(body))


@_route(
    "POST",
    "/user/bucket",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Use your S3 bucket (the older name of POST /user/s3)",
    body=S3Storage,
    response=StorageView,
)
async def configure_bucket(request: web.Request, body: S3Storage) -> web.Response:
    return await _configure(request, "s3", _s3(body))


@_route(
    "POST",
    "/user/oss",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Use your Alibaba Cloud OSS bucket (S3-compatible endpoint)",
    body=OssStorage,
    response=StorageView,
)
async def configure_oss(request: web.Request, body: OssStorage) -> web.Response:
    config = StoreConfig(
        kind="s3",
        bucket=body.bucket,
        prefix=body.prefix.strip("/"),
        endpoint=body.endpoint,
        region=body.region or "us-east-1",
        access_key_id=body.access_key_id,
        secret_access_key=body.secret_access_key,
        virtual_hosted_style=True,
        allow_http=_http(body.endpoint),
    )
    return await _configure(request, "oss", config)


@_route(
    "POST",
    "/user/gcs",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Use your Google Cloud Storage bucket",
    body=GcsStorage,
    response=StorageView,
)
async def configure_gcs(request: web.Request, body: GcsStorage) -> web.Response:
    config = StoreConfig(
        kind="gcs",
        bucket=body.bucket,
        prefix=body.prefix.strip("/"),
        service_account_key=body.service_account_key,
    )
    return await _configure(request, "gcs", config)


@_route(
    "POST",
    "/user/blob",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Use your Azure Blob Storage container",
    body=AzureStorage,
    response=StorageView,
)
async def configure_blob(request: web.Request, body: AzureStorage) -> web.Response:
    if not body.account_key and not body.sas_token:
        raise BadRequest("Give an `account_key` or a `sas_token`.")
    config = StoreConfig(
        kind="azure",
        bucket=body.container,
        prefix=body.prefix.strip("/"),
        endpoint=body.endpoint,
        account_name=body.account_name,
        account_key=body.account_key,
        sas_token=body.sas_token,
        allow_http=_http(body.endpoint),
    )
    return await _configure(request, "blob", config)


@_route(
    "GET",
    "/user/storage",
    access=Access.USER,
    tag=TAG,
    summary="Your configured storage (never the credentials)",
    response=list[StorageView],
)
async def list_storage(request: web.Request) -> web.Response:
    gw = gateway(request)
    user_id = caller(request).user_id
    found = []
    for slot in ("s3", "gcs", "blob", "oss"):
        record = await gw.userstores.get(record_key(user_id, slot))
        if record is not None:
            found.append(_view(record.value))
    return json_response(found)


async def _remove(request: web.Request, slot: str) -> web.Response:
    gw = gateway(request)
    key = record_key(caller(request).user_id, slot)
    if await gw.userstores.get(key) is None:
        raise NotFound(f"You have no {slot} storage configured.")
    await gw.userstores.delete(key)
    gw.stores.forget(key)
    return json_response(Message(message=f"{slot} storage removed"))


def _remover(slot: str, path_slot: str) -> None:
    async def remove(request: web.Request) -> web.Response:
        return await _remove(request, slot)

    remove.__name__ = f"remove_{path_slot}"
    _route(
        "DELETE",
        f"/user/{path_slot}",
        access=Access.USER,
        tag=TAG,
        summary=f"Forget your {path_slot} storage",
        response=Message,
    )(remove)


for _slot, _path in (
    ("s3", "s3"),
    ("s3", "bucket"),
    ("gcs", "gcs"),
    ("blob", "blob"),
    ("oss", "oss"),
):
    _remover(_slot, _path)
