"""Storage service settings."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import CommonSettings


class StorageSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """How the storage service keeps the blob store bounded and measured."""

    # Seconds between measurements and sweeps for files no rendition records.
    sweep_interval: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    # An unrecorded file younger than this may be an output about to be recorded: leave it.
    orphan_grace: Annotated[float, msgspec.Meta(ge=0)] = 600.0
