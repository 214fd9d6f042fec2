"""The transcoder fleet in KV: pools, transcoding settings, live instances with their GPU health
and capabilities, and transcode sessions (one per attempt, for operators and bug reports)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec

from shared.gpu import GpuReport
from shared.media.capabilities import Capabilities
from shared.messages.records import Timestamp

DEFAULT_POOL = "default"
POOL_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
_POOL_ID = re.compile(POOL_ID_PATTERN)

# What a pool's transcoders run on; it bounds the pipelines they may choose.
Device = Literal["cpu", "nvidia", "vaapi", "qsv", "any"]
DEVICE_PIPELINES: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu",),
    "nvidia": ("nvenc", "nvdec", "cpu"),
    "vaapi": ("vaapi", "cpu"),
    "qsv": ("qsv", "cpu"),
    "any": ("nvenc", "nvdec", "vaapi", "qsv", "cpu"),
}
HardwarePreference = Literal["auto", "gpu", "cpu"]
GpuState = Literal["none", "ok", "degraded", "bad"]


def valid_pool_id(pool_id: str) -> bool:
    return bool(_POOL_ID.match(pool_id))


class Pool(msgspec.Struct, frozen=True, kw_only=True):
    """A set of transcoders that take work from one subject (`<ns>.work.<id>`)."""

    id: str
    device: Device = "any"
    # renditions of this pool transcoding at once, across its transcoders; 0: the scheduler's
    # MAX_CONCURRENT_JOBS (what the default pool has until an operator sets it)
    concurrency: int = 0
    enabled: bool = True  # a disabled pool keeps its queue but is given no work
    description: str = ""
    # Pools whose transcoders may encode this pool's video segments (a split job's video parts)
    # when it has no free slot; the split's CPU encoder is kept, so a GPU helper only decodes.
    segment_helpers: list[str] = []
    created_at: Timestamp = 0.0
    updated_at: Timestamp = 0.0


class TranscodingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Fleet-wide settings; new jobs see a change at once."""

    # renditions transcoding at once over every pool; None: only the pools' own limits
    global_concurrency: int | None = None
    hardware_preference: HardwarePreference = "auto"
    max_height: int | None = None  # quality ceilings every rendition is capped to
    max_video_bitrate_kbps: int | None = None
    updated_at: Timestamp = 0.0


class PipelineState(msgspec.Struct, frozen=True, kw_only=True):
    """A pipeline this instance could use, and whether it is offered now."""

    name: str
    offered: bool
    reason: str = ""  # why not offered: not found working, failed mid-job, GPU unhealthy


class WorkerInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A live transcoder instance; its key expires when heartbeats stop."""

    id: str
    host: str
    pool: str
    slots: int
    busy: int
    renditions: list[str] = []
    jobs: list[str] = []  # the jobs those renditions serve
    ffmpeg: str = ""
    started_at: Timestamp
    updated_at: Timestamp
    draining: bool = False
    gpu_state: GpuState = "none"
    gpu_reason: str = ""  # why GPU work is not taken (or why the GPU is degraded)
    gpu: GpuReport | None = None
    pipelines: list[PipelineState] = []
    capabilities_probed_at: Timestamp | None = None
    capabilities_ready: bool = False
    # What this transcoder can do beyond whole transcodes ("parts": runs a split rendition's parts).
    features: list[str] = []


class ThroughputSample(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """[seconds since start, fps, speed (x realtime)]"""

    t: float
    fps: float | None
    speed: float | None


SessionState = Literal["running", "succeeded", "failed", "cancelled", "stopped"]


class TranscodeSession(msgspec.Struct, kw_only=True):
    """One attempt of one rendition (or of one of its parts) on one transcoder: what ran and how
    it went."""

    id: str  # <rendition key>-<generation>-<attempt>, or ...-<generation>-<part>-<attempt>
    rendition: str
    generation: int
    attempt: int
    jobs: list[str] = []
    owner: str = ""
    worker: str
    host: str
    pool: str
    state: SessionState = "running"
    source: str = ""  # credentials scrubbed
    probe: dict[str, Any] | None = None
    pipeline: str = "cpu"
    pipeline_reason: str = ""
    fell_back_from: str = ""  # a hardware pipeline that failed mid-job
    argv: list[str] = []  # credentials scrubbed
    stderr_tail: str = ""
    output: dict[str, Any] | None = None
    error: str = ""
    throughput: list[ThroughputSample] = []
    started_at: Timestamp
    updated_at: Timestamp
    ended_at: Timestamp | None = None
    part: str = ""  # the part this attempt ran ("" for a whole transcode or its planning)
    split: int = 0  # the attempt split the rendition into this many video parts


PoolInput = Annotated[str, msgspec.Meta(pattern=POOL_ID_PATTERN)]


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    """One node's capability probe, as kept per host."""

    host: str
    pool: str
    worker: str
    capabilities: Capabilities
