"""What each capability check is and how it is tried: the default list, the hardware device a
check stands on, and the tiny ffmpeg run (argv) for each kind.

Pure: nothing here runs ffmpeg. `shared.media.capabilities` runs these and re-exports the public
names: import them from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

CheckKind = Literal["encoder", "decoder", "hwaccel", "filter"]

DEFAULT_CHECKS: tuple[tuple[str, CheckKind], ...] = (
    ("libx264", "encoder"),
    ("libx265", "encoder"),
    ("libsvtav1", "encoder"),
    ("h264_nvenc", "encoder"),
    ("hevc_nvenc", "encoder"),
    ("av1_nvenc", "encoder"),
    ("h264_vaapi", "encoder"),
    ("hevc_vaapi", "encoder"),
    ("h264_qsv", "encoder"),
    ("hevc_qsv", "encoder"),
    ("cuda", "hwaccel"),
    ("vaapi", "hwaccel"),
    ("qsv", "hwaccel"),
    ("cuda:h264", "decoder"),
    ("cuda:hevc", "decoder"),
    ("cuda:av1", "decoder"),
    ("vaapi:h264", "decoder"),
    ("qsv:h264", "decoder"),
    ("scale_cuda", "filter"),
    ("scale_vaapi", "filter"),
    ("scale_qsv", "filter"),
)

VAAPI_DEVICE = "/dev/dri/renderD128"
SAMPLE_ENCODERS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
_SOURCE = ["-f", "lavfi", "-i", "color=size=256x144:rate=25:duration=0.2"]
# NVDEC refuses HEVC below 144 lines and AV1 below 128: the decode samples are larger
_SAMPLE_SOURCE = "testsrc2=size=320x240:rate=25:duration=0.2"
_INIT_DEVICE = {"cuda": "cuda=hw", "vaapi": f"vaapi=hw:{VAAPI_DEVICE}", "qsv": "qsv=hw"}
_UPLOAD = {"cuda": "hwupload_cuda", "vaapi": "hwupload", "qsv": "hwupload=extra_hw_frames=16"}
_SUFFIX_DEVICE = {"nvenc": "cuda", "cuda": "cuda", "vaapi": "vaapi", "qsv": "qsv"}


def kind_of(name: str) -> CheckKind:
    """The kind a check name implies ("cuda:h264": decoder, "cuda": hwaccel, "scale_*": filter)."""
    if ":" in name:
        return "decoder"
    if name in _INIT_DEVICE:
        return "hwaccel"
    return "filter" if name.startswith("scale_") else "encoder"


def device_of(name: str, kind: CheckKind) -> str | None:
    """The hardware device a check needs, by its name ("h264_nvenc": cuda, "vaapi:h264": vaapi)."""
    if kind == "hwaccel":
        return None
    if kind == "decoder":
        return name.partition(":")[0]
    return _SUFFIX_DEVICE.get(name.partition("=")[0].rpartition("_")[2])


def sample_argv(ffmpeg: str, encoder: str, path: Path) -> list[str]:
    """The ffmpeg run that encodes a decode check's few-frame sample clip to `path`."""
    argv = [*_head(ffmpeg), "-f", "lavfi", "-i", _SAMPLE_SOURCE, "-c:v", encoder]
    return [*argv, "-pix_fmt", "yuv420p", "-frames:v", "5", "-y", str(path)]


def check_argv(ffmpeg: str, name: str, kind: CheckKind, sample: Path | None) -> list[str]:
    """The ffmpeg run that succeeds only if the check works; decoders read `sample`."""
    null = ["-f", "null", "-"]
    device = device_of(name, kind)
    if kind == "hwaccel":
        init = ["-init_hw_device", _INIT_DEVICE.get(name, f"{name}=hw")]
        return [*_head(ffmpeg), *init, *_SOURCE, "-frames:v", "1", *null]
    if kind == "encoder":
        upload: list[str] = []
        if device in ("vaapi", "qsv"):  # NVENC takes software frames; these need them uploaded
            upload = [*_on_device(device), *_SOURCE, "-vf", f"format=nv12,{_UPLOAD[device]}"]
        return [*_head(ffmpeg), *(upload or _SOURCE), "-c:v", name, "-frames:v", "3", *null]
    if kind == "filter":
        expr = f"{name}=128:72" if name.startswith("scale_") and "=" not in name else name
        if device is None:  # a software filter, used as written ("name=args")
            return [*_head(ffmpeg), *_SOURCE, "-vf", expr, *null]
        chain = f"format=nv12,{_UPLOAD.get(device, 'hwupload')},{expr},hwdownload,format=nv12"
        return [*_head(ffmpeg), *_on_device(device), *_SOURCE, "-vf", chain, *null]
    hwaccel, _, codec = name.partition(":")
    decode = ["-hwaccel", hwaccel, "-hwaccel_output_format", hwaccel]
    if hwaccel == "vaapi":
        decode += ["-hwaccel_device", VAAPI_DEVICE]
    elif hwaccel == "qsv":
        decode += ["-c:v", f"{codec}_qsv"]
    # ffmpeg quietly decodes in software when the hwaccel fails; hwdownload then has no GPU
    # frames to take, so that fallback fails the check instead of passing it
    return [*_head(ffmpeg), *decode, "-i", str(sample), "-vf", "hwdownload,format=nv12", *null]


def _head(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]


def _on_device(device: str) -> list[str]:
    return ["-init_hw_device", _INIT_DEVICE.get(device, f"{device}=hw"), "-filter_hw_device", "hw"]
