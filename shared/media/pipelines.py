"""Hardware pipelines: which one a transcode runs on, given what this node's capability probe
found working, and which ffmpeg failures mean the node's hardware path is broken.

A pipeline is a way to run the same Plan: "cpu" decodes, scales and encodes in software (the
argv of `build_args` without a pipeline); "nvenc" encodes on an NVIDIA GPU (decoding and scaling
there too when NVDEC and scale_cuda work); "nvdec" decodes and scales on the GPU and encodes with
the CPU encoder (H100/H200/A100: NVDEC but no NVENC); "vaapi" and "qsv" upload software frames and
scale and encode on an Intel/AMD GPU. A hardware failure mid-job falls back to "cpu".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import msgspec

from shared.media.presets import VIDEO_ENCODERS

PIPELINES: tuple[str, ...] = ("nvenc", "nvdec", "vaapi", "qsv", "cpu")
HARDWARE_PIPELINES: tuple[str, ...] = ("nvenc", "nvdec", "vaapi", "qsv")  # best first
HardwarePreference = Literal["auto", "gpu", "cpu"]
# pipelines that encode on the GPU name their encoders <codec>_<suffix>: h264_nvenc, hevc_vaapi
HARDWARE_ENCODER_SUFFIX: dict[str, str] = {"nvenc": "nvenc", "vaapi": "vaapi", "qsv": "qsv"}
# rendition codecs each GPU encoder family is used for (VAAPI/QSV AV1 quality scales differ)
HARDWARE_CODECS: dict[str, frozenset[str]] = {
    "nvenc": frozenset({"h264", "hevc", "av1"}),
    "vaapi": frozenset({"h264", "hevc"}),
    "qsv": frozenset({"h264", "hevc"}),
}
# the GPU scaler each pipeline needs (nvenc scales on the GPU only when it also decodes there)
HARDWARE_SCALER: dict[str, str] = {
    "nvdec": "scale_cuda",
    "vaapi": "scale_vaapi",
    "qsv": "scale_qsv",
}


class PipelineChoice(msgspec.Struct, frozen=True, kw_only=True):
    """The pipeline a transcode runs on, its video encoder, whether the GPU decodes, and why
    (including why better pipelines were passed over)."""

    name: str  # one of PIPELINES
    encoder: str  # the video encoder ("h264_nvenc", "libx264"), or "copy" / "none"
    hw_decode: bool  # decoded (and scaled) on the GPU: `-hwaccel cuda` before `-i`
    reason: str


def hardware_encoder(pipeline: str, codec: str) -> str:
    """The GPU encoder of `pipeline` for a rendition codec: ("nvenc", "hevc") -> "hevc_nvenc"."""
    return f"{codec}_{HARDWARE_ENCODER_SUFFIX[pipeline]}"


def choose_pipeline(
    working: frozenset[str],
    *,
    video_codec: str | None,
    source_codec: str | None,
    plan_video: str,
    preference: HardwarePreference = "auto",
    disabled: frozenset[str] = frozenset(),
    allowed: Sequence[str] = PIPELINES,
) -> PipelineChoice:
    """The pipeline for one rendition on this node.

    `working` names the capability checks that passed here: encoders ("h264_nvenc"), hardware
    decoders ("cuda:h264"), filters ("scale_cuda") and devices ("cuda"). `disabled` holds
    pipelines that failed mid-job since the last probe; `allowed` is what the pool's device
    permits. The first of nvenc, nvdec, vaapi, qsv that is allowed, not disabled and whose needs
    all work is chosen ("auto" and "gpu" alike), else "cpu".
    """
    cpu_encoder = VIDEO_ENCODERS.get(video_codec or "", "")
    if plan_video != "encode":
        what = "copied" if plan_video == "copy" else "not in the rendition"
        return _cpu(plan_video, f"the video is {what}: nothing to accelerate")
    if not cpu_encoder:
        return _cpu("", f"no encoder is known for video codec {video_codec!r}")
    if preference == "cpu":
        return _cpu(cpu_encoder, "the hardware preference is cpu")
    passed_over: list[str] = []
    for name in HARDWARE_PIPELINES:
        if name not in allowed:
            passed_over.append(f"{name}: not allowed in this pool")
            continue
        if name in disabled:
            passed_over.append(f"{name}: disabled on this node after a hardware failure")
            continue
        if name in HARDWARE_CODECS and video_codec not in HARDWARE_CODECS[name]:
            passed_over.append(f"{name}: does not encode {video_codec} here")
            continue
        needs = _needs(name, video_codec or "", source_codec, cpu_encoder)
        missing = [need for need in needs if need not in working]
        if source_codec is None and name == "nvdec":
            missing.insert(0, "a known source codec")
        if missing:
            passed_over.append(f"{name}: {', '.join(missing)} not working")
            continue
        return _hardware_choice(name, working, video_codec or "", source_codec, passed_over)
    wanted = "a GPU was preferred, but " if preference == "gpu" else ""
    return _cpu(
        cpu_encoder, f"{wanted}no hardware pipeline can run here ({'; '.join(passed_over)})"
    )


def _cpu(encoder: str, why: str) -> PipelineChoice:
    return PipelineChoice(name="cpu", encoder=encoder, hw_decode=False, reason=why)


def _needs(name: str, codec: str, source_codec: str | None, cpu_encoder: str) -> list[str]:
    if name == "nvdec":
        decode = [f"cuda:{source_codec}"] if source_codec else []
        return [*decode, "scale_cuda", cpu_encoder]
    needs = [hardware_encoder(name, codec)]
    if name in HARDWARE_SCALER:
        needs.append(HARDWARE_SCALER[name])
    return needs


def _hardware_choice(
    name: str,
    working: frozenset[str],
    codec: str,
    source_codec: str | None,
    passed_over: list[str],
) -> PipelineChoice:
    not_better = f" (not {'; '.join(passed_over)})" if passed_over else ""
    if name == "nvdec":
        encoder = VIDEO_ENCODERS[codec]
        why = f"cuda:{source_codec} and scale_cuda work: GPU decode and scale, {encoder} encodes"
        return PipelineChoice(name=name, encoder=encoder, hw_decode=True, reason=why + not_better)
    encoder = hardware_encoder(name, codec)
    hw_decode = False
    why = f"{encoder} works"
    if name == "nvenc":
        decode = f"cuda:{source_codec}"
        hw_decode = source_codec is not None and decode in working and "scale_cuda" in working
        if hw_decode:
            why += f"; {decode} and scale_cuda work: decoded and scaled on the GPU"
        elif source_codec is None:
            why += "; decoded and scaled on the CPU (the source codec is unknown)"
        else:
            lacking = [n for n in (decode, "scale_cuda") if n not in working]
            why += f"; decoded and scaled on the CPU ({', '.join(lacking)} not working)"
    else:
        why += f" with {HARDWARE_SCALER[name]}: decoded on the CPU, uploaded, scaled on the GPU"
    return PipelineChoice(name=name, encoder=encoder, hw_decode=hw_decode, reason=why + not_better)


# stderr that only a broken hardware path produces (matched lowercased)
_HARDWARE_MARKERS = (
    "libcuda",  # Cannot load libcuda.so.1
    "could not dynamically load cuda",
    "cuda_error_",  # cu->cuInit(0) failed -> CUDA_ERROR_NO_DEVICE
    "libnvcuvid",
    "libnvidia-encode",
    "no nvenc capable devices",
    "no capable devices found",
    "openencodesessionex failed",  # includes the consumer cards' session cap (out of memory)
    "nvenc api version",  # Driver does not support the required nvenc API version
    "minimum required nvidia driver",
    "failed setup for format",  # Failed setup for format cuda: hwaccel initialisation ...
    "hwaccel initialisation returned error",
    "hardware device setup failed",
    "no device available for decoder",
    "device creation failed",
    "doesn't support hardware accelerated",  # e.g. AV1 decoding on an H100
    "hardware is lacking required capabilities",
    "no va display found",
    "failed to initialise vaapi connection",
    "vainitialize failed",
    "libva-",  # libva-drm.so.2 missing
    "libva error",
    "mfx session",  # Error creating/initializing a MFX session
    "libvpl",
    "libmfx",
)
_HARDWARE_FILTER = r"(?:hwupload|hwdownload|hwupload_cuda|\w+_(?:cuda|vaapi|qsv))"
_MISSING_HARDWARE_PIECE = re.compile(
    rf"no such filter: '{_HARDWARE_FILTER}'|unknown encoder '\w+_(?:nvenc|vaapi|qsv)'"
)
_HARDWARE_FILTER_IN_GRAPH = re.compile(rf"'parsed_{_HARDWARE_FILTER}_\d+")
# how ffmpeg reports a filter chain whose pixel formats cannot meet: the summary line, or the
# per-link dump under it (the summary may fall out of a short stderr tail)
_FORMAT_NEGOTIATION = re.compile(
    r"impossible to convert between the formats|^link '.*' -> '.*':$", re.MULTILINE
)


def is_hardware_failure(stderr_tail: str) -> bool:
    """Whether ffmpeg failed because this node's hardware path is broken (CUDA, NVENC, NVDEC,
    VAAPI or QSV could not start, or a GPU filter chain got frames it cannot take): fall back to
    "cpu" and stop offering the pipeline until the next probe. False for source, network and
    output failures, which a software run would hit too."""
    text = stderr_tail.lower()
    if any(marker in text for marker in _HARDWARE_MARKERS):
        return True
    if _MISSING_HARDWARE_PIECE.search(text):
        return True
    # e.g. NVDEC could not decode the source and handed software frames to scale_cuda
    return bool(_FORMAT_NEGOTIATION.search(text) and _HARDWARE_FILTER_IN_GRAPH.search(text))
