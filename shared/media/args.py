"""Turn a Plan and a Profile into the ffmpeg argv.

Every option and value here comes from a Profile (built by our own code from validated, enum-only
presets) and numbers formatted here; nothing a request sends reaches the argv as free text, except
the source (always the argument of `-i`) and the output path (always last).
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import ffmpeg as ffmpeg_python

from shared.media.pipelines import (
    HARDWARE_CODECS,
    PIPELINES,
    PipelineChoice,
    hardware_encoder,
)
from shared.media.plan import Plan
from shared.media.presets import SVT_AV1_PRESETS
from shared.media.probe import is_http
from shared.media.profiles import ContainerSpec, Profile

RECONNECT_ARGS = {"reconnect": 1, "reconnect_on_network_error": 1, "reconnect_delay_max": 5}
# fail (and let the reconnect logic retry) instead of waiting forever on a stalled server
HTTP_RW_TIMEOUT_US = 30_000_000
# bwdif on frames marked interlaced only, one output frame per input frame
DEINTERLACE_FILTER = "bwdif=mode=send_frame:parity=auto:deint=interlaced"
# x265 logs every encode's settings at "info"; errors are what a failed job needs
X265_PARAMS = "log-level=error"
# a fragment per keyframe after an empty moov: playable from the first fragment, no seeking back
FRAGMENTED_MOVFLAGS = "+frag_keyframe+empty_moov+default_base_moof"
OPUS_MAX_BITRATE_PER_CHANNEL = 256_000

# Hardware pipelines (shared.media.pipelines). Values still come from the Profile, mapped here.
# decode on the GPU and keep the frames there for the scale_cuda/bwdif_cuda filters
CUDA_DECODE_ARGS = {"hwaccel": "cuda", "hwaccel_output_format": "cuda"}
# bwdif on CUDA frames, same settings as DEINTERLACE_FILTER (present in the wheel's ffmpeg 9.0.2)
CUDA_DEINTERLACE_FILTER = "bwdif_cuda=mode=send_frame:parity=auto:deint=interlaced"
VAAPI_DEVICE = "/dev/dri/renderD128"
QSV_DEVICE_ARGS = ["-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"]
# QSV encoders keep frames in flight beyond the upload's own pool
QSV_EXTRA_HW_FRAMES = 64
# GPU frames carry a software layout: NV12 for 8-bit 4:2:0, P010 for 10-bit
HW_FRAME_FORMATS = {"yuv420p": "nv12", "yuvj420p": "nv12", "yuv420p10le": "p010le"}
# NVENC takes yuv420p as it is, but 10-bit only as P010
NVENC_PIX_FMTS = {"yuv420p10le": "p010le"}
# x264 speed names onto NVENC's p1 (fastest) .. p7 (best) and QSV's veryfast .. veryslow
NVENC_PRESETS = {
    "ultrafast": "p1",
    "superfast": "p2",
    "veryfast": "p3",
    "faster": "p4",
    "fast": "p4",
    "medium": "p5",
    "slow": "p6",
    "slower": "p7",
    "veryslow": "p7",
}
QSV_PRESETS = {
    "ultrafast": "veryfast",
    "superfast": "veryfast",
    "veryfast": "veryfast",
    "faster": "faster",
    "fast": "fast",
    "medium": "medium",
    "slow": "slow",
    "slower": "slower",
    "veryslow": "veryslow",
}
# an AV1 profile carries SVT-AV1's preset number; read it back as the speed name it came from
_SPEED_OF_SVT_PRESET = {str(number): speed for speed, number in SVT_AV1_PRESETS.items()}


def build_args(
    ffmpeg: str,
    source: str,
    output: str,
    plan: Plan,
    profile: Profile,
    container: ContainerSpec,
    *,
    progress: bool = True,
    http_source: bool | None = None,
    pipeline: PipelineChoice | None = None,
    threads: int = 0,
    input_options: Mapping[str, str] | None = None,
) -> list[str]:
    """The full ffmpeg argv (binary first, output path last) that carries out `plan`.

    `input_options` go before `-i` (shared.media.inputs: the proxy, protocols and TLS checks).

    `pipeline` (from `choose_pipeline`) moves decoding, scaling and encoding onto a GPU; None or
    "cpu", or a plan that encodes no video, gives the software argv. ValueError when the choice
    does not fit the profile (its encoder is for another codec).
    """
    hardware = _hardware_pipeline(plan, profile, pipeline)
    global_args = ["-hide_banner", "-nostdin", "-y", "-loglevel", "error"]
    if progress:
        global_args += ["-progress", "pipe:1", "-nostats", "-stats_period", "0.5"]
    input_kwargs: dict[str, Any] = {}
    if is_http(source) if http_source is None else http_source:
        input_kwargs.update(RECONNECT_ARGS, rw_timeout=HTTP_RW_TIMEOUT_US)
    input_kwargs.update(input_options or {})
    if hardware is not None:
        global_args += _device_args(hardware)
        if _gpu_frames(hardware):
            input_kwargs.update(CUDA_DECODE_ARGS)
    if threads > 0:
        # decoder and filter threads too, so a transcode uses about `threads` cores in all
        input_kwargs["threads"] = threads
        global_args += ["-filter_threads", str(threads)]
    source_node = ffmpeg_python.input(source, **input_kwargs)

    streams: list[Any] = []
    # "V" skips attached pictures (cover art), which "v" would pick when it comes first
    if plan.video != "none":
        streams.append(source_node["V:0?"])
    if plan.audio != "none":
        streams.append(source_node["a:0?"])
    if plan.subtitles:
        streams.append(source_node["s?"])
    if not streams:
        raise ValueError("the plan maps no stream: the source has neither video nor audio")

    kwargs: dict[str, Any] = {"format": container.muxer}
    if threads > 0:
        # encoder threads: one transcoder slot per core scales out instead of sharing cores
        kwargs["threads"] = threads
    kwargs.update(_video_kwargs(plan, profile, container, hardware))
    kwargs.update(_audio_kwargs(plan, profile))
    if plan.subtitles:
        kwargs["c:s"] = plan.subtitle_codec
    else:
        kwargs["sn"] = None
    if container.fragmented:
        kwargs["movflags"] = FRAGMENTED_MOVFLAGS
    elif container.faststart:
        kwargs["movflags"] = "+faststart"
    # ffmpeg-python sorts the output options by name, so argv order does not depend on this code
    node = ffmpeg_python.output(*streams, output, **kwargs)
    argv: list[str] = node.compile(cmd=[ffmpeg, *global_args])
    return [str(arg) for arg in argv]


def rate_text(fps: float) -> str:
    """A frame rate as ffmpeg reads it: "30", "2997/100", "1/2" (never an exponent)."""
    rate = Fraction(fps).limit_denominator(1001)
    return str(rate.numerator) if rate.denominator == 1 else f"{rate.numerator}/{rate.denominator}"


def _video_kwargs(
    plan: Plan, profile: Profile, container: ContainerSpec, hardware: PipelineChoice | None = None
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if profile.video_codec is None:
        # an audio-only rendition: no video, not even cover art
        kwargs["vn"] = None
    if plan.video == "none":
        return kwargs
    if profile.video_codec == "hevc" and container.muxer == "mp4":
        # Apple players refuse HEVC in MP4 unless it is tagged hvc1 (ffmpeg writes hev1)
        kwargs["tag:v"] = "hvc1"
    if plan.video == "copy":
        return {**kwargs, "c:v": "copy"}
    # ffmpeg-python sorts options by name, so each pipeline only swaps the entries it changes
    name = "cpu" if hardware is None else hardware.name
    if hardware is None or name == "nvdec":
        kwargs.update(
            {
                "c:v": profile.encoder,
                "preset": profile.preset,
                "crf": profile.crf,
                "pix_fmt": profile.pix_fmt,
            }
        )
    else:
        kwargs.update(_hardware_encoder_kwargs(hardware, profile))
    if profile.max_video_bitrate is not None:
        kwargs["maxrate"] = profile.max_video_bitrate
        kwargs["bufsize"] = profile.bufsize or 2 * profile.max_video_bitrate
    if profile.video_codec == "h264":
        # h264_vaapi names baseline as what it encodes: constrained baseline
        vaapi_baseline = name == "vaapi" and profile.h264_profile == "baseline"
        kwargs["profile:v"] = "constrained_baseline" if vaapi_baseline else profile.h264_profile
        # h264_qsv has no level names and h264_vaapi names only some ("3", not "3.0"): both
        # take level_idc (4.1 -> 41)
        by_idc = name in ("qsv", "vaapi")
        kwargs["level:v"] = _level_idc(profile) if by_idc else profile.h264_level
    if profile.gop is not None:
        kwargs["g"] = profile.gop
    if profile.encoder == "libx265" and name in ("cpu", "nvdec"):
        kwargs["x265-params"] = X265_PARAMS
    if profile.max_fps is not None:
        # a cap: a source below it keeps its own rate
        kwargs["fpsmax"] = rate_text(profile.max_fps)
    else:
        # the source's frames with their own timestamps: left to itself ffmpeg makes an MP4 (a
        # muxer that declares no variable frame rate) constant-rate, dropping or repeating frames
        kwargs["fps_mode:v"] = "passthrough"
        kwargs["enc_time_base:v"] = "demux"  # else times are rounded to the first rate's ticks
    filters = (
        _cpu_filters(plan, profile) if hardware is None else _gpu_filters(plan, profile, hardware)
    )
    if filters:
        kwargs["vf"] = ",".join(filters)
    return kwargs


def _cpu_filters(plan: Plan, profile: Profile) -> list[str]:
    filters = [DEINTERLACE_FILTER] if plan.deinterlace else []
    size = _scale_args(plan, profile)
    if size is not None:
        filters.append(f"scale={size}")
    return filters


def _scale_args(plan: Plan, profile: Profile) -> str | None:
    """The scale filters' w:h arguments (scale, scale_cuda and scale_vaapi read them alike)."""
    if plan.scale is not None:
        return f"{plan.scale[0]}:{plan.scale[1]}"
    if plan.cap_size:
        # quotes keep the commas inside min() from splitting the filtergraph
        return (
            f"'min(iw,{profile.max_width})':'min(ih,{profile.max_height})'"
            ":force_original_aspect_ratio=decrease:force_divisible_by=2"
        )
    return None


def _hardware_pipeline(
    plan: Plan, profile: Profile, pipeline: PipelineChoice | None
) -> PipelineChoice | None:
    """The hardware pipeline to build for, or None for the software argv."""
    if pipeline is None or pipeline.name == "cpu":
        return None
    if pipeline.name not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline.name!r}; known: {', '.join(PIPELINES)}")
    if plan.video != "encode" or profile.video_codec is None:
        return None  # nothing to decode, scale or encode: the software argv is the same work
    codec = profile.video_codec
    if pipeline.name in HARDWARE_CODECS and codec not in HARDWARE_CODECS[pipeline.name]:
        raise ValueError(f"pipeline {pipeline.name} does not encode {codec}")
    if pipeline.name == "nvdec":
        expected = profile.encoder
    else:
        expected = hardware_encoder(pipeline.name, codec)
    if pipeline.encoder != expected:
        raise ValueError(
            f"pipeline {pipeline.name} was chosen with encoder {pipeline.encoder}, "
            f"but profile {profile.name} needs {expected}"
        )
    if profile.pix_fmt not in HW_FRAME_FORMATS:
        raise ValueError(f"no GPU frame format for pixel format {profile.pix_fmt}")
    return pipeline


def _gpu_frames(hardware: PipelineChoice) -> bool:
    """Frames are decoded into GPU memory (NVDEC) rather than decoded on the CPU."""
    return hardware.name == "nvdec" or (hardware.name == "nvenc" and hardware.hw_decode)


def _device_args(hardware: PipelineChoice) -> list[str]:
    if hardware.name == "vaapi":
        return ["-vaapi_device", VAAPI_DEVICE]
    if hardware.name == "qsv":
        return list(QSV_DEVICE_ARGS)
    return []  # CUDA: -hwaccel creates the device; NVENC opens its own


def _gpu_filters(plan: Plan, profile: Profile, hardware: PipelineChoice) -> list[str]:
    frame_format = HW_FRAME_FORMATS[profile.pix_fmt]
    size = _scale_args(plan, profile)
    if _gpu_frames(hardware):
        filters = [CUDA_DEINTERLACE_FILTER] if plan.deinterlace else []
        # scale_cuda also converts to the encoder's layout (a 10-bit source to NV12), even
        # when the size stays: hwdownload can only hand over the frames' own layout
        scale = f"{size}:format={frame_format}" if size else f"format={frame_format}"
        filters.append(f"scale_cuda={scale}")
        if hardware.name == "nvdec":
            filters += ["hwdownload", f"format={frame_format}"]
        return filters
    if hardware.name == "nvenc":
        return _cpu_filters(plan, profile)  # NVENC takes software frames as they are
    filters = [DEINTERLACE_FILTER] if plan.deinterlace else []
    if hardware.name == "vaapi":
        filters += [f"format={frame_format}", "hwupload"]
        if size is not None:
            filters.append(f"scale_vaapi={size}")
        return filters
    # scale_qsv has no force_original_aspect_ratio: a capped (unprobed) size scales on the CPU
    if plan.cap_size and plan.scale is None:
        filters.append(f"scale={size}")
    filters += [f"format={frame_format}", f"hwupload=extra_hw_frames={QSV_EXTRA_HW_FRAMES}"]
    if plan.scale is not None:
        filters.append(f"scale_qsv={size}")
    return filters


def _hardware_encoder_kwargs(hardware: PipelineChoice, profile: Profile) -> dict[str, Any]:
    """The GPU encoder and its rate control: the profile's CRF as a constant-quality target,
    kept under the profile's maxrate/bufsize (added by the caller) when it has one."""
    speed = _SPEED_OF_SVT_PRESET.get(profile.preset, profile.preset)
    capped = profile.max_video_bitrate
    kwargs: dict[str, Any] = {"c:v": hardware.encoder}
    if hardware.name == "nvenc":
        # VBR with a quality target; -b:v 0 lifts NVENC's 2 Mb/s default average
        kwargs.update(preset=NVENC_PRESETS.get(speed, "p4"), rc="vbr", cq=profile.crf)
        kwargs["b:v"] = 0
        if not _gpu_frames(hardware):
            kwargs["pix_fmt"] = NVENC_PIX_FMTS.get(profile.pix_fmt, profile.pix_fmt)
    elif hardware.name == "vaapi":
        # QVBR: the quality target under the cap (at 100% of it); CQP when uncapped
        kwargs.update(rc_mode="QVBR" if capped else "CQP", qp=profile.crf)
        if capped:
            kwargs["b:v"] = capped
    else:
        # ICQ when uncapped; with maxrate QSV picks QVBR if the average is below the peak
        # (equal would make it CBR), so the average is half the peak
        kwargs.update(preset=QSV_PRESETS.get(speed, "medium"), global_quality=profile.crf)
        if capped:
            kwargs["b:v"] = capped // 2
    return kwargs


def _level_idc(profile: Profile) -> str:
    return str(round(float(profile.h264_level) * 10))


def _audio_kwargs(plan: Plan, profile: Profile) -> dict[str, Any]:
    if profile.audio_codec is None:
        return {"an": None}
    if plan.audio == "copy":
        return {"c:a": "copy"}
    if plan.audio != "encode":
        return {}
    channels = plan.audio_channels or profile.audio_channels
    bitrate = profile.audio_bitrate
    if profile.audio_encoder == "libopus":
        # libopus refuses more than 256 kb/s a channel, and a mono source keeps one channel
        bitrate = min(bitrate, OPUS_MAX_BITRATE_PER_CHANNEL * channels)
    return {
        "c:a": profile.audio_encoder,
        "b:a": f"{bitrate // 1000}k" if bitrate % 1000 == 0 else str(bitrate),
        "ac": channels,
    }
