"""Work items: what the scheduler publishes for a transcoder pool to pull.

A rendition is transcoded whole (`TranscodeWork`) or, once a transcoder has split it, as parts:
each span of its video and its audio (`SegmentWork`), then the join of them all (`JoinWork`).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.media.presets import PresetSpec
from shared.messages.records import Destination, PartName, Timestamp


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


class SegmentWork(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="segment"):
    """Encode one part of a split rendition, a span of its video or its whole audio, into a file
    of the store's parts area."""

    key: str  # the rendition
    generation: int
    part: PartName
    kind: Literal["video", "audio"]
    dispatch_seq: int
    source: str  # the rendition's source (its owner's credentials apply)
    stored_source: str = ""  # the blob key of its stored copy, read instead when set
    profile: str
    spec: PresetSpec | None = None
    container: str  # the final container (decides the audio's codec, as for a whole transcode)
    encoder: str = ""  # video: the encoder every segment of the rendition uses
    start: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    end: float | None = None  # None: to the end of the source
    frames: Annotated[int, msgspec.Meta(ge=0)] = 0
    owner: str = ""
    jobs: list[str] = []
    dispatched_at: Timestamp


class JoinWork(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="join"):
    """Join a split rendition's stored parts into its output (concat, streams copied), stored as
    its whole transcode would have been. The parts are read from their records, not carried here
    (a message would grow with the source)."""

    key: str
    generation: int
    dispatch_seq: int
    profile: str
    spec: PresetSpec | None = None
    container: str
    owner: str = ""
    destination: Destination | None = None
    output_name: str = ""
    jobs: list[str] = []
    dispatched_at: Timestamp


Work = TranscodeWork | SegmentWork | JoinWork

# Whole transcodes only: what transcoders decode until they run parts.
WORK_DECODER = msgspec.json.Decoder(TranscodeWork)
# Every kind of work item on a pool's subject.
WORKS_DECODER = msgspec.json.Decoder(Work)
ENCODER = msgspec.json.Encoder()
