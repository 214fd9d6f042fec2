"""Hardware pipelines, specified by what a node does with what its capability probe found: which
pipeline a job runs on, the ffmpeg argv it gets, and how a broken GPU path is told apart from a
bad source so that the job falls back to the CPU.

Real ffmpeg throughout. This machine has no GPU: hardware argvs are run with the GPU hidden
(CUDA_VISIBLE_DEVICES="", no VA driver), so they fail the way a node with a broken hardware path
fails, also on a machine that has one. The `gpu` test runs the NVDEC path for real.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from shared.media import (
    CONTAINERS,
    DEFAULT_PROFILE,
    PIPELINES,
    PipelineChoice,
    Plan,
    Profile,
    build_args,
    choose_pipeline,
    get_profile,
    is_hardware_failure,
    make_plan,
    probe,
    run_ffmpeg,
)
from tests.media_clips import ffmpeg_exe, make_clip

MP4 = CONTAINERS["mp4"]
CPU_ENCODERS = frozenset({"libx264", "libx265", "libsvtav1"})
# an RTX/L4-class card: NVENC and NVDEC for every codec
NVENC_CARD = CPU_ENCODERS | {
    "cuda",
    "h264_nvenc",
    "hevc_nvenc",
    "av1_nvenc",
    "cuda:h264",
    "cuda:hevc",
    "cuda:av1",
    "scale_cuda",
}
# an H100: NVDEC and scale_cuda work, every *_nvenc failed to open, AV1 decode failed
H100 = CPU_ENCODERS | {"cuda", "cuda:h264", "cuda:hevc", "scale_cuda"}
# an Intel iGPU seen through both VAAPI and QSV
INTEL = CPU_ENCODERS | {
    "vaapi",
    "h264_vaapi",
    "hevc_vaapi",
    "scale_vaapi",
    "vaapi:h264",
    "qsv",
    "h264_qsv",
    "hevc_qsv",
    "scale_qsv",
}
# 1280x720 into h264-480p's 854x480 box: 852x480 (even, aspect kept)
SCALED = Plan(video="encode", audio="encode", subtitles=False, scale=(852, 480))


def choose(working: frozenset[str], **kwargs: object) -> PipelineChoice:
    args: dict[str, object] = {
        "video_codec": "h264",
        "source_codec": "hevc",
        "plan_video": "encode",
    }
    args.update(kwargs)
    return choose_pipeline(working, **args)  # type: ignore[arg-type]


def argv_for(
    pipeline: PipelineChoice | None,
    plan: Plan = SCALED,
    profile: Profile = DEFAULT_PROFILE,
    source: str = "in.mkv",
    output: str = "out.mp4",
) -> list[str]:
    return build_args(ffmpeg_exe(), source, output, plan, profile, MP4, pipeline=pipeline)


def option(argv: list[str], name: str) -> str | None:
    """The value after `name` in argv, None when the option is absent."""
    return argv[argv.index(name) + 1] if name in argv else None


# ---------------------------------------------------------------- choosing a pipeline


def test_a_card_with_nvenc_decodes_scales_and_encodes_on_the_gpu() -> None:
    choice = choose(NVENC_CARD)
    assert (choice.name, choice.encoder, choice.hw_decode) == ("nvenc", "h264_nvenc", True)
    assert "h264_nvenc works" in choice.reason


def test_h100_decodes_and_scales_on_the_gpu_and_encodes_with_the_cpu_encoder() -> None:
    h264 = choose(H100)
    hevc = choose(H100, video_codec="hevc")
    assert (h264.name, h264.encoder, h264.hw_decode) == ("nvdec", "libx264", True)
    assert (hevc.name, hevc.encoder) == ("nvdec", "libx265")
    # why not the better pipeline is part of the answer
    assert "nvenc: h264_nvenc not working" in h264.reason


def test_cpu_preference_keeps_the_job_in_software_on_any_node() -> None:
    choice = choose(NVENC_CARD, preference="cpu")
    assert (choice.name, choice.encoder, choice.hw_decode) == ("cpu", "libx264", False)
    assert "preference is cpu" in choice.reason


def test_gpu_preference_on_a_node_without_working_hardware_runs_on_the_cpu_saying_why() -> None:
    choice = choose(CPU_ENCODERS, preference="gpu")
    assert choice.name == "cpu"
    assert "a GPU was preferred" in choice.reason and "h264_nvenc" in choice.reason


def test_a_pipeline_disabled_after_a_failure_gives_way_to_the_next() -> None:
    assert choose(NVENC_CARD, disabled=frozenset({"nvenc"})).name == "nvdec"
    both = choose(NVENC_CARD, disabled=frozenset({"nvenc", "nvdec"}))
    assert both.name == "cpu" and "disabled on this node" in both.reason


def test_a_pools_device_bounds_the_pipelines_it_may_use() -> None:
    assert choose(NVENC_CARD, allowed=("cpu",)).name == "cpu"
    assert choose(NVENC_CARD, allowed=("nvdec", "cpu")).name == "nvdec"
    assert choose(INTEL, allowed=("qsv", "cpu")).name == "qsv"


def test_copied_or_dropped_video_has_nothing_to_accelerate() -> None:
    copy = choose(NVENC_CARD, plan_video="copy")
    none = choose(NVENC_CARD, video_codec=None, plan_video="none")
    assert (copy.name, copy.encoder) == ("cpu", "copy")
    assert (none.name, none.encoder) == ("cpu", "none")
    assert "nothing to accelerate" in copy.reason


def test_hevc_source_is_not_gpu_decoded_where_nvdec_cannot_decode_hevc() -> None:
    h264_only = CPU_ENCODERS | {"cuda:h264", "scale_cuda"}
    choice = choose(h264_only, source_codec="hevc")
    assert choice.name == "cpu" and "cuda:hevc" in choice.reason
    # an NVENC card without HEVC decode still encodes on the GPU, from CPU-decoded frames
    nvenc = choose(NVENC_CARD - {"cuda:hevc"}, source_codec="hevc")
    assert (nvenc.name, nvenc.hw_decode) == ("nvenc", False)
    assert "cuda:hevc not working" in nvenc.reason


def test_unprobed_source_is_never_gpu_decoded() -> None:
    assert choose(H100, source_codec=None).name == "cpu"
    assert choose(NVENC_CARD, source_codec=None).hw_decode is False


def test_intel_gpu_uses_vaapi_but_not_for_av1() -> None:
    assert choose(INTEL).name == "vaapi"
    av1 = choose(INTEL | {"av1_vaapi", "av1_qsv"}, video_codec="av1")
    assert av1.name == "cpu" and "does not encode av1" in av1.reason


# ---------------------------------------------------------------- the argv of each pipeline


def test_cpu_pipeline_gives_todays_argv_byte_for_byte() -> None:
    cpu = choose(NVENC_CARD, preference="cpu")
    capped = make_plan(None, DEFAULT_PROFILE, MP4)
    for plan in (SCALED, capped, msgspec.structs.replace(SCALED, deinterlace=True)):
        assert argv_for(cpu, plan) == argv_for(None, plan)
    # the argv as it was before pipelines existed
    assert argv_for(cpu, capped, source="in.mkv", output="o.mp4")[1:] == [
        *("-hide_banner", "-nostdin", "-y", "-loglevel", "error"),
        *("-progress", "pipe:1", "-nostats", "-stats_period", "0.5", "-i", "in.mkv"),
        *("-map", "0:V:0?", "-map", "0:a:0?", "-f", "mp4", "-ac", "2", "-b:a", "160k"),
        *("-bufsize", "16000000", "-c:a", "aac", "-c:v", "libx264", "-crf", "23"),
        *("-enc_time_base:v", "demux", "-fps_mode:v", "passthrough"),  # the source's frame timing
        *("-level:v", "4.1", "-maxrate", "8000000", "-movflags", "+faststart"),
        *("-pix_fmt", "yuv420p", "-preset", "veryfast", "-profile:v", "high", "-sn", "-vf"),
        "scale='min(iw,1920)':'min(ih,1080)':force_original_aspect_ratio=decrease"
        ":force_divisible_by=2",
        "o.mp4",
    ]


def test_nvdec_argv_decodes_and_scales_on_the_gpu_then_encodes_with_x264() -> None:
    argv = argv_for(choose(H100))
    assert argv[argv.index("-hwaccel") : argv.index("-i")] == [
        *("-hwaccel", "cuda", "-hwaccel_output_format", "cuda"),
    ]
    assert option(argv, "-vf") == "scale_cuda=852:480:format=nv12,hwdownload,format=nv12"
    # the encoder and every value of the profile, as on the CPU
    for name, value in [
        ("-c:v", "libx264"),
        ("-preset", "veryfast"),
        ("-crf", "23"),
        ("-pix_fmt", "yuv420p"),
        ("-maxrate", "8000000"),
        ("-bufsize", "16000000"),
        ("-profile:v", "high"),
        ("-level:v", "4.1"),
    ]:
        assert option(argv, name) == value


def test_nvdec_keeps_the_cpu_scalers_aspect_and_even_size_rules_when_capping() -> None:
    argv = argv_for(choose(H100), make_plan(None, DEFAULT_PROFILE, MP4))
    assert option(argv, "-vf") == (
        "scale_cuda='min(iw,1920)':'min(ih,1080)':force_original_aspect_ratio=decrease"
        ":force_divisible_by=2:format=nv12,hwdownload,format=nv12"
    )


def test_nvdec_converts_frames_even_when_the_size_stays() -> None:
    fits = Plan(video="encode", audio="copy", subtitles=False)
    assert option(argv_for(choose(H100), fits), "-vf") == (
        "scale_cuda=format=nv12,hwdownload,format=nv12"
    )


def test_gpu_decoded_interlaced_video_is_deinterlaced_on_the_gpu_with_bwdif_cuda() -> None:
    interlaced = msgspec.structs.replace(SCALED, deinterlace=True)
    filters = (option(argv_for(choose(H100), interlaced), "-vf") or "").split(",")
    assert filters[0] == "bwdif_cuda=mode=send_frame:parity=auto:deint=interlaced"
    assert filters[1].startswith("scale_cuda=")
    listed = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-filters"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^\s\S+\s+bwdif_cuda\s", listed, re.MULTILINE), "bwdif_cuda is not built in"


def test_nvenc_argv_maps_preset_and_crf_onto_nvenc_and_keeps_the_caps() -> None:
    argv = argv_for(choose(NVENC_CARD))
    assert "-hwaccel" in argv[: argv.index("-i")]
    expected = {
        "-c:v": "h264_nvenc",
        "-preset": "p3",  # veryfast
        "-rc": "vbr",
        "-cq": "23",
        "-b:v": "0",
        "-maxrate": "8000000",
        "-bufsize": "16000000",
        "-vf": "scale_cuda=852:480:format=nv12",
    }
    assert {name: option(argv, name) for name in expected} == expected
    assert "-crf" not in argv and "-pix_fmt" not in argv  # the frames stay on the GPU
    slow_hevc = msgspec.structs.replace(get_profile("hevc-1080p"), encoder="libx265", preset="slow")
    hevc = argv_for(choose(NVENC_CARD, video_codec="hevc"), profile=slow_hevc)
    assert (option(hevc, "-c:v"), option(hevc, "-preset"), option(hevc, "-tag:v")) == (
        "hevc_nvenc",
        "p6",
        "hvc1",
    )
    assert "-x265-params" not in hevc


def test_nvenc_from_cpu_decoded_frames_scales_on_the_cpu() -> None:
    argv = argv_for(choose(NVENC_CARD - {"scale_cuda"}))
    assert "-hwaccel" not in argv
    assert (option(argv, "-vf"), option(argv, "-pix_fmt")) == ("scale=852:480", "yuv420p")


def test_vaapi_argv_uploads_scales_and_encodes_on_the_gpu() -> None:
    argv = argv_for(choose(INTEL))
    assert argv[argv.index("-vaapi_device") + 1] == "/dev/dri/renderD128"
    assert argv.index("-vaapi_device") < argv.index("-i")
    assert option(argv, "-vf") == "format=nv12,hwupload,scale_vaapi=852:480"
    expected = {"-c:v": "h264_vaapi", "-rc_mode": "QVBR", "-qp": "23", "-maxrate": "8000000"}
    assert {name: option(argv, name) for name in expected} == expected
    uncapped = msgspec.structs.replace(DEFAULT_PROFILE, max_video_bitrate=None, bufsize=None)
    assert option(argv_for(choose(INTEL), profile=uncapped), "-rc_mode") == "CQP"


def test_qsv_argv_uploads_and_encodes_with_global_quality() -> None:
    argv = argv_for(choose(INTEL, allowed=("qsv", "cpu")))
    assert argv[argv.index("-init_hw_device") : argv.index("-i")] == [
        *("-init_hw_device", "qsv=hw", "-filter_hw_device", "hw"),
    ]
    assert option(argv, "-vf") == "format=nv12,hwupload=extra_hw_frames=64,scale_qsv=852:480"
    expected = {
        "-c:v": "h264_qsv",
        "-global_quality": "23",
        "-level:v": "41",
        "-preset": "veryfast",
    }
    assert {name: option(argv, name) for name in expected} == expected


def test_a_choice_made_for_another_codec_is_refused() -> None:
    for_hevc = choose(NVENC_CARD, video_codec="hevc")
    with pytest.raises(ValueError, match="hevc_nvenc"):
        argv_for(for_hevc)  # the default profile makes h264


@pytest.mark.parametrize(
    ("working", "encoder", "private"),
    [
        (NVENC_CARD, "h264_nvenc", {"preset", "rc", "cq", "profile", "level"}),
        (INTEL, "h264_vaapi", {"rc_mode", "qp", "profile", "level"}),
        (INTEL - {"h264_vaapi"}, "h264_qsv", {"preset", "profile"}),
    ],
)
def test_every_encoder_option_a_gpu_argv_sets_is_one_this_ffmpeg_accepts(
    working: frozenset[str], encoder: str, private: set[str]
) -> None:
    # Given the argv of a GPU encoder (which cannot be opened on this machine)
    choice = choose(working)
    assert choice.encoder == encoder
    argv = argv_for(choice)
    outputs = argv[argv.index("-i") + 2 : -1]
    used = {
        name.removeprefix("-").removesuffix(":v"): value
        for name, value in zip(outputs, [*outputs[1:], ""], strict=True)
        if name.startswith("-")
    }
    # Then the encoder's own options it sets exist, with values the encoder names
    accepted = _private_options(encoder)
    assert {name for name in used if name in accepted} == private
    for name in private:
        names, value = accepted[name], used[name]
        if names and not value.isdigit():  # numbers (cq 23) are ranges, not names
            assert value in names, (name, value, names)


def _private_options(encoder: str) -> dict[str, set[str]]:
    """An encoder's own options and the named values each takes, from `ffmpeg -h encoder=`."""
    text = subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-h", f"encoder={encoder}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    options: dict[str, set[str]] = {}
    current: set[str] = set()
    for line in text.splitlines():
        if m := re.match(r"^  -(\S+)\s+<", line):
            current = options.setdefault(m.group(1), set())
        elif m := re.match(r"^     (\S+)\s+-?\d", line):
            current.add(m.group(1))
    return options


# ---------------------------------------------------------------- failing over to the CPU


@pytest.fixture(scope="module")
def hevc_720p(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """HEVC 1280x720: the 480p profile re-encodes it to H.264 and scales it."""
    root = tmp_path_factory.mktemp("pipelines")
    return make_clip(
        root / "hevc720.mkv", seconds=1.0, width=1280, height=720, vcodec="libx265", container="mkv"
    )


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide every GPU from ffmpeg: a node whose hardware path is broken."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("LIBVA_DRIVER_NAME", "vidmesh-no-such-driver")


@pytest.mark.parametrize(
    ("working", "allowed", "pipeline"),
    [
        (H100, PIPELINES, "nvdec"),
        (NVENC_CARD, PIPELINES, "nvenc"),  # GPU decode
        (NVENC_CARD - {"scale_cuda"}, PIPELINES, "nvenc"),  # CPU decode, NVENC encode
        (INTEL, PIPELINES, "vaapi"),
        (INTEL, ("qsv", "cpu"), "qsv"),
    ],
)
@pytest.mark.usefixtures("no_gpu")
async def test_a_broken_hardware_path_is_a_hardware_failure_and_the_cpu_argv_then_succeeds(
    hevc_720p: Path,
    tmp_path: Path,
    working: frozenset[str],
    allowed: tuple[str, ...],
    pipeline: str,
) -> None:
    # Given a node whose probe found the GPU working, and a job the GPU path would run
    profile = get_profile("h264-480p")
    plan = make_plan(probe(str(hevc_720p)), profile, MP4)
    choice = choose(working, allowed=allowed, source_codec="hevc")
    assert (choice.name, plan.scale) == (pipeline, (852, 480))
    output = str(tmp_path / "out.mp4")

    # When the GPU has gone away and the hardware argv runs
    failed = await run_ffmpeg(argv_for(choice, plan, profile, str(hevc_720p), output))

    # Then the failure reads as "this node's hardware path is broken"
    assert failed.returncode != 0
    assert is_hardware_failure(failed.stderr_tail), failed.stderr_tail

    # And the same plan on the CPU pipeline makes the rendition
    cpu = choose(working, allowed=allowed, preference="cpu")
    done = await run_ffmpeg(argv_for(cpu, plan, profile, str(hevc_720p), output))
    assert done.returncode == 0, done.stderr_tail
    video = probe(output).video()
    assert video is not None
    assert (video.codec, video.width, video.height) == ("h264", 852, 480)


async def test_gpu_filters_given_software_frames_are_a_hardware_failure(
    hevc_720p: Path, tmp_path: Path
) -> None:
    # Given the nvdec filter chain, and frames that stayed in software (what ffmpeg does when
    # NVDEC cannot decode a source), here by leaving out -hwaccel
    profile = get_profile("h264-480p")
    plan = make_plan(probe(str(hevc_720p)), profile, MP4)
    argv = argv_for(choose(H100), plan, profile, str(hevc_720p), str(tmp_path / "out.mp4"))
    start = argv.index("-hwaccel")
    del argv[start : start + 4]
    assert "-hwaccel" not in argv

    result = await run_ffmpeg(argv)

    assert result.returncode != 0
    assert is_hardware_failure(result.stderr_tail), result.stderr_tail
    # the chain itself parses in this ffmpeg: every filter and option exists
    for complaint in ("No such filter", "Option not found", "Error applying option"):
        assert complaint not in result.stderr_tail


@pytest.fixture(scope="module")
async def missing_server() -> AsyncIterator[str]:
    """A real HTTP server that answers 404 to everything."""

    async def not_found(request: web.Request) -> web.Response:
        return web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", not_found)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.mark.parametrize("source", ["404", "missing file"])
async def test_a_bad_source_on_a_gpu_pipeline_is_not_a_hardware_failure(
    missing_server: str, tmp_path: Path, source: str
) -> None:
    url = f"{missing_server}/Videos/1/stream" if source == "404" else str(tmp_path / "gone.mkv")
    argv = argv_for(choose(H100), source=url, output=str(tmp_path / "out.mp4"))

    result = await run_ffmpeg(argv)

    assert result.returncode != 0
    assert ("404" in result.stderr_tail) == (source == "404"), result.stderr_tail
    assert not is_hardware_failure(result.stderr_tail)


@pytest.mark.parametrize(
    ("stderr", "hardware"),
    [
        ("[h264_nvenc @ 0x1] No NVENC capable devices found\n", True),
        (
            "[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: unsupported device (2): (no details)\n",
            True,
        ),
        ("[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: out of memory (10): (no details)\n", True),
        (
            "[h264_nvenc @ 0x1] Driver does not support the required nvenc API version. "
            "Required: 13.1 Found: 13.0\n"
            "[h264_nvenc @ 0x1] The minimum required Nvidia driver for nvenc is 610.00 or newer\n",
            True,
        ),
        (
            "[h264 @ 0x1] Failed setup for format cuda: hwaccel initialisation returned error.\n",
            True,
        ),
        (
            "[AVHWDeviceContext @ 0x1] cu->cuInit(0) failed -> CUDA_ERROR_NO_DEVICE: "
            "no CUDA-capable device is detected\n",
            True,
        ),
        ("[av1 @ 0x1] Your platform doesn't support hardware accelerated AV1 decoding.\n", True),
        (
            "[AVHWDeviceContext @ 0x1] Failed to initialise VAAPI connection: -1 (unknown libva "
            "error).\n",
            True,
        ),
        ("[AVHWDeviceContext @ 0x1] Error creating a MFX session: -9.\n", True),
        ("[AVFilterGraph @ 0x1] No such filter: 'scale_cuda'\n", True),
        (
            "Impossible to convert between the formats supported by the filter "
            "'Parsed_scale_cuda_0' and the filter 'auto_scale_1'\n",
            True,
        ),
        (
            "Impossible to convert between the formats supported by the filter 'Parsed_format_0' "
            "and the filter 'Parsed_scale_1'\n",
            False,
        ),
        ("[mov,mp4 @ 0x1] moov atom not found\n", False),
        ("Connection to tcp://jf:8096 failed: Connection refused\n", False),
        ("[out#0/mp4 @ 0x1] Error writing trailer: No space left on device\n", False),
        ("[libx264 @ 0x1] Error while opening encoder - maybe incorrect parameters\n", False),
        ("", False),
    ],
)
def test_hardware_failures_are_told_from_other_failures(stderr: str, hardware: bool) -> None:
    assert is_hardware_failure(stderr) is hardware


# ---------------------------------------------------------------- on a real GPU


@pytest.mark.gpu
async def test_nvdec_transcodes_1080p_on_a_gpu_without_nvenc(tmp_path: Path) -> None:
    # Given a 1080p H.264 source and the 720p profile, on a node where NVDEC and scale_cuda work
    source = make_clip(tmp_path / "in1080.mp4", seconds=2.0, width=1920, height=1080, fps=30)
    profile = get_profile("h264-720p")
    plan = make_plan(probe(str(source)), profile, MP4)
    choice = choose(H100, source_codec="h264")
    assert (choice.name, plan.scale) == ("nvdec", (1280, 720))

    # When the nvdec argv runs
    output = tmp_path / "out.mp4"
    result = await run_ffmpeg(argv_for(choice, plan, profile, str(source), str(output)))

    # Then it succeeds and makes the 720p H.264 rendition
    assert result.returncode == 0, result.stderr_tail
    made = probe(str(output))
    video = made.video()
    assert video is not None
    assert (video.codec, video.width, video.height, video.pix_fmt) == (
        "h264",
        1280,
        720,
        "yuv420p",
    )
    assert made.duration is not None and abs(made.duration - 2.0) < 0.2
