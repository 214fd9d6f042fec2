"""Where finished outputs are stored: one typed configuration for every blob-store backend.

A store is named by a URL without credentials (`s3://bucket/prefix`, `gs://...`, `az://...`,
`file:///abs/path`); `parse_store_url` turns it into a `StoreConfig` and the caller fills in the
credentials from its own settings with `msgspec.structs.replace`. `shared.blobs.backends` opens
the store a configuration names; this module imports no backend. Nothing here reads the
environment. Secrets never appear in `store_name`, `redacted` or the config's `repr`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from shared.errors import BadRequest

StoreKind = Literal["local", "s3", "gcs", "azure"]

SECRET_FIELDS = (
    "secret_access_key",
    "session_token",
    "service_account_key",
    "account_key",
    "sas_token",
)

_SCHEMES: dict[str, StoreKind] = {"s3": "s3", "gs": "gcs", "az": "azure"}


# No forbid_unknown_fields: configurations are kept (sealed) and must stay readable by older code.
class StoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach a blob store: a local directory, an S3-compatible bucket (AWS S3, Cloudflare
    R2, MinIO, SeaweedFS, Alibaba OSS), a Google Cloud Storage bucket or an Azure Blob container.

    Fields that do not apply to `kind` are ignored. Credentials are given explicitly; when they
    are left empty the backend's own default chain (instance metadata, workload identity) is used.
    """

    kind: StoreKind
    path: str = ""
    """Local: the absolute directory that holds the blobs."""
    bucket: str = ""
    """S3/GCS: the bucket; Azure: the container."""
    prefix: str = ""
    """Key prefix inside the bucket: "" or "a/b" (no leading or trailing slash)."""
    endpoint: str = ""
    """S3-compatible endpoint (R2, MinIO, SeaweedFS, OSS), Azure endpoint (Azurite), GCS base
    URL; "" for the provider's own."""
    region: str = ""
    """S3 region; "" means us-east-1 (R2 uses "auto")."""
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    virtual_hosted_style: bool = False
    """S3: address the bucket as a host name (OSS needs it; R2, MinIO, SeaweedFS use path style)."""
    service_account_key: str = ""
    """GCS: the service account key, the JSON text itself (not a path)."""
    account_name: str = ""
    """Azure: the storage account."""
    account_key: str = ""
    """Azure: the shared key (base64)."""
    sas_token: str = ""
    """Azure: a shared access signature, instead of the account key (cannot presign)."""
    allow_http: bool = False
    """Allow plain HTTP (test servers and in-cluster endpoints)."""
    max_retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 3
    """Retries of one request on network trouble and 5xx answers, with exponential backoff."""
    part_size_mib: Annotated[int, msgspec.Meta(ge=5, le=4096)] = 16
    """Multipart upload part size; also the most a streaming upload buffers per part in flight."""

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in redacted(self).items())
        return f"StoreConfig({shown})"

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(redacted(self).items())


def redacted(config: StoreConfig) -> dict[str, Any]:
    """The configuration as a dict for logs and API answers, secrets replaced by "***"."""
    shown: dict[str, Any] = msgspec.structs.asdict(config)
    for name in SECRET_FIELDS:
        if shown[name]:
            shown[name] = "***"
    return shown


def store_name(config: StoreConfig) -> str:
    """The store's safe name for logs and summaries: a URL without credentials."""
    tail = f"/{config.prefix}" if config.prefix else ""
    match config.kind:
        case "local":
            return f"local:{config.path}"
        case "s3":
            return f"s3://{config.bucket}{tail}"
        case "gcs":
            return f"gs://{config.bucket}{tail}"
        case "azure":
            return f"az://{config.account_name}/{config.bucket}{tail}"


def parse_store_url(url: str) -> StoreConfig:
    """A configuration from a store URL without credentials.

    `file:///abs/path` or `/abs/path` -> local; `s3://bucket/prefix` -> S3; `gs://bucket/prefix`
    -> GCS; `az://container/prefix` -> Azure. Raises BadRequest for anything else.
    """
    if url.startswith("/"):
        return StoreConfig(kind="local", path=_local_path(url, url))
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise BadRequest(f"A file store URL names no remote host: {url!r}.")
        return StoreConfig(kind="local", path=_local_path(unquote(parts.path), url))
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise BadRequest(
            f"Unknown store URL {url!r}: use file:///path, s3://bucket, gs://bucket or "
            "az://container (credentials go in the settings, not in the URL)."
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise BadRequest("A store URL carries no credentials, query or fragment.")
    if not parts.netloc:
        raise BadRequest(f"The store URL {url!r} names no bucket.")
    prefix = unquote(parts.path).strip("/")
    config = StoreConfig(kind=kind, bucket=parts.netloc, prefix=prefix)
    check_config(config, need_credentials=False)
    return config


# What may go into a URL's host or path segment, a region, or a credential header: printable
# ASCII only. obstore's signer panics on anything else instead of refusing it.
BUCKET_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
REGION_PATTERN = r"^[A-Za-z0-9_-]*$"
ENDPOINT_PATTERN = r"^(https?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[!-~]*)?)?$"
TOKEN_PATTERN = r"^[!-~]*$"
_ASCII_FIELDS = {
    "bucket": BUCKET_PATTERN,
    "region": REGION_PATTERN,
    "endpoint": ENDPOINT_PATTERN,
    "account_name": REGION_PATTERN,
    "access_key_id": TOKEN_PATTERN,
    "secret_access_key": TOKEN_PATTERN,
    "session_token": TOKEN_PATTERN,
    "account_key": TOKEN_PATTERN,
    "sas_token": TOKEN_PATTERN,
}

_SHOWN = ("bucket", "region", "endpoint", "account_name")


def check_config(config: StoreConfig, *, need_credentials: bool = True) -> None:
    """Raise BadRequest, naming the field, when the configuration cannot work."""
    if config.kind == "local":
        if not PurePosixPath(config.path).is_absolute():
            raise BadRequest(f"A local store needs an absolute path, not {config.path!r}.")
        return
    if not config.bucket:
        raise BadRequest(f"A {config.kind} store needs a bucket (container for Azure).")
    if "/" in config.bucket:
        raise BadRequest(f"A bucket name has no slash: {config.bucket!r}.")
    for name, pattern in _ASCII_FIELDS.items():
        value = getattr(config, name)
        if value and not re.fullmatch(pattern, value):
            shown = f" {value!r}" if name in _SHOWN else ""
            raise BadRequest(
                f"The store's {name}{shown} has characters it cannot have "
                f"(it must match {pattern}).",
                details={"field": name},
            )
    if config.endpoint:
        try:
            parts = urlsplit(config.endpoint)
            parts.port  # noqa: B018 (raises on a port out of range)
        except ValueError:
            raise BadRequest(
                f"The store endpoint {config.endpoint!r} is not a valid URL.",
                details={"field": "endpoint"},
            ) from None
    if any(ord(c) < 0x20 or c == "\x7f" for c in config.prefix):
        raise BadRequest("The store prefix has control characters.", details={"field": "prefix"})
    if config.prefix:
        segments = config.prefix.split("/")
        if config.prefix.startswith("/") or any(s in ("", ".", "..") for s in segments):
            raise BadRequest(f"The store prefix {config.prefix!r} is not a clean relative path.")
    if config.endpoint and not config.endpoint.startswith(("http://", "https://")):
        raise BadRequest(f"The store endpoint must be an http(s) URL, not {config.endpoint!r}.")
    if config.endpoint.startswith("http://") and not config.allow_http:
        raise BadRequest("The store endpoint uses plain http: set allow_http to allow it.")
    if config.kind == "s3" and bool(config.access_key_id) != bool(config.secret_access_key):
        raise BadRequest("An S3 store needs both access_key_id and secret_access_key, or neither.")
    if config.kind == "azure":
        if not config.account_name and need_credentials:
            raise BadRequest("An Azure store needs account_name.")
        if config.account_key and config.sas_token:
            raise BadRequest("An Azure store takes account_key or sas_token, not both.")


def _local_path(path: str, url: str) -> str:
    if not path.startswith("/"):
        raise BadRequest(f"A local store URL needs an absolute path: {url!r}.")
    return path
