"""Server settings groups (`/api/admin/settings`, `/api/admin/settings/{group}`): general, paths,
processing and kill switches, stored in NATS and applied by every service without a restart;
the aggregate routes include the telemetry group (its own routes are `telemetry_settings.py`).

Moderators read, administrators change. A change is partial: the fields a body names change,
null puts a field back to the environment's value. The aggregate change is all or nothing: any
unknown or malformed section (or a folder that is not usable) refuses the whole request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.telemetry_settings import TelemetrySettingsUpdate
from services.gateway.faces.native.telemetry_store import current_settings, settings_kv
from services.gateway.http import json_response
from services.gateway.state import Gateway, gateway
from shared.errors import BadRequest
from shared.messages import telemetry as tm
from shared.settings import (
    GeneralSettings,
    KillswitchSettings,
    PathsSettings,
    ProcessingSettings,
    ServerSettings,
)
from shared.settings.update import apply_sections, path_problems

TAG = Tag.ADMIN
TELEMETRY = "telemetry"


class AllSettings(msgspec.Struct, kw_only=True):
    """Every settings group, as the admin settings page loads them in one request."""

    general: GeneralSettings
    paths: PathsSettings
    processing: ProcessingSettings
    killswitches: KillswitchSettings
    telemetry: tm.TelemetrySettings
    updated_at: float


class AllSettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Changes to any groups at once: each section holds the fields to change in its group."""

    general: GeneralSettings | None = None
    paths: PathsSettings | None = None
    processing: ProcessingSettings | None = None
    killswitches: KillswitchSettings | None = None
    telemetry: TelemetrySettingsUpdate | None = None


@API.route(
    "GET",
    "/api/admin/settings",
    access=Access.MODERATOR,
    tag=TAG,
    summary="Every settings group in one answer",
    response=AllSettings,
)
async def get_all_settings(request: web.Request) -> web.Response:
    """Every settings group now in force."""
    gw = gateway(request)
    return json_response(_all(gw.server.current, await current_settings(gw)))


@API.route(
    "PUT",
    "/api/admin/settings",
    access=Access.ADMIN,
    tag=TAG,
    summary="Change fields of any groups at once (all or nothing)",
    body=AllSettingsUpdate,
    decode_as=dict[str, Any],
    response=AllSettings,
    statuses=(400,),
)
async def update_all_settings(request: web.Request, body: dict[str, Any]) -> web.Response:
    """Every group after the change; nothing is changed when one section is refused."""
    gw = gateway(request)
    sections = dict(body)
    telemetry_changes = _telemetry_changes(sections.pop(TELEMETRY)) if TELEMETRY in sections else {}
    before, after = await _change(gw, sections)
    try:
        telemetry = await _change_telemetry(gw, telemetry_changes)
    except Exception:
        if after != before:  # put the groups back: the request changes all or nothing
            await gw.server.change(lambda found: before if found == after else found)
        raise
    return json_response(_all(after, telemetry))


def _all(settings: ServerSettings, telemetry: tm.TelemetrySettings) -> AllSettings:
    return AllSettings(
        general=settings.general,
        paths=settings.paths,
        processing=settings.processing,
        killswitches=settings.killswitches,
        telemetry=telemetry,
        updated_at=max(settings.updated_at, telemetry.updated_at),
    )


def _telemetry_changes(section: object) -> dict[str, Any]:
    """The telemetry fields a section changes, checked before anything is written."""
    if section is None:
        raise BadRequest(
            "`telemetry` must be an object of its settings.", details={"group": TELEMETRY}
        )
    try:
        update = msgspec.convert(section, TelemetrySettingsUpdate)
    except msgspec.ValidationError as exc:
        raise BadRequest(
            f"Invalid `telemetry` settings: {exc}", details={"group": TELEMETRY}
        ) from None
    return {
        field: getattr(update, field)
        for field in update.__struct_fields__
        if getattr(update, field) is not msgspec.UNSET
    }


async def _change_telemetry(gw: Gateway, changes: dict[str, Any]) -> tm.TelemetrySettings:
    if not changes:
        return await current_settings(gw)

    def change(current: tm.TelemetrySettings | None) -> tm.TelemetrySettings:
        return msgspec.structs.replace(
            current or tm.TelemetrySettings(), **changes, updated_at=time.time()
        )

    settings, _, _ = await settings_kv(gw).change(tm.SETTINGS_KEY, change)
    return settings or tm.TelemetrySettings()


async def _change(gw: Gateway, sections: dict[str, Any]) -> tuple[ServerSettings, ServerSettings]:
    """Apply the sections to the stored groups (validated whole first, folders included)."""
    trial = apply_sections(gw.server.current, sections, also=(TELEMETRY,))
    if "paths" in sections:
        problems = await asyncio.to_thread(path_problems, trial.paths)
        if problems:
            raise BadRequest(" ".join(problems), details={"group": "paths", "problems": problems})
    if not sections:
        return gw.server.current, gw.server.current
    return await gw.server.change(lambda current: apply_sections(current, sections))


def _group_routes(group: str, type_: type[msgspec.Struct], summary: str) -> None:
    """GET (moderator) and PUT (administrator) of one group."""

    async def read(request: web.Request) -> web.Response:
        return json_response(getattr(gateway(request).server.current, group))

    async def change(request: web.Request, body: dict[str, Any]) -> web.Response:
        _, after = await _change(gateway(request), {group: body})
        return json_response(getattr(after, group))

    read.__name__ = read.__qualname__ = f"get_{group}_settings"
    read.__doc__ = f"The {group} settings now in force (null: the environment's value)."
    change.__name__ = change.__qualname__ = f"update_{group}_settings"
    change.__doc__ = f"The {group} settings with the fields the body names changed."
    path = f"/api/admin/settings/{group}"
    API.route("GET", path, access=Access.MODERATOR, tag=TAG, summary=summary, response=type_)(read)
    API.route(
        "PUT",
        path,
        access=Access.ADMIN,
        tag=TAG,
        summary=f"Change {summary[0].lower()}{summary[1:]} (null: the environment's value)",
        body=type_,
        decode_as=dict[str, Any],
        response=type_,
        statuses=(400,),
    )(change)


_group_routes("general", GeneralSettings, "General settings: server name, base URL of links")
_group_routes("paths", PathsSettings, "Path settings: media roots, scratch folder")
_group_routes(
    "processing",
    ProcessingSettings,
    "Processing settings: dispatch concurrency, retry attempts, backoff, ack wait",
)
_group_routes(
    "killswitches",
    KillswitchSettings,
    "Kill switches: jobs per face, webhook deliveries, registration, each with a reason",
)
