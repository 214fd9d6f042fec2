"""The server settings groups an administrator changes at run time (`/api/admin/settings/*`):
general, paths, processing and kill switches, stored together as one record in NATS KV.

Every field that can be unset (null) means "the environment's value": the variable the service
was started with (`VIDMESH_MEDIA_ROOTS`, `MAX_CONCURRENT_JOBS`, `VIDMESH_MESSAGE_ATTEMPTS`...).
Services read the record through a watch (`shared.settings.live`), so a change applies without a
restart. The four groups are one record so that a change across groups is one compare-and-set.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.messages.records import Timestamp

# The one key of the server settings bucket.
SETTINGS_KEY = "server"

Concurrency = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Attempts = Annotated[int, msgspec.Meta(ge=1, le=1000)]
BackoffSeconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]
AckWaitSeconds = Annotated[float, msgspec.Meta(ge=5, le=3600)]
Reason = Annotated[str, msgspec.Meta(max_length=500)]
ServerName = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
BaseUrl = Annotated[str, msgspec.Meta(max_length=2000, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]
FolderPath = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class GeneralSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The server's identity: its name, and the base URL every generated link starts with
    (signed download URLs...). Unset: no name, and the address the request came to."""

    server_name: ServerName | None = None
    # http(s)://host[:port][/path], as clients reach the server (behind a proxy: the proxy's).
    base_url: BaseUrl | None = None


class PathsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where local sources may come from and where transcoders write before storing an output.
    Unset: `VIDMESH_MEDIA_ROOTS` and `VIDMESH_SCRATCH_DIR` (default `<data_dir>/scratch`)."""

    # Folders whose files may be sources; each must exist and be readable.
    media_roots: list[FolderPath] | None = None
    # The transcoders' scratch folder; it must exist and be writable.
    scratch_dir: FolderPath | None = None


class ProcessingSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How work is dispatched and how failed commands and events are retried. Unset: the
    scheduler's `MAX_CONCURRENT_JOBS`, the services' `VIDMESH_MESSAGE_ATTEMPTS`, a backoff
    doubling from 1 s, and each consumer's own ack wait."""

    # Transcodes the scheduler starts at once in a pool that sets no concurrency of its own.
    dispatch_concurrency: Concurrency | None = None
    # Deliveries of a command or event whose handler keeps failing before it is given up.
    retry_attempts: Attempts | None = None
    # Seconds before the first retry; each next one waits twice as long (at most 60 s more).
    retry_backoff_seconds: BackoffSeconds | None = None
    # Seconds a command or event may be handled before JetStream delivers it again.
    ack_wait_seconds: AckWaitSeconds | None = None


class Killswitch(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One feature switched off (`engaged`), with the reason refused callers are told."""

    engaged: bool = False
    reason: Reason = ""


OFF = Killswitch()


class KillswitchSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Features an operator can switch off at once, without a restart."""

    # New jobs on the native API (`/api/jobs`, batches, the download-jobs routes under `/api`).
    native: Killswitch = OFF
    # New jobs from the Streamyfin app (`POST /optimize-version`).
    streamyfin: Killswitch = OFF
    # New jobs on the OpenEncoder face.
    openencoder: Killswitch = OFF
    # Webhook deliveries: held (kept, not attempted) while engaged, then delivered.
    webhooks: Killswitch = OFF
    # Self-service registration (an administrator may still create accounts).
    registration: Killswitch = OFF


class ServerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The stored record: every server settings group, changed together by compare-and-set."""

    general: GeneralSettings = GeneralSettings()
    paths: PathsSettings = PathsSettings()
    processing: ProcessingSettings = ProcessingSettings()
    killswitches: KillswitchSettings = KillswitchSettings()
    updated_at: Timestamp = 0.0


DEFAULTS = ServerSettings()

# The groups of the record, by their name in the API.
GROUPS: dict[str, type[msgspec.Struct]] = {
    "general": GeneralSettings,
    "paths": PathsSettings,
    "processing": ProcessingSettings,
    "killswitches": KillswitchSettings,
}

# Which kill switch stops new jobs from a face (the `client` a face puts on its submissions).
FACE_OF_CLIENT = {"streamyfin": "streamyfin", "openencoder": "openencoder"}


def face_of(client: str) -> str:
    """The kill switch of the face a submission came from: native unless Streamyfin or
    OpenEncoder (the download-jobs routes are the native face's)."""
    return FACE_OF_CLIENT.get(client, "native")
