"""Rendition profiles (what a transcode produces) and output containers (how it is packaged).

A Profile is internal: the gateway never builds one from request text. User-facing presets
(`shared.media.presets`) are validated and turned into Profiles there.
"""

from __future__ import annotations

import msgspec

from shared.errors import BadRequest

# Pixel formats a source may have and still be stream-copied into a rendition of that codec:
# 8-bit 4:2:0 for H.264 (what every player decodes), 8/10-bit 4:2:0 for HEVC Main/Main 10 and AV1.
COPYABLE_PIX_FMTS: dict[str, frozenset[str]] = {
    "h264": frozenset({"yuv420p", "yuvj420p"}),
    "hevc": frozenset({"yuv420p", "yuvj420p", "yuv420p10le"}),
    "av1": frozenset({"yuv420p", "yuvj420p", "yuv420p10le"}),
}


class Profile(msgspec.Struct, frozen=True, kw_only=True):
    """How a rendition is encoded, and the limits under which a source is copied instead."""

    name: str
    video_codec: str | None = "h264"  # codec of the rendition (a source in it may be copied)
    encoder: str = "libx264"
    preset: str = "veryfast"
    crf: int = 23
    max_video_bitrate: int | None = 8_000_000  # bits/s: -maxrate, and the most a copy may use
    bufsize: int | None = 16_000_000
    max_width: int = 1920
    max_height: int = 1080
    max_fps: float | None = None  # -fpsmax, and the most a copied source may have
    deinterlace: bool = False
    pix_fmt: str = "yuv420p"
    h264_profile: str = "high"
    h264_level: str = "4.1"
    gop: int | None = None  # frames from one keyframe to the next at most (-g); None: encoder's
    audio_codec: str | None = "aac"  # None: the rendition has no audio
    audio_encoder: str = "aac"
    audio_bitrate: int = 160_000
    audio_channels: int = 2
    allow_copy: bool = True
    keep_subtitles: bool = True  # keep subtitle streams when the container can carry them


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True):
    """An output container: its ffmpeg muxer, MIME type, file extension and what it can carry."""

    name: str
    muxer: str
    mime: str
    extension: str
    faststart: bool = False  # moov atom first, so players start before the download ends
    # MP4 in fragments (moof+mdat) after an empty moov: written front to back, never patched
    fragmented: bool = False
    keeps_subtitles: bool = False
    video_codecs: frozenset[str] = frozenset()  # rendition codecs the muxer accepts
    audio_codecs: frozenset[str] = frozenset()

    @property
    def sequential(self) -> bool:
        """The muxer writes the file front to back and never goes back to patch it, so its
        bytes can be uploaded while ffmpeg writes them."""
        return self.fragmented or self.muxer == "mpegts"


CONTAINERS: dict[str, ContainerSpec] = {
    "mp4": ContainerSpec(
        name="mp4",
        muxer="mp4",
        mime="video/mp4",
        extension=".mp4",
        faststart=True,
        keeps_subtitles=False,
        video_codecs=frozenset({"h264", "hevc", "av1"}),
        audio_codecs=frozenset({"aac", "opus"}),
    ),
    "mkv": ContainerSpec(
        name="mkv",
        muxer="matroska",
        mime="video/x-matroska",
        extension=".mkv",
        faststart=False,
        keeps_subtitles=True,
        video_codecs=frozenset({"h264", "hevc", "av1"}),
        audio_codecs=frozenset({"aac", "opus"}),
    ),
    "webm": ContainerSpec(
        name="webm",
        muxer="webm",
        mime="video/webm",
        extension=".webm",
        faststart=False,
        keeps_subtitles=False,
        video_codecs=frozenset({"av1"}),
        audio_codecs=frozenset({"opus"}),
    ),
    "fmp4": ContainerSpec(
        name="fmp4",
        muxer="mp4",
        mime="video/mp4",
        extension=".mp4",
        fragmented=True,
        keeps_subtitles=False,
        video_codecs=frozenset({"h264", "hevc", "av1"}),
        audio_codecs=frozenset({"aac", "opus"}),
    ),
    "ts": ContainerSpec(
        name="ts",
        muxer="mpegts",
        mime="video/mp2t",
        extension=".ts",
        keeps_subtitles=False,
        video_codecs=frozenset({"h264", "hevc"}),
        audio_codecs=frozenset({"aac"}),
    ),
    "m4a": ContainerSpec(
        name="m4a",
        muxer="ipod",  # ffmpeg's muxer for .m4a: MP4 with the M4A brand
        mime="audio/mp4",
        extension=".m4a",
        faststart=True,
        keeps_subtitles=False,
        video_codecs=frozenset(),
        audio_codecs=frozenset({"aac"}),
    ),
}


def get_container(ext: str) -> ContainerSpec:
    """The container for an extension ("mp4", ".MP4", "mkv"); BadRequest for anything else."""
    key = ext.strip().lower().removeprefix(".")
    try:
        return CONTAINERS[key]
    except KeyError:
        known = ", ".join(sorted(CONTAINERS))
        raise BadRequest(
            f"Unsupported container {ext!r}; use one of: {known}.",
            details={"container": ext, "allowed": sorted(CONTAINERS)},
        ) from None


def check_container(profile: Profile, container: ContainerSpec) -> None:
    """BadRequest when `container` cannot carry what `profile` makes (H.264 in WebM, video in m4a).

    For faces that choose the container apart from the profile (Streamyfin's fileExtension).
    """
    wrong: list[str] = []
    if profile.video_codec is not None and profile.video_codec not in container.video_codecs:
        wrong.append(f"{profile.video_codec} video")
    if profile.audio_codec is not None and profile.audio_codec not in container.audio_codecs:
        wrong.append(f"{profile.audio_codec} audio")
    if wrong:
        raise BadRequest(
            f"Container {container.name} cannot carry {' and '.join(wrong)} "
            f"(profile {profile.name}); choose another container.",
            details={"container": container.name, "profile": profile.name},
        )
