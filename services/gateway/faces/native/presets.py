"""Presets face: the built-in presets, and each user's own structured presets. A preset is a
validated description (no field becomes free text on ffmpeg's command line)."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.http import Message, json_response
from services.gateway.presets import (
    PresetView,
    builtin_views,
    check_name,
    own_presets,
    preset_view,
    store_change,
)
from services.gateway.state import Gateway, gateway
from shared.errors import Forbidden, NotFound
from shared.media import BUILTIN_PRESETS, PresetSpecInput, validate_preset
from shared.messages.accounts import PresetRecord

TAG = Tag.PRESETS

PresetName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$",
        description="1-64 characters: letters, digits, space and _ . -",
    ),
]


class PresetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A user preset: a name and a structured spec."""

    name: PresetName
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    active: bool = True
    spec: PresetSpecInput


def _own(gw: Gateway, user_id: str, preset_id: str) -> PresetRecord:
    if preset_id in BUILTIN_PRESETS:
        raise Forbidden(f"{preset_id!r} is a built-in preset; create your own instead.")
    record = gw.presets.get(preset_id) if len(preset_id) <= 64 else None
    if record is None or record.owner != user_id:
        raise NotFound(f"No preset {preset_id!r}.")
    return record


@API.route(
    "GET",
    "/api/presets",
    access=Access.USER,
    tag=TAG,
    summary="Built-in presets and the caller's own",
    response=list[PresetView],
)
async def list_presets(request: web.Request) -> web.Response:
    gw = gateway(request)
    own = [preset_view(p) for p in own_presets(gw, caller(request).user_id)]
    return json_response(builtin_views() + own)


@API.route(
    "POST",
    "/api/presets",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Create a preset",
    body=PresetRequest,
    response=PresetView,
    statuses=(409,),
)
async def create_preset(request: web.Request, body: PresetRequest) -> web.Response:
    gw = gateway(request)
    user_id = caller(request).user_id
    check_name(gw, user_id, body.name)
    spec = validate_preset(body.spec)
    now = time.time()
    record = PresetRecord(
        id=uuid.uuid4().hex,
        owner=user_id,
        name=body.name,
        description=body.description,
        active=body.active,
        spec=spec,
        created_at=now,
        updated_at=now,
    )
    await gw.presets.create(record.id, record)
    return json_response(preset_view(record), 201)


@API.route(
    "GET",
    "/api/presets/{preset_id}",
    access=Access.USER,
    tag=TAG,
    summary="One preset (a built-in one by name)",
    response=PresetView,
)
async def get_preset(request: web.Request) -> web.Response:
    preset_id = request.match_info["preset_id"]
    for view in builtin_views():
        if view.id == preset_id:
            return json_response(view)
    gw = gateway(request)
    return json_response(preset_view(_own(gw, caller(request).user_id, preset_id)))


@API.route(
    "PUT",
    "/api/presets/{preset_id}",
    access=Access.USER,
    tag=TAG,
    summary="Replace one of the caller's presets (jobs keep the spec they started with)",
    body=PresetRequest,
    response=PresetView,
    statuses=(403, 409),
)
async def update_preset(request: web.Request, body: PresetRequest) -> web.Response:
    gw = gateway(request)
    user_id = caller(request).user_id
    record = _own(gw, user_id, request.match_info["preset_id"])
    check_name(gw, user_id, body.name, keep_id=record.id)
    spec = validate_preset(body.spec)
    updated = msgspec.structs.replace(
        record,
        name=body.name,
        description=body.description,
        active=body.active,
        spec=spec,
        updated_at=time.time(),
    )
    await store_change(gw, updated)
    return json_response(preset_view(updated))


@API.route(
    "DELETE",
    "/api/presets/{preset_id}",
    access=Access.USER,
    tag=TAG,
    summary="Delete one of the caller's presets",
    response=Message,
    statuses=(403,),
)
async def delete_preset(request: web.Request) -> web.Response:
    gw = gateway(request)
    record = _own(gw, caller(request).user_id, request.match_info["preset_id"])
    await gw.presets.store.delete(record.id)
    versioned = gw.presets.versioned(record.id)
    gw.presets.apply(record.id, None, (versioned.revision if versioned else 0) + 1)
    return json_response(Message(message="Preset deleted"))


@API.route(
    "GET",
    "/api/admin/transcoding/profiles",
    access=Access.ADMIN,
    tag="admin",
    summary="The built-in transcoding profiles",
    response=list[PresetView],
)
async def list_profiles(request: web.Request) -> web.Response:
    return json_response(builtin_views())
