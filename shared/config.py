"""Typed settings, read once by an entry point from the environment.

Every field `foo_bar` of a settings Struct is read from `VIDMESH_FOO_BAR`. Some fields also accept
the environment names of the Streamyfin optimize-server (`MAX_CONCURRENT_JOBS`, `JELLYFIN_URL`,
...), so its users can switch without renaming anything; the `VIDMESH_` name wins when both are set.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import msgspec

PREFIX = "VIDMESH_"

# field name -> the Streamyfin optimize-server's own variable name
ALIASES: dict[str, str] = {
    "max_concurrent_jobs": "MAX_CONCURRENT_JOBS",
    "max_cached_per_user": "MAX_CACHED_PER_USER",
    "time_to_keep_files": "TIME_TO_KEEP_FILES",
    "remove_file_after_right_download": "REMOVE_FILE_AFTER_RIGHT_DOWNLOAD",
    "jellyfin_url": "JELLYFIN_URL",
    "port": "PORT",
}

SECRET_MARKERS = ("password", "secret", "token", "key", "invite")


class CommonSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings every process shares."""

    nats_url: str = "nats://127.0.0.1:4222"
    # Prefix of every subject, stream and bucket; lets several deployments share one NATS.
    namespace: str = "vidmesh"
    log_level: str = "info"
    # "auto": JSON when stderr is not a terminal, console otherwise.
    log_format: str = "auto"
    # JetStream replicas for streams and buckets (3 on a clustered NATS).
    replicas: int = 1
    # Seconds between pings to the NATS server; two unanswered pings mean it is gone (a frozen or
    # cut-off node) and the client moves to another server of the cluster.
    nats_ping_interval: Annotated[float, msgspec.Meta(gt=0, le=120)] = 5.0
    # How long a JetStream request is sent again while the cluster elects a new leader or the
    # client moves to another server, before the caller sees the error. At most the streams'
    # 120 s duplicate window, within which a publish sent twice is stored once.
    nats_failover_seconds: Annotated[float, msgspec.Meta(ge=0, le=120)] = 15.0
    # Credentials for a NATS server that requires them (the production overlay gives each
    # service its own user), and TLS: the CA that signed the server's certificate, and a client
    # certificate and key where the server asks for one.
    nats_user: str = ""
    nats_password: str = ""
    nats_tls_ca_file: str = ""
    nats_tls_cert_file: str = ""
    nats_tls_key_file: str = ""
    # Port of this process's /metrics (Prometheus), /livez and /readyz; 0: none (`vidmesh up`
    # gives every service its own and prints them).
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # On SIGTERM, seconds the messages being handled may take to finish before they are cancelled
    # and handed back (the transcoder's running transcodes have `drain_seconds` instead).
    stop_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    # On SIGTERM, after the grace, seconds the cancelled handlers get to hand their messages back
    # before the stop goes on without them (the hard deadline of a stop).
    stop_deadline_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0
    # Deliveries of one command or event whose handler keeps failing before it is terminated with
    # an error line (the transcoder's work has `max_attempts` instead; webhook deliveries follow
    # `webhook_retry_schedule`, their work messages are capped at this, at least 3, and handed on
    # before the cap while they wait).
    message_attempts: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    # How long the events stream keeps events (replay, SSE Last-Event-ID, webhooks catch-up).
    events_retention_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 7.0
    # How long webhook delivery records (with their attempts) are kept after their last change.
    delivery_retention_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 7.0
    # Networks outbound requests (webhooks, notify_url, http(s) sources) may reach although they
    # are not public (loopback, private, link-local...): comma-separated CIDRs.
    outbound_allow: str = ""
    # Where local blobs (finished outputs) live when the blob store is a local directory.
    data_dir: str = ".vidmesh"
    # Folders whose files may be sources, separated by commas (none: only URLs).
    media_roots: str = ""
    # Where finished outputs are stored: "" (a folder, <blob_dir> or <data_dir>/blobs),
    # file:///path, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.
    store: str = ""
    blob_dir: str = ""
    store_endpoint: str = ""
    store_region: str = ""
    store_access_key_id: str = ""
    store_secret_access_key: str = ""
    store_session_token: str = ""
    store_virtual_hosted_style: bool = False
    store_service_account_key: str = ""
    store_account_name: str = ""
    store_account_key: str = ""
    store_sas_token: str = ""
    # Encrypts users' storage credentials at rest (32 bytes, base64); `vidmesh up` makes one.
    storage_key: str = ""

    def __post_init__(self) -> None:
        for part in filter(None, (p.strip() for p in self.outbound_allow.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(
                    f"outbound_allow: {part!r} is not a network (CIDR such as 10.0.0.0/8)"
                ) from None

    @property
    def media_root_list(self) -> list[str]:
        return [root.strip() for root in self.media_roots.split(",") if root.strip()]


S = TypeVar("S", bound=msgspec.Struct)


def env_subset(cls: type[msgspec.Struct], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment values that belong to fields of `cls`, keyed by field name."""
    picked: dict[str, str] = {}
    for field in msgspec.structs.fields(cls):
        alias = ALIASES.get(field.name)
        if alias and alias in environ:
            picked[field.name] = environ[alias]
        name = PREFIX + field.name.upper()
        if name in environ:
            picked[field.name] = environ[name]
    return picked


def load(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Build `cls` from the environment (and explicit overrides), validating every value."""
    values: dict[str, Any] = env_subset(cls, os.environ if environ is None else environ)
    values.update(overrides)
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid configuration for {cls.__name__}: {exc}") from None


def unknown_variables(classes: list[type[msgspec.Struct]], environ: Mapping[str, str]) -> list[str]:
    """`VIDMESH_*` variables no settings class knows: almost always a typo."""
    known = {PREFIX + f.name.upper() for cls in classes for f in msgspec.structs.fields(cls)}
    known |= {PREFIX + "VENV"}
    return sorted(k for k in environ if k.startswith(PREFIX) and k not in known)


def masked(settings: msgspec.Struct) -> dict[str, Any]:
    """The settings as a dict for logging, with secrets replaced by '***'."""
    out: dict[str, Any] = msgspec.to_builtins(settings)
    for name, value in out.items():
        if value and any(marker in name for marker in SECRET_MARKERS):
            out[name] = "***"
    return out


def parse_bool(value: str | bool) -> bool:
    """Read a boolean the way people write them in environment files."""
    if isinstance(value, bool):
        return value
    return value.strip().lower() in {"1", "true", "yes", "on"}
