"""Make tiny real media files with the real ffmpeg, for tests. Plain functions, no fixtures.

Clips come from lavfi sources (testsrc2 for picture, sine for sound), are a few seconds long and
small, and are encoded with the fastest presets, so a test can afford several of them.
"""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import imageio_ffmpeg

MUXERS = {"mp4": "mp4", "mkv": "matroska", "mpegts": "mpegts", "ts": "mpegts"}
SUBTITLE_CODECS = {"mp4": "mov_text", "mkv": "srt"}
_VIDEO_ARGS: dict[str, list[str]] = {
    "libx264": ["-preset", "ultrafast"],
    "libx265": ["-preset", "ultrafast", "-x265-params", "log-level=error"],
    "libsvtav1": ["-preset", "11"],
    "mpeg4": ["-q:v", "5"],
}
_SRT = "1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\nWorld\n"


def ffmpeg_exe() -> str:
    """The ffmpeg binary of the imageio-ffmpeg wheel."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())


def make_clip(
    path: str | Path,
    *,
    seconds: float = 2.0,
    width: int = 320,
    height: int = 240,
    fps: int = 15,
    vcodec: str | None = "libx264",
    pix_fmt: str = "yuv420p",
    acodec: str | None = "aac",
    channels: int = 2,
    container: str = "mp4",
    subtitles: bool = False,
    interlaced: bool = False,
    language: str | None = None,
    extra_args: Sequence[str] = (),
) -> Path:
    """Encode a test clip at `path` and return the path. Blocks (well under a second).

    vcodec: "libx264" (h264), "libx265" (hevc), "libsvtav1" (av1), "mpeg4", or None for no video.
    acodec: "aac", "ac3", "mp2", "libopus" (mkv only), or None for no audio.
    channels: 1, 2, or 6 for 5.1 (mp2 allows at most 2).
    container: "mp4" (moov at the end, as a plain muxer writes it), "mkv" or "mpegts".
    subtitles: add a two-cue text track (mov_text in mp4, SubRip in mkv).
    interlaced: encode interlaced (field) pictures; libx264 only.
    """
    out = Path(path)
    if vcodec is None and acodec is None:
        raise ValueError("a clip needs video, audio or both")
    if interlaced and vcodec != "libx264":
        raise ValueError("interlaced clips are made with libx264")
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    maps: list[str] = []
    inputs = 0
    if vcodec is not None:
        argv += ["-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}"]
        maps += ["-map", f"{inputs}:v"]
        inputs += 1
    if acodec is not None:
        argv += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
        maps += ["-map", f"{inputs}:a"]
        inputs += 1
    if subtitles:
        if container not in SUBTITLE_CODECS:
            raise ValueError(f"no subtitle codec for {container}")
        srt = out.with_suffix(".srt")
        srt.write_text(_SRT)
        argv += ["-i", str(srt)]
        maps += ["-map", f"{inputs}:s"]
    argv += maps
    if vcodec is not None:
        argv += ["-c:v", vcodec, *_VIDEO_ARGS.get(vcodec, []), "-pix_fmt", pix_fmt, "-g", str(fps)]
        if vcodec == "libx265" and container == "mp4":
            argv += ["-tag:v", "hvc1"]
        if interlaced:
            argv += ["-flags", "+ildct+ilme"]
    if acodec is not None:
        argv += ["-c:a", acodec, "-ac", str(channels)]
        if language:
            argv += ["-metadata:s:a:0", f"language={language}"]
    if subtitles:
        argv += ["-c:s", SUBTITLE_CODECS[container]]
    argv += ["-t", f"{seconds:g}", *extra_args, "-f", MUXERS[container], str(out)]
    _run(argv)
    return out


def make_text_file(path: str | Path, text: str = "this is not a video\n") -> Path:
    """A file no demuxer accepts, for 'not a video' cases."""
    out = Path(path)
    out.write_text(text)
    return out


def slow_lavfi_argv(
    output: str | Path, *, seconds: float = 60.0, progress: bool = True
) -> list[str]:
    """An ffmpeg argv that reads a lavfi source in real time (-re), so it runs for `seconds`."""
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    if progress:
        argv += ["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"]
    argv += ["-re", "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate=10:duration={seconds:g}"]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", "-f", "mp4", str(output)]
    return argv


def mp4_top_level_boxes(path: str | Path) -> list[str]:
    """The types of an MP4 file's top-level boxes, in file order ("ftyp", "moov", "mdat"...)."""
    boxes: list[str] = []
    with open(path, "rb") as f:
        while header := f.read(8):
            if len(header) < 8:
                break
            size, kind = struct.unpack(">I4s", header)
            boxes.append(kind.decode("latin-1"))
            if size == 1:  # 64-bit size follows the type
                size = struct.unpack(">Q", f.read(8))[0] - 8
            elif size == 0:  # box runs to the end of the file
                break
            f.seek(size - 8, 1)
    return boxes


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(argv)}\n{done.stderr}")
