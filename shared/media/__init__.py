"""The media layer: probe sources, choose copy or encode, build and run ffmpeg."""

from shared.media.ffmpeg import (
    STDERR_TAIL_CHARS,
    FfmpegProgress,
    FfmpegResult,
    FfmpegRun,
    classify_failure,
    default_ffmpeg,
    ffmpeg_version,
    parse_progress,
    run_ffmpeg,
)
from shared.media.plan import Plan, build_args, fit_size, make_plan
from shared.media.probe import ProbeResult, StreamInfo, is_http, probe, probe_async
from shared.media.profiles import (
    CONTAINERS,
    DEFAULT_PROFILE,
    PROFILES,
    ContainerSpec,
    Profile,
    get_container,
    get_profile,
)

__all__ = [
    "CONTAINERS",
    "DEFAULT_PROFILE",
    "PROFILES",
    "STDERR_TAIL_CHARS",
    "ContainerSpec",
    "FfmpegProgress",
    "FfmpegResult",
    "FfmpegRun",
    "Plan",
    "ProbeResult",
    "Profile",
    "StreamInfo",
    "build_args",
    "classify_failure",
    "default_ffmpeg",
    "ffmpeg_version",
    "fit_size",
    "get_container",
    "get_profile",
    "is_http",
    "make_plan",
    "parse_progress",
    "probe",
    "probe_async",
    "run_ffmpeg",
]
