"""Fleet-wide transcoding settings: global concurrency, hardware preference and ceilings
(`/api/admin/transcoding/settings`). The pools are in `fleet.py`."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.fleet import SETTINGS_KEY
from shared.messages.fleet import HardwarePreference, TranscodingSettings


class SettingsUpdate(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fleet-wide settings; fields left out keep their value, null clears a limit."""

    global_concurrency: Annotated[int, msgspec.Meta(ge=1, le=10_000)] | None | msgspec.UnsetType = (
        msgspec.UNSET
    )
    hardware_preference: HardwarePreference | msgspec.UnsetType = msgspec.UNSET
    max_height: Annotated[int, msgspec.Meta(ge=144, le=4320)] | None | msgspec.UnsetType = (
        msgspec.UNSET
    )
    max_video_bitrate_kbps: (
        Annotated[int, msgspec.Meta(ge=100, le=200_000)] | None | msgspec.UnsetType
    ) = msgspec.UNSET


@API.route(
    "GET",
    "/api/admin/transcoding/settings",
    access=Access.ADMIN,
    tag=Tag.TRANSCODING,
    summary="Fleet-wide transcoding settings",
    response=TranscodingSettings,
)
async def get_settings(request: web.Request) -> web.Response:
    """The fleet-wide transcoding settings now in force."""
    return json_response(await gateway(request).fleet.transcoding_settings())


@API.route(
    "PUT",
    "/api/admin/transcoding/settings",
    access=Access.ADMIN,
    tag=Tag.TRANSCODING,
    summary="Change fleet-wide settings (global concurrency, hardware preference, ceilings)",
    body=SettingsUpdate,
    response=TranscodingSettings,
)
async def update_settings(request: web.Request, body: SettingsUpdate) -> web.Response:
    """The settings with the fields the body sets changed."""
    gw = gateway(request)
    changes = {
        field: getattr(body, field)
        for field in body.__struct_fields__
        if getattr(body, field) is not msgspec.UNSET
    }

    def change(current: TranscodingSettings | None) -> TranscodingSettings:
        return msgspec.structs.replace(
            current or TranscodingSettings(), **changes, updated_at=time.time()
        )

    settings, _, _ = await gw.fleet.settings.change(SETTINGS_KEY, change)
    return json_response(settings)
