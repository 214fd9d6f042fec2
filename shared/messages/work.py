"""Work items: what the scheduler publishes for a transcoder pool to pull."""

from __future__ import annotations

import msgspec

from shared.media.presets import PresetSpec
from shared.messages.records import Destination, Timestamp


class TranscodeWork(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="transcode"):
    """Transcode one generation of one rendition."""

    key: str
    generation: int
    dispatch_seq: int
    source: str
    profile: str
    spec: PresetSpec | None = None
    container: str
    owner: str = ""
    destination: Destination | None = None
    output_name: str = ""
    duration_hint: float | None = None
    jobs: list[str] = []
    dispatched_at: Timestamp


WORK_DECODER = msgspec.json.Decoder(TranscodeWork)
ENCODER = msgspec.json.Encoder()
