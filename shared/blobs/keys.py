"""Where things go in the service's blob store: one place for the layout of its keys, for the
services that write them and the storage service that sweeps them."""

from __future__ import annotations

OUTPUTS = "outputs/"
PARTS = "parts/"


def output_key(rendition: str, generation: int, attempt: int, extension: str) -> str:
    """Where an attempt's output is stored."""
    return f"{OUTPUTS}{rendition[:2]}/{rendition}/{generation}-{attempt}.{extension}"


def _parts_folder(rendition: str, generation: int) -> str:
    return f"{PARTS}{rendition[:2]}/{rendition}/{generation}/"


def part_key(rendition: str, generation: int, part: str, attempt: int, extension: str) -> str:
    """Where an attempt at one part of a split rendition stores its file: under `parts/`, never
    `outputs/` (storage sweeps unrecorded outputs), one file per attempt (a takeover never writes
    over a file another attempt may still be writing)."""
    return f"{_parts_folder(rendition, generation)}{part}-{attempt}.{extension}"


def source_copy_key(rendition: str, generation: int) -> str:
    """Where a split rendition's source is stored first when it cannot be read by range."""
    return f"{_parts_folder(rendition, generation)}source.mkv"


def parts_owner(key: str) -> tuple[str, str] | None:
    """The rendition and generation a file under `parts/` belongs to; None for another key."""
    path = key.split("/")
    if not key.startswith(PARTS) or len(path) < 5:
        return None
    return path[2], path[3]
