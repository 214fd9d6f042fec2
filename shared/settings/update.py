"""A partial update of the server settings: the sections a request names, merged over the
stored groups and validated whole, so a request with any unknown or malformed section changes
nothing at all."""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from shared.errors import BadRequest
from shared.settings.groups import GROUPS, PathsSettings, ServerSettings


def merged(current: Any, changes: Any) -> Any:
    """`changes` laid over `current` (both plain JSON values): objects merge key by key, null
    puts a key back to its default (the environment's value; a switch's reason: none), any other
    value (a list, a string) replaces what was there."""
    if isinstance(current, dict) and isinstance(changes, dict):
        out = dict(current)
        for key, value in changes.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merged(current.get(key), value)
        return out
    return changes


def updated_group(current: msgspec.Struct, group: str, changes: object) -> msgspec.Struct:
    """The group `group` with `changes` (a JSON object of its fields) applied; `BadRequest`
    naming the group and the field when a change is not one of its fields or out of range."""
    if not isinstance(changes, dict):
        raise BadRequest(f"`{group}` must be an object of its settings.")
    try:
        return msgspec.convert(merged(msgspec.to_builtins(current), changes), GROUPS[group])
    except msgspec.ValidationError as exc:
        raise BadRequest(f"Invalid `{group}` settings: {exc}", details={"group": group}) from None


def apply_sections(
    current: ServerSettings,
    sections: dict[str, Any],
    *,
    now: float | None = None,
    also: tuple[str, ...] = (),
) -> ServerSettings:
    """The record with every named group updated; `BadRequest` (and nothing applied) when one
    section is unknown or malformed. Sections outside the record (`also`: telemetry) are the
    caller's, and named among the groups when one is unknown."""
    groups: dict[str, msgspec.Struct] = {}
    for group, changes in sections.items():
        if group in also:
            continue
        if group not in GROUPS:
            known = ", ".join(sorted([*GROUPS, *also]))
            raise BadRequest(f"There is no settings group {group!r}; groups: {known}.")
        groups[group] = updated_group(getattr(current, group), group, changes)
    stamp = time.time() if now is None else now
    return msgspec.structs.replace(current, **groups, updated_at=stamp)


def path_problems(paths: PathsSettings) -> list[str]:
    """What is wrong with the folders of the paths group, as this process sees them: each media
    root must be a readable folder, the scratch folder a writable one (blocking: file system)."""
    problems: list[str] = []
    for root in paths.media_roots or []:
        problems.extend(_folder_problems("media root", root, os.R_OK | os.X_OK, "readable"))
    if paths.scratch_dir is not None:
        access = os.R_OK | os.W_OK | os.X_OK
        problems.extend(_folder_problems("scratch folder", paths.scratch_dir, access, "writable"))
    return problems


def _folder_problems(what: str, path: str, mode: int, needs: str) -> list[str]:
    if "\x00" in path or not os.path.isabs(path):
        return [f"The {what} {path!r} must be an absolute path."]
    if not os.path.isdir(path):
        return [f"The {what} {path!r} does not exist (or is not a folder)."]
    if not os.access(path, mode):
        return [f"The {what} {path!r} is not {needs} by the server."]
    return []
