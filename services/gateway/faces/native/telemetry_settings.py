"""Telemetry settings (`/api/admin/settings/telemetry`): whether the statistics service samples,
how often, and how long the samples are kept."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.telemetry_store import current_settings, settings_kv
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.messages import telemetry as tm


class TelemetrySettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Telemetry settings to change; fields left out keep their value."""

    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    interval_seconds: tm.IntervalSeconds | msgspec.UnsetType = msgspec.UNSET
    retention_hours: tm.RetentionHours | msgspec.UnsetType = msgspec.UNSET


@API.route(
    "GET",
    "/api/admin/settings/telemetry",
    access=Access.MODERATOR,
    tag=Tag.TELEMETRY,
    summary="Telemetry settings: whether it is sampled, how often, and how long it is kept",
    response=tm.TelemetrySettings,
)
async def get_telemetry_settings(request: web.Request) -> web.Response:
    """The telemetry settings now in force."""
    return json_response(await current_settings(gateway(request)))


@API.route(
    "PUT",
    "/api/admin/settings/telemetry",
    access=Access.ADMIN,
    tag=Tag.TELEMETRY,
    summary="Change telemetry settings (the statistics service applies them at once)",
    body=TelemetrySettingsUpdate,
    response=tm.TelemetrySettings,
)
async def update_telemetry_settings(
    request: web.Request, body: TelemetrySettingsUpdate
) -> web.Response:
    """The settings with the fields the body sets changed."""
    changes = {
        field: getattr(body, field)
        for field in body.__struct_fields__
        if getattr(body, field) is not msgspec.UNSET
    }

    def change(current: tm.TelemetrySettings | None) -> tm.TelemetrySettings:
        return msgspec.structs.replace(
            current or tm.TelemetrySettings(), **changes, updated_at=time.time()
        )

    settings, _, _ = await settings_kv(gateway(request)).change(tm.SETTINGS_KEY, change)
    return json_response(settings)
