"""The native API serves every route of the Odeion media server's document that is vidmesh's
business, with the document's success status and the role it requires.

The table below is transcribed from the Odeion API document (`seeds/003_*` beside DESIGN.md,
outside this repository, so CI cannot read it): one row per route of its job, transcoding, task,
storage, maintenance, webhook, event, telemetry, API-key, signed-URL and settings groups, with the
path's parameters named as our routes name them, the status the document gives for success and
the role its text requires ("Requires the administrator role" / "Admin only": ADMIN; "Requires the
moderator role" / "Mod+": MODERATOR; "auth required" alone: USER; neither: PUBLIC).

Left out, because they are the media library's and not ours: libraries, movies, series, episodes,
playback, subtitles, segments, fingerprints, content, media files, metadata, requests, Watch
Together, playlists, progress, notifications, push, backups, logs, diagnostics, dashboards, stats,
OAuth and *arr integrations (`/api/webhooks/arr/{token}`, `/api/admin/settings/integrations*`,
`/api/admin/settings/metadata/*`, `/api/admin/settings/oauth*`), a user's player settings
(`/api/settings`), and the maintenance routes that clear the metadata image cache, the subtitle
cache and the library's content records (`/api/admin/maintenance/cache/metadata`,
`/api/admin/maintenance/cache/subtitles`, `/api/admin/maintenance/library-content`). Accounts
(register, sign-in, refresh, the caller's profile and password) are how a client gets in: they
are walked in test_odeion_api.py, and the README says where they differ from the document.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from services.gateway.api import API, Access, Operation
from services.gateway.faces.native import routes  # noqa: F401 (registers the native routes)

ADMIN, MODERATOR, USER = Access.ADMIN, Access.MODERATOR, Access.USER


class Row(NamedTuple):
    """One route as the document gives it."""

    method: str
    path: str
    status: int | None  # None: the document gives no success status (a WebSocket)
    access: Access


ODEION_ROUTES: tuple[Row, ...] = (
    # Jobs
    Row("GET", "/api/admin/jobs", 200, MODERATOR),
    Row("POST", "/api/admin/jobs", 201, ADMIN),
    Row("POST", "/api/admin/jobs/cleanup", 202, ADMIN),
    Row("POST", "/api/admin/jobs/estimate", 200, MODERATOR),
    Row("GET", "/api/admin/jobs/summary", 200, MODERATOR),
    Row("GET", "/api/admin/jobs/{job_id}", 200, MODERATOR),
    Row("DELETE", "/api/admin/jobs/{job_id}", 200, ADMIN),
    Row("POST", "/api/admin/jobs/{job_id}/retry", 200, ADMIN),
    Row("POST", "/api/admin/jobs/{job_id}/url", 200, ADMIN),
    Row("GET", "/api/jobs", 200, USER),
    Row("POST", "/api/jobs", 201, USER),
    Row("GET", "/api/jobs/{job_id}", 200, USER),
    Row("DELETE", "/api/jobs/{job_id}", 204, USER),
    Row("POST", "/api/jobs/{job_id}/complete", 200, USER),
    Row("POST", "/api/jobs/{job_id}/url", 200, USER),
    # Signed URLs: public in the document, served to whoever holds the `?token=` a /url minted
    Row("GET", "/api/files", 200, Access.SIGNED),
    # Transcoding
    Row("GET", "/api/admin/transcode-sessions", 200, MODERATOR),
    Row("GET", "/api/admin/transcode-sessions/{session_id}", 200, MODERATOR),
    Row("POST", "/api/admin/transcode-sessions/{session_id}/cancel", 200, ADMIN),
    Row("GET", "/api/admin/transcode-sessions/{session_id}/export", 200, MODERATOR),
    Row("GET", "/api/admin/transcoding/gpus", 200, ADMIN),
    Row("GET", "/api/admin/transcoding/pools", 200, ADMIN),
    Row("POST", "/api/admin/transcoding/pools", 201, ADMIN),
    Row("PUT", "/api/admin/transcoding/pools/{pool_id}", 200, ADMIN),
    Row("DELETE", "/api/admin/transcoding/pools/{pool_id}", 204, ADMIN),
    Row("POST", "/api/admin/transcoding/pools/{pool_id}/probe", 200, ADMIN),
    Row("GET", "/api/admin/transcoding/profiles", 200, ADMIN),
    Row("GET", "/api/admin/transcoding/settings", 200, ADMIN),
    Row("PUT", "/api/admin/transcoding/settings", 200, ADMIN),
    # System status: the issue names its moderator read beside the transcoding routes
    Row("GET", "/api/admin/system/status", 200, MODERATOR),
    # Tasks
    Row("GET", "/api/admin/tasks", 200, ADMIN),
    Row("GET", "/api/admin/tasks/summary", 200, ADMIN),
    Row("POST", "/api/admin/tasks/cancel-pending", 202, ADMIN),
    Row("POST", "/api/admin/tasks/retry-failed", 202, ADMIN),
    Row("POST", "/api/admin/tasks/reprocess", 202, ADMIN),
    Row("DELETE", "/api/admin/tasks/clear-old", 204, ADMIN),
    Row("GET", "/api/admin/tasks/{task_id}", 200, ADMIN),
    Row("DELETE", "/api/admin/tasks/{task_id}", 204, ADMIN),
    Row("POST", "/api/admin/tasks/{task_id}/retry", 202, ADMIN),
    Row("GET", "/api/admin/tasks/{media_type}/{media_id}", 200, ADMIN),
    # Storage
    Row("GET", "/api/admin/storage/summary", 200, ADMIN),
    Row("GET", "/api/admin/storage/datadir", 200, ADMIN),
    Row("GET", "/api/admin/storage/treemap", 200, ADMIN),
    # Maintenance (only the transcode cache is ours)
    Row("DELETE", "/api/admin/maintenance/cache/transcode", 204, ADMIN),
    # Webhooks
    Row("GET", "/api/admin/webhooks", 200, ADMIN),
    Row("POST", "/api/admin/webhooks", 201, ADMIN),
    Row("GET", "/api/admin/webhooks/event-types", 200, ADMIN),
    Row("GET", "/api/admin/webhooks/deliveries/{delivery_id}", 200, ADMIN),
    Row("POST", "/api/admin/webhooks/deliveries/{delivery_id}/retry", 202, ADMIN),
    Row("GET", "/api/admin/webhooks/{webhook_id}", 200, ADMIN),
    Row("PUT", "/api/admin/webhooks/{webhook_id}", 200, ADMIN),
    Row("DELETE", "/api/admin/webhooks/{webhook_id}", 204, ADMIN),
    Row("GET", "/api/admin/webhooks/{webhook_id}/deliveries", 200, ADMIN),
    Row("POST", "/api/admin/webhooks/{webhook_id}/test", 200, ADMIN),
    # Events. The WebSocket authenticates in band (its first frame carries the token), so the
    # route itself is open; the document gives it no status (the upgrade answers 101).
    Row("GET", "/api/events", 200, USER),
    Row("GET", "/api/ws", None, Access.PUBLIC),
    # Telemetry
    Row("GET", "/api/admin/telemetry/metrics", 200, ADMIN),
    Row("GET", "/api/admin/telemetry/pool-metrics", 200, ADMIN),
    Row("GET", "/api/admin/telemetry/query", 200, ADMIN),
    Row("GET", "/api/admin/telemetry/live-buffer", 200, ADMIN),
    # API keys
    Row("GET", "/api/account/api-keys", 200, USER),
    Row("POST", "/api/account/api-keys", 201, USER),
    Row("DELETE", "/api/account/api-keys/{key_id}", 204, USER),
    Row("GET", "/api/admin/users/{user_id}/api-keys", 200, ADMIN),
    Row("DELETE", "/api/admin/users/{user_id}/api-keys/{key_id}", 204, ADMIN),
    # Settings
    Row("GET", "/api/admin/settings", 200, MODERATOR),
    Row("PUT", "/api/admin/settings", 200, ADMIN),
    Row("GET", "/api/admin/settings/general", 200, MODERATOR),
    Row("PUT", "/api/admin/settings/general", 200, ADMIN),
    Row("GET", "/api/admin/settings/killswitches", 200, MODERATOR),
    Row("PUT", "/api/admin/settings/killswitches", 200, ADMIN),
    Row("GET", "/api/admin/settings/paths", 200, MODERATOR),
    Row("PUT", "/api/admin/settings/paths", 200, ADMIN),
    Row("GET", "/api/admin/settings/processing", 200, MODERATOR),
    Row("PUT", "/api/admin/settings/processing", 200, ADMIN),
    Row("GET", "/api/admin/settings/telemetry", 200, MODERATOR),
    Row("PUT", "/api/admin/settings/telemetry", 200, ADMIN),
)

_PARAMETER = re.compile(r"\{[^}]+\}")


def shape(path: str) -> str:
    """The path with its parameters unnamed: `/api/jobs/{id}` and `/api/jobs/{job_id}` match."""
    return _PARAMETER.sub("{}", path)


def differences(rows: tuple[Row, ...], operations: list[Operation]) -> list[str]:
    """Each row the route table does not serve as the document says, in words."""
    served = {(op.method, shape(op.path)): op for op in operations}
    found: list[str] = []
    for row in rows:
        op = served.get((row.method, shape(row.path)))
        if op is None:
            found.append(f"{row.method} {row.path}: not served")
            continue
        if row.status is not None and op.status != row.status:
            found.append(f"{row.method} {row.path}: answers {op.status}, the document {row.status}")
        if op.access is not row.access:
            found.append(
                f"{row.method} {row.path}: open to {op.access.value}, "
                f"the document to {row.access.value}"
            )
    return found


def test_the_table_names_each_route_once() -> None:
    keys = [(row.method, shape(row.path)) for row in ODEION_ROUTES]
    assert len(keys) == len(set(keys))
    assert all(row.path.startswith("/api/") for row in ODEION_ROUTES)


def test_every_odeion_route_of_ours_is_served_with_its_status_and_role() -> None:
    problems = differences(ODEION_ROUTES, API.operations)
    assert not problems, f"{len(problems)} route(s) differ from Odeion's document:\n" + "\n".join(
        problems
    )


def test_the_event_stream_takes_its_token_in_the_query_as_the_document_says() -> None:
    # "Auth via query parameter token": EventSource cannot send headers
    (events,) = [op for op in API.operations if (op.method, op.path) == ("GET", "/api/events")]
    assert events.query_token
