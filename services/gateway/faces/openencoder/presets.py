"""OpenEncoder's presets: the five built-in ones under OpenEncoder's names, and each user's own,
whose `data` (raw ffmpeg options) is read against an allow-list into a preset spec
(`options.py`). Integer ids: 1-5 are the built-ins; a user's presets take theirs from the face's
counter and are stored as native presets (same store, same spec)."""

from __future__ import annotations

import time
from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import Access, caller
from services.gateway.faces.openencoder.ids import PRESETS, parse_id
from services.gateway.faces.openencoder.options import output_name, parse_data, render_data
from services.gateway.faces.openencoder.table import ROUTES, Tag, counters
from services.gateway.http import json_response
from services.gateway.identity import Principal
from services.gateway.presets import check_name, own_presets, resolve, store_change
from services.gateway.state import Gateway, gateway
from shared.errors import Forbidden, NotFound
from shared.media import PresetSpec
from shared.messages.accounts import PresetRecord

# OpenEncoder's built-in presets, with its names and parameters (ids 1-5, in this order): the
# data its own database ships, read like any client's.
_BUILTIN_OPTIONS = {
    "h264_baseline_360p_600": ["-vf scale=-2:360", "-c:v libx264", "-profile:v baseline",
        "-level:v 3.0", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 600k", "-maxrate 600k", "-bufsize 600k", "-b:v 600k", "-y"],
    "h264_main_480p_1000": ["-vf scale=-2:480", "-c:v libx264", "-profile:v main",
        "-level:v 3.1", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 1000k", "-maxrate 1000k", "-bufsize 1000k", "-b:v 1000k", "-y"],
    "h264_main_720p_3000": ["-vf scale=-2:720", "-c:v libx264", "-profile:v main",
        "-level:v 4.0", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 3000k", "-maxrate 3000k", "-bufsize 3000k", "-b:v 3000k", "-y"],
    "h264_main_1080p_6000": ["-vf scale=-2:1080", "-c:v libx264", "-profile:v main",
        "-level:v 4.2", "-x264opts scenecut=0:open_gop=0:min-keyint=72:keyint=72",
        "-minrate 6000k", "-maxrate 6000k", "-bufsize 6000k", "-b:v 6000k", "-y"],
    "webm_vp9_720p_3000": ["-vf scale=-2:720", "-c:v libvpx-vp9", "-level:v 4.0", "-b:v 3000k",
        "-pix_fmt yuv420p", "-f webm", "-y"],
}  # fmt: skip
_BUILTIN_DATA = {
    name: msgspec.json.encode({"raw": raw}).decode() for name, raw in _BUILTIN_OPTIONS.items()
}
BUILTINS: dict[str, tuple[int, PresetSpec]] = {
    name: (number, parse_data(_BUILTIN_DATA[name]))
    for number, name in enumerate(_BUILTIN_OPTIONS, start=1)
}

PresetName = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.-]*$",
        description="1-64 characters: letters, digits, space and _ . -",
    ),
]
PresetData = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=8192,
        description='A JSON string: {"raw": ["-vf scale=-2:720", "-c:v libx264", ...]}; only '
        "allowed options (scale height, codecs, profile, level, bit rates, keyframes, pixel "
        "format, format, audio) are accepted",
    ),
]


class PresetRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new preset."""

    name: PresetName
    description: Annotated[str, msgspec.Meta(max_length=500)] = ""
    data: PresetData
    active: bool = True


class PresetChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A preset's new fields (those left out stay as they are)."""

    name: PresetName | None = None
    description: Annotated[str, msgspec.Meta(max_length=500)] | None = None
    data: PresetData | None = None
    active: bool | None = None


class PresetItem(msgspec.Struct, kw_only=True):
    """A preset; `data` holds the options its encode amounts to."""

    id: int
    name: str
    description: str
    data: str
    active: bool


class PresetDetail(PresetItem, kw_only=True):
    """A preset and the file name its output gets."""

    output: str


class PresetList(msgspec.Struct, kw_only=True):
    """The built-in presets and the caller's own, newest first."""

    count: int
    items: list[PresetItem]


class PresetAnswer(msgspec.Struct, kw_only=True):
    """One preset."""

    preset: PresetDetail
    status: int


def _item(number: int, name: str, description: str, data: str, active: bool) -> PresetItem:
    return PresetItem(id=number, name=name, description=description, data=data, active=active)


def _builtin_item(name: str) -> PresetItem:
    return _item(BUILTINS[name][0], name, name, _BUILTIN_DATA[name], True)


def _record_item(record: PresetRecord) -> PresetItem:
    """A preset as its creator sent it (`data` as sent; one made elsewhere: its spec's options)."""
    data = record.data or render_data(record.spec)
    return _item(int(record.id), record.name, record.description, data, record.active)


def _all(gw: Gateway, who: Principal) -> list[PresetItem]:
    builtins = [_builtin_item(name) for name in BUILTINS]
    own = [_record_item(r) for r in own_presets(gw, who.user_id) if parse_id(r.id) is not None]
    return sorted(builtins + own, key=lambda item: item.id, reverse=True)


def resolve_preset(gw: Gateway, who: Principal, name: str) -> tuple[str, PresetSpec]:
    """The preset a job names: an OpenEncoder built-in, or what the native API resolves
    (a native built-in, or one of the caller's active presets)."""
    if name in BUILTINS:
        return name, BUILTINS[name][1]
    return resolve(gw, who, name)


def _own(gw: Gateway, who: Principal, raw_id: str) -> PresetRecord:
    number = parse_id(raw_id)
    if number is not None and number <= len(BUILTINS):
        raise Forbidden(f"Preset {raw_id} is built in; create your own instead.")
    record = gw.presets.get(str(number)) if number is not None else None
    if record is None or record.owner != who.user_id:
        raise NotFound(f"No preset {raw_id!r}.")
    return record


@ROUTES.route(
    "POST",
    "/api/presets",
    access=Access.USER,
    tag=Tag.PRESETS,
    summary="Create a preset (its options are checked against the allow-list)",
    body=PresetRequest,
    response=PresetItem,
    statuses=(409,),
)
async def create_encode_preset(request: web.Request, body: PresetRequest) -> web.Response:
    gw = gateway(request)
    who = caller(request)
    check_name(gw, who.user_id, body.name, reserved=BUILTINS)
    spec = parse_data(body.data)
    number = await counters(request).next(PRESETS, after=len(BUILTINS))
    now = time.time()
    record = PresetRecord(
        id=str(number),
        owner=who.user_id,
        name=body.name,
        description=body.description,
        active=body.active,
        spec=spec,
        created_at=now,
        updated_at=now,
        data=body.data,
    )
    await gw.presets.create(record.id, record)
    return json_response(_record_item(record))


@ROUTES.route(
    "GET",
    "/api/presets",
    access=Access.USER,
    tag=Tag.PRESETS,
    summary="The built-in presets and the caller's own",
    response=PresetList,
)
async def list_encode_presets(request: web.Request) -> web.Response:
    items = _all(gateway(request), caller(request))
    return json_response(PresetList(count=len(items), items=items))


@ROUTES.route(
    "GET",
    "/api/presets/{preset_id}",
    access=Access.USER,
    tag=Tag.PRESETS,
    summary="One preset, with its output file name",
    response=PresetAnswer,
)
async def get_encode_preset(request: web.Request) -> web.Response:
    raw_id = request.match_info["preset_id"]
    gw, who = gateway(request), caller(request)
    for name, (number, spec) in BUILTINS.items():
        if parse_id(raw_id) == number:
            detail = PresetDetail(
                **msgspec.structs.asdict(_builtin_item(name)), output=output_name(name, spec)
            )
            return json_response(PresetAnswer(preset=detail, status=200))
    record = _own(gw, who, raw_id)
    detail = PresetDetail(
        **msgspec.structs.asdict(_record_item(record)),
        output=output_name(record.name, record.spec),
    )
    return json_response(PresetAnswer(preset=detail, status=200))


async def _update(request: web.Request, body: PresetChange) -> web.Response:
    gw, who = gateway(request), caller(request)
    record = _own(gw, who, request.match_info["preset_id"])
    name = body.name if body.name is not None else record.name
    check_name(gw, who.user_id, name, keep_id=record.id, reserved=BUILTINS)
    updated = msgspec.structs.replace(
        record,
        name=name,
        description=body.description if body.description is not None else record.description,
        active=body.active if body.active is not None else record.active,
        spec=parse_data(body.data) if body.data is not None else record.spec,
        data=body.data if body.data is not None else record.data,
        updated_at=time.time(),
    )
    await store_change(gw, updated)
    return json_response(_record_item(updated))


@ROUTES.route(
    "PUT",
    "/api/presets/{preset_id}",
    access=Access.USER,
    tag=Tag.PRESETS,
    summary="Change one of the caller's presets (jobs keep the spec they started with)",
    body=PresetChange,
    response=PresetItem,
    statuses=(403, 409),
)
async def update_encode_preset(request: web.Request, body: PresetChange) -> web.Response:
    return await _update(request, body)


@ROUTES.route(
    "POST",
    "/api/preset/{preset_id}",
    access=Access.USER,
    tag=Tag.PRESETS,
    summary="Change one of the caller's presets (the spelling of OpenEncoder's own example)",
    body=PresetChange,
    response=PresetItem,
    statuses=(403, 409),
)
async def update_encode_preset_singular(request: web.Request, body: PresetChange) -> web.Response:
    return await _update(request, body)
