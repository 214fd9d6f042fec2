"""Presets as the native API sees them: the built-in ones, and each user's own, resolved by
name or id into the validated spec a job keeps."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import msgspec

from services.gateway.identity import Principal
from services.gateway.state import Gateway
from shared.errors import Conflict, NotFound
from shared.media import BUILTIN_PRESETS, PresetSpec
from shared.messages.accounts import PresetRecord

_DESCRIPTIONS = {
    "optimized": "H.264/AAC stereo, at most 1080p and 8 Mb/s; copies what already fits "
    "(the Streamyfin default)",
}


class PresetView(msgspec.Struct, kw_only=True):
    """A preset: built-in (its id is its name) or a user's own."""

    id: str
    name: str
    description: str
    builtin: bool
    active: bool
    owner: str | None
    spec: PresetSpec
    created_at: datetime | None
    updated_at: datetime | None


def builtin_views() -> list[PresetView]:
    return [
        PresetView(
            id=name,
            name=name,
            description=_DESCRIPTIONS.get(name, name),
            builtin=True,
            active=True,
            owner=None,
            spec=spec,
            created_at=None,
            updated_at=None,
        )
        for name, spec in BUILTIN_PRESETS.items()
    ]


def preset_view(record: PresetRecord) -> PresetView:
    return PresetView(
        id=record.id,
        name=record.name,
        description=record.description,
        builtin=False,
        active=record.active,
        owner=record.owner,
        spec=record.spec,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        updated_at=datetime.fromtimestamp(record.updated_at, UTC),
    )


def own_presets(gw: Gateway, user_id: str) -> list[PresetRecord]:
    found = [p for p in gw.presets.values() if p.owner == user_id]
    return sorted(found, key=lambda p: p.created_at)


def check_name(
    gw: Gateway, user_id: str, name: str, *, keep_id: str = "", reserved: Collection[str] = ()
) -> None:
    """A name the user may give a preset: not a built-in's (nor one the face keeps, `reserved`),
    nor that of another of the user's presets (`keep_id`: the preset being renamed)."""
    if name in BUILTIN_PRESETS or name in reserved:
        raise Conflict(f"{name!r} is the name of a built-in preset.")
    if any(p.name == name and p.id != keep_id for p in own_presets(gw, user_id)):
        raise Conflict(f"You already have a preset named {name!r}.")


async def store_change(gw: Gateway, changed: PresetRecord) -> None:
    """Store a changed preset over the version this gateway holds (compare-and-set)."""
    versioned = gw.presets.versioned(changed.id)
    assert versioned is not None
    await gw.presets.update(changed.id, changed, versioned.revision)


def resolve(gw: Gateway, who: Principal, name_or_id: str) -> tuple[str, PresetSpec]:
    """The preset a job names: a built-in, or one of the caller's active presets."""
    if name_or_id in BUILTIN_PRESETS:
        return name_or_id, BUILTIN_PRESETS[name_or_id]
    for record in own_presets(gw, who.user_id):
        if record.active and name_or_id in (record.id, record.name):
            return record.name, record.spec
    known = ", ".join(sorted(BUILTIN_PRESETS))
    raise NotFound(f"No preset {name_or_id!r}: use one of yours or a built-in one ({known}).")
