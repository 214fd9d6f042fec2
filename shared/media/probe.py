"""Probe a source in-process with PyAV: container, duration and the facts of every stream.

The wheel's ffmpeg has no ffprobe, so probing opens the source with PyAV (libavformat) and reads
only what `avformat_find_stream_info` reads. `probe` blocks; `probe_async` runs it in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from fractions import Fraction
from urllib.parse import urlsplit

import av
import av.error
import msgspec
from av.audio.codeccontext import AudioCodecContext
from av.codec.context import CodecContext
from av.container import InputContainer
from av.stream import Disposition, Stream
from av.video.codeccontext import VideoCodecContext

from shared.errors import SourceError

# AVColorTransferCharacteristic values of the two HDR transfers: PQ and HLG
_TRC_SMPTE2084 = 16
_TRC_ARIB_STD_B67 = 18
_KINDS = frozenset({"video", "audio", "subtitle", "data", "attachment"})
# AVFieldOrder: 0 unknown, 1 progressive, 2..5 the interlaced field orders
_FIELD_ORDER_PROGRESSIVE = 1


class StreamInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One stream of a source as the demuxer describes it."""

    index: int
    kind: str  # "video" | "audio" | "subtitle" | "data" | "attachment"
    codec: str | None = None
    profile: str | None = None
    width: int | None = None
    height: int | None = None
    pix_fmt: str | None = None
    frame_rate: float | None = None
    bit_rate: int | None = None
    channels: int | None = None
    sample_rate: int | None = None
    language: str | None = None
    hdr: bool = False
    interlaced: bool | None = None  # None: the demuxer does not say
    default: bool = False
    attached_pic: bool = False  # cover art: a video stream that is not the programme


class ProbeResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a source holds: container, duration when known, size, bit rate and streams."""

    container: str | None = None
    duration: float | None = None
    bit_rate: int | None = None
    size: int | None = None
    streams: list[StreamInfo] = []

    def video(self) -> StreamInfo | None:
        """The first video stream that is not an attached picture, or None."""
        return next((s for s in self.streams if s.kind == "video" and not s.attached_pic), None)

    def audio(self) -> StreamInfo | None:
        """The first audio stream, or None."""
        return next((s for s in self.streams if s.kind == "audio"), None)

    def subtitles(self) -> list[StreamInfo]:
        """Every subtitle stream, in source order."""
        return [s for s in self.streams if s.kind == "subtitle"]


def is_http(source: str) -> bool:
    """True when the source is an http(s) URL rather than a local path."""
    return urlsplit(source).scheme.lower() in ("http", "https")


def probe(
    source: str, *, timeout: float = 15.0, options: Mapping[str, str] | None = None
) -> ProbeResult:
    """Open `source` (local path or http(s) URL) and describe it. Blocks; see `probe_async`.

    `options` are libavformat's (shared.media.inputs: the proxy, protocols and TLS checks).

    Raises SourceError: retryable for network trouble and server errors, not retryable for
    client errors (401/403/404), missing files and data that is not a readable media file.
    """
    try:
        # "replace": one badly encoded tag must not make a playable file unreadable
        container = av.open(
            source,
            mode="r",
            options=dict(options or {}),
            timeout=(timeout, timeout),
            metadata_errors="replace",
        )
    except av.error.FFmpegError as exc:
        raise _source_error(exc, source, timeout) from exc
    # av.open can return an OutputContainer only for mode="w"
    assert isinstance(container, InputContainer)
    with container:
        result = _describe(container)
    if result.video() is None and result.audio() is None:
        raise SourceError(
            "The source contains no video or audio stream, so there is nothing to transcode.",
            retryable=False,
            details={"container": result.container},
        )
    return result


# timeout bounds PyAV's open and reads inside the thread, not the await: hence the noqa
async def probe_async(  # noqa: ASYNC109
    source: str, *, timeout: float = 15.0, options: Mapping[str, str] | None = None
) -> ProbeResult:
    """`probe` run in a worker thread, so the event loop keeps serving while the source opens."""
    return await asyncio.to_thread(probe, source, timeout=timeout, options=options)


def _describe(container: InputContainer) -> ProbeResult:
    streams = [_stream_info(s) for s in container.streams]
    return ProbeResult(
        container=container.format.name or None,
        duration=_duration(container),
        bit_rate=_positive(container.bit_rate),
        size=_positive(container.size),
        streams=streams,
    )


def _duration(container: InputContainer) -> float | None:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    longest = 0.0
    for stream in container.streams:
        if stream.duration is not None and stream.time_base is not None:
            longest = max(longest, float(stream.duration * stream.time_base))
    return longest if longest > 0 else None


def _stream_info(stream: Stream) -> StreamInfo:
    kind = stream.type if stream.type in _KINDS else "data"
    cc = stream.codec_context
    info = StreamInfo(
        index=stream.index,
        kind=kind,
        codec=_codec_name(cc),
        profile=stream.profile or None,
        bit_rate=_positive(cc.bit_rate) if cc is not None else None,
        language=_language(stream),
        default=Disposition.default in stream.disposition,
        attached_pic=Disposition.attached_pic in stream.disposition,
    )
    if isinstance(cc, VideoCodecContext):
        info = msgspec.structs.replace(
            info,
            width=_positive(cc.width),
            height=_positive(cc.height),
            pix_fmt=cc.pix_fmt,
            frame_rate=_rate(stream.average_rate) or _rate(stream.guessed_rate),
            hdr=cc.color_trc in (_TRC_SMPTE2084, _TRC_ARIB_STD_B67),
            interlaced=_interlaced(cc.field_order),
        )
    elif isinstance(cc, AudioCodecContext):
        info = msgspec.structs.replace(
            info, channels=_positive(cc.channels), sample_rate=_positive(cc.sample_rate)
        )
    return info


def _codec_name(cc: CodecContext | None) -> str | None:
    if cc is None:
        return None
    # the codec's own name ("subrip", "mp3"), not its decoder's ("srt", "mp3float")
    return cc.codec.canonical_name or cc.name or None


def _language(stream: Stream) -> str | None:
    language = stream.language or stream.metadata.get("language")
    return None if not language or language == "und" else language


def _interlaced(field_order: int) -> bool | None:
    if field_order <= 0:
        return None
    return field_order != _FIELD_ORDER_PROGRESSIVE


def _rate(rate: Fraction | None) -> float | None:
    return float(rate) if rate is not None and rate > 0 else None


def _positive(value: int | None) -> int | None:
    return value if value is not None and value > 0 else None


def _source_error(exc: av.error.FFmpegError, source: str, timeout: float) -> SourceError:
    """Turn a PyAV open failure into words a user can act on, and say whether to retry."""
    # strerror carries no file name, so a URL's api_key never lands in a message or a log
    why = exc.strerror or type(exc).__name__
    details = {"error": why, "errno": exc.errno}
    if isinstance(exc, av.error.HTTPNotFoundError):
        return SourceError(
            "The source server answered 404 Not Found; the item may have been moved or deleted.",
            retryable=False,
            details=details,
        )
    if isinstance(exc, av.error.HTTPUnauthorizedError | av.error.HTTPForbiddenError):
        unauthorized = isinstance(exc, av.error.HTTPUnauthorizedError)
        answer = "401 Unauthorized" if unauthorized else "403 Forbidden"
        return SourceError(
            f"The source server refused access ({answer}); check the API key in the source URL.",
            retryable=False,
            details=details,
        )
    if isinstance(exc, av.error.HTTPTooManyRequestsError):
        return SourceError(
            "The source server answered 429 Too Many Requests; it will be tried again later.",
            retryable=True,
            details=details,
        )
    if isinstance(exc, av.error.HTTPClientError):
        return SourceError(
            f"The source server rejected the request ({why}); check the source URL.",
            retryable=False,
            details=details,
        )
    if isinstance(exc, av.error.HTTPServerError):
        return SourceError(
            "The source server answered with a server error (5xx); it will be tried again later.",
            retryable=True,
            details=details,
        )
    if isinstance(exc, av.error.ExitError | av.error.TimeoutError):
        # PyAV's timeout interrupts the open, which libavformat reports as an immediate exit
        return SourceError(
            f"The source server did not answer within {timeout:g} s; it will be tried again later.",
            retryable=True,
            details={**details, "timed_out": True},
        )
    if isinstance(exc, av.error.InvalidDataError):
        return SourceError(
            f"The source is not a video ffmpeg can read: {why}.",
            retryable=False,
            details=details,
        )
    if isinstance(exc, av.error.FileNotFoundError) and not is_http(source):
        return SourceError(
            "The source file does not exist; check the path.", retryable=False, details=details
        )
    if isinstance(exc, av.error.PermissionError) and not is_http(source):
        return SourceError(
            "The source file cannot be read (permission denied).",
            retryable=False,
            details=details,
        )
    if isinstance(exc, av.error.ProtocolNotFoundError):
        return SourceError(
            "The source URL uses a protocol ffmpeg cannot read; use http(s) or a file path.",
            retryable=False,
            details=details,
        )
    if is_http(source):
        # refused/reset connections, DNS failures and other I/O trouble on the network
        return SourceError(
            f"The source server could not be reached ({why}); it will be tried again later.",
            retryable=True,
            details=details,
        )
    return SourceError(f"The source could not be opened: {why}.", retryable=False, details=details)
