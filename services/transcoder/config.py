"""Transcoder settings."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import CommonSettings
from shared.media.inputs import SourceTLS, source_tls
from shared.outbound import OutboundPolicy


class TranscoderSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """How one transcoder instance pulls and runs work."""

    pool: str = "default"
    # Transcodes this instance runs at once.
    slots: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Seconds without a heartbeat after which JetStream hands the work to another transcoder.
    ack_wait: Annotated[float, msgspec.Meta(ge=1)] = 15.0
    # Attempts (crashes included) before a rendition fails for good.
    max_attempts: Annotated[int, msgspec.Meta(ge=1)] = 3
    # Where ffmpeg writes before the output is stored; default <data_dir>/scratch.
    scratch_dir: str = ""
    # ffmpeg executable; default: the one from the imageio-ffmpeg wheel.
    ffmpeg: str = ""
    # Encoder threads per transcode; 0: ffmpeg's choice (every core). Set it to cores / slots
    # when several transcoders (or slots) share a machine.
    ffmpeg_threads: Annotated[int, msgspec.Meta(ge=0, le=256)] = 0
    # CPUs this transcoder and its ffmpeg run on, as a Linux CPU list ("0-3,6"); "": any. Gives
    # each of several transcoders on one machine cores of its own (ffmpeg's demux, decode, filter,
    # encode and mux threads included), as Kubernetes' static CPU manager does for pods.
    cpus: str = ""
    probe_timeout: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # Seconds between progress writes.
    progress_interval: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    # On SIGTERM: seconds to let running transcodes finish before handing them back.
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # The node's cached capability probe; default <data_dir>/capabilities.json.
    capabilities_file: str = ""
    # Limits of one attempt, so an endless or dripping source cannot hold a slot or fill the
    # scratch disk (services/transcoder/limits.py): wall clock per attempt (probe, encode, store);
    max_transcode_seconds: Annotated[float, msgspec.Meta(gt=0)] = 21600.0
    # seconds ffmpeg may make no progress (output time, bytes written) before the attempt ends;
    stall_seconds: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # the longest source transcoded: longer ones, and live ones, are refused at probe (a source
    # of unknown duration is stopped once its output passes it);
    max_source_seconds: Annotated[float, msgspec.Meta(gt=0)] = 43200.0
    # the largest output (ffmpeg's -fs): an output that reaches it fails and is not stored.
    max_output_bytes: Annotated[int, msgspec.Meta(ge=1)] = 100 * 1024**3
    # The Jellyfin server (JELLYFIN_URL, as the gateway has it): sources there are always allowed.
    jellyfin_url: str = ""
    # Verify the TLS certificates of https sources (false: accept any certificate).
    source_tls_verify: bool = True
    # CA bundle https sources are verified against; "": the system's bundle.
    source_ca_file: str = ""
    # Segment-parallel encoding (services/transcoder/split.py): a source at least this long whose
    # video is re-encoded is split into segments of about `segment_seconds` (cut on its
    # keyframes), each a work item any transcoder of the pool may run; 0 turns splitting off.
    segment_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    segment_min_seconds: Annotated[float, msgspec.Meta(ge=0)] = 600.0

    def __post_init__(self) -> None:
        super().__post_init__()
        cpu_list(self.cpus)  # a malformed list is a configuration error at start
        source_tls(self.source_tls_verify, self.source_ca_file)  # a missing CA file too

    @property
    def source_policy(self) -> OutboundPolicy:
        """Where sources may lead: the operator's networks, the Jellyfin server and the
        service's own store endpoint (object sources are read through its signed URLs)."""
        trusted = [url for url in (self.jellyfin_url, self.store_endpoint) if url]
        return OutboundPolicy.parse(self.outbound_allow, trust=trusted)

    @property
    def source_tls(self) -> SourceTLS:
        return source_tls(self.source_tls_verify, self.source_ca_file)

    @property
    def cpu_set(self) -> frozenset[int]:
        """The CPUs to run on; empty: any."""
        return cpu_list(self.cpus)


MAX_CPUS = 8192  # Linux's largest NR_CPUS


def cpu_list(text: str) -> frozenset[int]:
    """A Linux CPU list ("0-3,6") as a set of CPU numbers; "" is the empty set."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            low, high = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"cpus: {part!r} is not a CPU number or range such as 0-3") from None
        if not 0 <= low <= high < MAX_CPUS:
            raise ValueError(f"cpus: {part!r} is not a CPU number or range such as 0-3")
        cpus.update(range(low, high + 1))
    return frozenset(cpus)
