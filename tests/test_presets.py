"""Presets, specified by what a user gets: validated specs, safe argv, real encodes read by PyAV."""

from __future__ import annotations

import re
from pathlib import Path

import av
import msgspec
import pytest

from shared.errors import BadRequest, SourceError
from shared.media import (
    BUILTIN_PRESETS,
    DEFAULT_PRESET,
    AudioSpec,
    Plan,
    PresetSpec,
    PresetSpecInput,
    ProbeResult,
    StreamInfo,
    VideoSpec,
    build_args,
    builtin,
    check_container,
    get_container,
    get_profile,
    make_plan,
    preset_profile,
    probe,
    run_ffmpeg,
    spec_fingerprint,
    validate_preset,
)
from tests.media_clips import ffmpeg_exe, make_clip

# What a user may write: enum values, bounded numbers, booleans (fast speeds keep the tests quick).
USER_PRESETS = {
    "av1-webm": PresetSpec(
        container="webm",
        video=VideoSpec(codec="av1", quality=40, max_height=144, speed="ultrafast"),
        audio=AudioSpec(codec="opus", bitrate_kbps=64),
    ),
    "hevc-mkv-surround": PresetSpec(
        container="mkv",
        video=VideoSpec(codec="hevc", quality=30, max_bitrate_kbps=500, speed="ultrafast"),
        audio=AudioSpec(codec="opus", channels=6, bitrate_kbps=256),
        subtitles=True,
    ),
    "h264-capped": PresetSpec(
        video=VideoSpec(
            codec="h264", max_height=144, max_fps=5, deinterlace=True, speed="ultrafast"
        ),
        audio=AudioSpec(channels=1, bitrate_kbps=64),
        copy_when_compatible=False,
    ),
    "opus-webm": PresetSpec(container="webm", video=None, audio=AudioSpec(codec="opus")),
    "silent-av1": PresetSpec(video=VideoSpec(codec="av1", speed="ultrafast"), audio=None),
}
# how PyAV names the demuxer that reads each container back
DEMUXERS = {"mp4": "mov,mp4,m4a,3gp,3g2,mj2", "m4a": "mov,mp4,m4a,3gp,3g2,mj2"}


def parse(body: bytes) -> PresetSpec:
    """What the API does with a preset body: decode strictly, then apply the cross-field rules."""
    return validate_preset(msgspec.json.decode(body, type=PresetSpecInput))


# ---------------------------------------------------------------- built-in presets


def test_builtin_presets_cover_the_promised_renditions() -> None:
    names = {"optimized", "h264-1080p", "h264-720p", "h264-480p", "hevc-1080p", "av1-1080p"}
    assert names | {"audio-aac"} <= set(BUILTIN_PRESETS) and DEFAULT_PRESET == "optimized"
    for spec in BUILTIN_PRESETS.values():
        assert validate_preset(spec) == spec
    audio = builtin("audio-aac")
    assert (audio.container, audio.video, audio.audio) == ("m4a", None, AudioSpec())
    caps = {n: (v.max_height, v.max_bitrate_kbps) for n in names if (v := builtin(n).video)}
    assert caps["h264-720p"] == (720, 4000) and caps["h264-480p"] == (480, 2000)
    assert preset_profile("x", builtin("h264-480p")).max_width == 854


def test_optimized_is_the_original_default() -> None:
    spec = builtin("optimized")
    assert spec == PresetSpec(
        container="mp4",
        video=VideoSpec(codec="h264", quality=23, speed="veryfast", max_bitrate_kbps=8000),
        audio=AudioSpec(codec="aac", channels=2, bitrate_kbps=160),
        copy_when_compatible=True,
    )
    assert get_profile("optimized-720p").max_height == 720  # the pre-preset name still works


PINNED = (
    "ffmpeg -hide_banner -nostdin -y -loglevel error -progress pipe:1 -nostats -stats_period 0.5"
)
HTTP_IN = "-reconnect 1 -reconnect_delay_max 5 -reconnect_on_network_error 1 -rw_timeout 30000000"
URL = "http://jf:8096/Videos/1/stream?api_key=x"
# since issue 17 also -enc_time_base:v demux -fps_mode:v passthrough: the source's frame timing
ENCODE = (
    "-f mp4 -ac 2 -b:a 160k -bufsize 16000000 -c:a aac -c:v libx264 -crf 23 "
    "-enc_time_base:v demux -fps_mode:v passthrough -level:v 4.1 "
    "-maxrate 8000000 -movflags +faststart -pix_fmt yuv420p -preset veryfast -profile:v high -sn"
)


def _video(**kw: object) -> StreamInfo:
    base: dict[str, object] = {"codec": "h264", "pix_fmt": "yuv420p", "width": 1920}
    return msgspec.convert({"index": 0, "kind": "video", "height": 1080, **base, **kw}, StreamInfo)


def _audio(**kw: object) -> StreamInfo:
    return msgspec.convert(
        {"index": 1, "kind": "audio", "codec": "aac", "channels": 2, **kw}, StreamInfo
    )


@pytest.mark.parametrize(
    ("probed", "source", "expected"),
    [
        (
            ProbeResult(streams=[_video(), _audio()]),
            "/media/in.mkv",
            "-i /media/in.mkv -map 0:V:0? -map 0:a:0? -f mp4 -c:a copy -c:v copy "
            "-movflags +faststart -sn /out/o.mp4",
        ),
        (
            ProbeResult(
                streams=[
                    _video(codec="hevc", width=3840, height=2160, pix_fmt="yuv420p10le"),
                    _audio(codec="eac3", channels=6),
                ]
            ),
            URL,
            f"{HTTP_IN} -i {URL} -map 0:V:0? -map 0:a:0? {ENCODE} -vf scale=1920:1080 /out/o.mp4",
        ),
        (
            None,
            URL,
            f"{HTTP_IN} -i {URL} -map 0:V:0? -map 0:a:0? {ENCODE} -vf scale='min(iw,1920)':"
            "'min(ih,1080)':force_original_aspect_ratio=decrease:force_divisible_by=2 /out/o.mp4",
        ),
    ],
)
def test_optimized_argv_is_exactly_what_it_was_before_presets(
    probed: ProbeResult | None, source: str, expected: str
) -> None:
    # the job-overhead benchmark compares against this argv: it must not drift
    mp4 = get_container("mp4")
    for profile in (get_profile("optimized"), preset_profile("optimized", builtin("optimized"))):
        plan = make_plan(probed, profile, mp4)
        argv = build_args("ffmpeg", source, "/out/o.mp4", plan, profile, mp4)
        assert argv == f"{PINNED} {expected}".split(" ")


def test_unknown_preset_is_a_bad_request_naming_the_known_ones() -> None:
    with pytest.raises(BadRequest) as caught:
        builtin("ultra-4k")
    assert caught.value.http_status == 400
    assert all(name in caught.value.message for name in BUILTIN_PRESETS)


def test_containers_know_their_muxer_mime_and_codecs() -> None:
    webm, m4a = get_container("webm"), get_container(".M4A")
    assert (webm.muxer, webm.mime, m4a.muxer, m4a.mime) == (
        "webm",
        "video/webm",
        "ipod",
        "audio/mp4",
    )
    check_container(get_profile("optimized"), get_container("mkv"))
    for ext in ("webm", "m4a"):  # Streamyfin's fileExtension cannot turn H.264 into WebM
        with pytest.raises(BadRequest, match="cannot carry h264 video"):
            check_container(get_profile("optimized"), get_container(ext))


# ---------------------------------------------------------------- validation and injection


INJECTIONS = [
    b'{"container": "mp4 -i /etc/passwd"}',
    b'{"container": "../../x"}',
    b'{"container": "/etc/passwd"}',
    b'{"video": {"codec": "-i /etc/passwd"}}',
    b'{"video": {"codec": "h264 -f"}}',
    b'{"video": {"codec": "h264\\u0000-i"}}',
    b'{"video": {"codec": {"name": "h264"}}}',
    b'{"video": "h264"}',
    b'{"video": ["-i", "/etc/passwd"]}',
    b'{"video": {"codec": "h264", "quality": "23 -f"}}',
    b'{"video": {"codec": "h264", "quality": "23"}}',
    b'{"video": {"codec": "h264", "quality": 23.5}}',
    b'{"video": {"codec": "h264", "quality": true}}',
    b'{"video": {"codec": "h264", "quality": 1e308}}',
    b'{"video": {"codec": "h264", "quality": 99999999999999999999999999}}',
    b'{"video": {"codec": "h264", "quality": 0}}',
    b'{"video": {"codec": "h264", "quality": 52}}',
    b'{"video": {"codec": "h264", "quality": 23, "quality": "-f"}}',
    b'{"video": {"codec": "h264", "speed": "veryfast;rm -rf /"}}',
    b'{"video": {"codec": "h264", "speed": "veryfast -i /etc/passwd"}}',
    b'{"video": {"codec": "h264", "max_height": "1080:flags=lanczos"}}',
    b'{"video": {"codec": "h264", "max_height": 1080.5}}',
    b'{"video": {"codec": "h264", "max_height": 1000000000}}',
    b'{"video": {"codec": "h264", "max_bitrate_kbps": "8000k"}}',
    b'{"video": {"codec": "h264", "max_bitrate_kbps": -5}}',
    b'{"video": {"codec": "h264", "max_fps": "30,movie=/etc/passwd"}}',
    b'{"video": {"codec": "h264", "max_fps": 1e400}}',
    b'{"video": {"codec": "h264", "max_fps": 0}}',
    b'{"video": {"codec": "h264", "deinterlace": "yadif"}}',
    b'{"video": {"codec": "h264", "filters": "movie=/etc/passwd"}}',
    b'{"video": {"codec": "h264", "args": ["-y"]}}',
    b'{"audio": {"codec": "libfdk_aac"}}',
    b'{"audio": {"codec": "aac", "bitrate_kbps": "160k -i x"}}',
    b'{"audio": {"bitrate_kbps": 100000}}',
    b'{"audio": {"channels": 8}}',
    b'{"audio": {"channels": "2"}}',
    b'{"audio": {"codec": "opus", "channels": 1, "bitrate_kbps": 300}}',
    b'{"args": ["-y"]}',
    b'{"extra_args": "-i /etc/passwd"}',
    b'{"output": "../../etc/cron.d/x"}',
    b'{"ffmpeg": "/bin/sh"}',
    b'{"subtitles": "../../x.srt"}',
    b'{"subtitles": true}',
    b'{"copy_when_compatible": "yes"}',
    b'{"container": "m4a"}',
    b'{"container": "webm"}',
    b'{"container": "m4a", "video": null, "audio": {"codec": "opus"}}',
    b'{"video": null, "audio": null}',
    b'["-i", "/etc/passwd"]',
    b'"optimized"',
    b"null",
]


@pytest.mark.parametrize("body", INJECTIONS, ids=[b.decode()[:60] for b in INJECTIONS])
def test_preset_bodies_that_are_not_enums_and_bounded_numbers_are_refused(body: bytes) -> None:
    with pytest.raises((msgspec.ValidationError, BadRequest)):
        parse(body)


@pytest.mark.parametrize(
    "spec",
    [
        PresetSpec(container="../../x"),  # type: ignore[arg-type]
        PresetSpec(video=VideoSpec(codec="-i /etc/passwd")),  # type: ignore[arg-type]
        PresetSpec(video=VideoSpec(codec="h264", speed="fast;rm")),  # type: ignore[arg-type]
        PresetSpec(video=VideoSpec(codec="h264", quality=10**9)),
        PresetSpec(video=VideoSpec(codec="h264", max_fps=float("nan"))),
        PresetSpec(video=VideoSpec(codec="h264", max_height=True)),
        PresetSpec(audio=AudioSpec(channels=3)),  # type: ignore[arg-type]
        PresetSpec(video="h264"),  # type: ignore[arg-type]
        PresetSpec(audio=AudioSpec(codec=object())),  # type: ignore[arg-type]
    ],
)
def test_specs_built_in_python_are_checked_again(spec: PresetSpec) -> None:
    # a Struct built in code skips msgspec's checks; validation and the profile do them again
    with pytest.raises(BadRequest):
        validate_preset(spec)
    with pytest.raises(BadRequest):
        preset_profile("x", spec)


def test_cross_field_refusals_say_what_to_change() -> None:
    with pytest.raises(BadRequest, match="Subtitles can be kept in mkv only") as caught:
        parse(b'{"subtitles": true}')
    assert caught.value.details == {"field": "subtitles"}
    with pytest.raises(BadRequest, match="Container webm cannot carry h264 video; it takes: av1"):
        parse(b'{"container": "webm", "audio": {"codec": "opus"}}')
    with pytest.raises(BadRequest, match="quality 60 is outside 1-51, the CRF range for hevc"):
        parse(b'{"video": {"codec": "hevc", "quality": 60}}')
    # SVT-AV1 made streams no decoder read below CRF 10, and refuses more than 100 Mb/s
    with pytest.raises(BadRequest, match="quality 2 is outside 10-63"):
        parse(b'{"video": {"codec": "av1", "quality": 2}}')
    with pytest.raises(BadRequest, match="max_bitrate_kbps 150000 is above 100000"):
        parse(b'{"video": {"codec": "av1", "max_bitrate_kbps": 150000}}')


def test_equal_specs_have_equal_fingerprints() -> None:
    explicit = parse(msgspec.json.encode(builtin("optimized")))
    assert spec_fingerprint(explicit) == spec_fingerprint(builtin("h264-1080p"))
    assert spec_fingerprint(parse(b"{}")) == spec_fingerprint(PresetSpec())
    assert re.fullmatch(r"[0-9a-f]{16}", spec_fingerprint(PresetSpec()))
    as_int = PresetSpec(video=VideoSpec(codec="h264", max_fps=30))
    as_json = parse(b'{"video": {"codec": "h264", "max_fps": 30.0}}')
    assert spec_fingerprint(as_int) == spec_fingerprint(as_json)
    fingerprints = {spec_fingerprint(s) for s in [*USER_PRESETS.values(), builtin("h264-720p")]}
    assert len(fingerprints) == len(USER_PRESETS) + 1
    assert parse(msgspec.json.encode(USER_PRESETS["h264-capped"])) == USER_PRESETS["h264-capped"]


# ---------------------------------------------------------------- argv is ours


FLAGS = {
    "-hide_banner", "-nostdin", "-y", "-loglevel", "-progress", "-nostats", "-stats_period",
    "-reconnect", "-reconnect_delay_max", "-reconnect_on_network_error", "-rw_timeout", "-map",
    "-f", "-c:v", "-c:a", "-c:s", "-preset", "-crf", "-maxrate", "-bufsize", "-pix_fmt",
    "-profile:v", "-level:v", "-tag:v", "-x265-params", "-fpsmax", "-vf", "-b:a", "-ac", "-sn",
    "-vn", "-an", "-movflags", "-fps_mode:v", "-enc_time_base:v",
}  # fmt: skip
WORDS = {
    "error", "pipe:1", "0:V:0?", "0:a:0?", "0:s?", "mp4", "matroska", "webm", "ipod", "copy",
    "srt", "libx264", "libx265", "libsvtav1", "aac", "libopus", "yuv420p", "high", "hvc1",
    "log-level=error", "+faststart", "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow", "passthrough", "demux",
}  # fmt: skip
NUMBER = re.compile(r"\d+(\.\d+)?k?|\d+/\d+")
SCALE = (
    r"scale=\d+:\d+|scale='min\(iw,\d+\)':'min\(ih,\d+\)'"
    r":force_original_aspect_ratio=decrease:force_divisible_by=2"
)
FILTER = re.compile(rf"bwdif=mode=send_frame:parity=auto:deint=interlaced(,({SCALE}))?|{SCALE}")
SOURCES = ["/media/a b -i x.mkv", "http://jf/Videos/1/stream?api_key=k&x=-i%20/etc/passwd"]
PROBES = [
    None,
    ProbeResult(streams=[_video(), _audio()]),
    ProbeResult(
        streams=[
            _video(codec="vc1", width=3840, height=2160, frame_rate=59.94, interlaced=True),
            _audio(codec="dts", channels=6),
            StreamInfo(index=2, kind="subtitle", codec="mov_text"),
        ]
    ),
    ProbeResult(streams=[_video(codec="hevc", pix_fmt="yuv420p10le"), _audio(codec="opus")]),
]


@pytest.mark.parametrize("name", [*BUILTIN_PRESETS, *USER_PRESETS])
def test_argv_holds_only_our_vocabulary_the_source_and_the_output(name: str) -> None:
    spec = BUILTIN_PRESETS.get(name) or USER_PRESETS[name]
    profile, container = preset_profile(name, spec), get_container(spec.container)
    for probed in PROBES:
        plan = make_plan(probed, profile, container)
        for source in SOURCES:
            output = f"/work/out/job{container.extension}"
            argv = build_args("/opt/ffmpeg", source, output, plan, profile, container)
            assert argv[0] == "/opt/ffmpeg" and argv[-1] == output
            # exactly one input, and it is the source
            assert [i for i, a in enumerate(argv) if a == "-i"] == [argv.index(source) - 1]
            for arg in argv[1:-1]:
                if arg in (source, "-i"):
                    continue
                assert (
                    arg in FLAGS or arg in WORDS or NUMBER.fullmatch(arg) or (FILTER.fullmatch(arg))
                ), f"{arg!r} is not ours ({name})"
                assert ".." not in arg and not arg.startswith("/"), arg


# ---------------------------------------------------------------- copy or encode


def _make(spec: PresetSpec, *streams: StreamInfo) -> tuple[Plan, list[str]]:
    profile, container = preset_profile("p", spec), get_container(spec.container)
    plan = make_plan(ProbeResult(streams=list(streams)), profile, container)
    return plan, build_args("ffmpeg", "/in.mkv", "/out", plan, profile, container)


def _plan(spec: PresetSpec, *streams: StreamInfo) -> list[str]:
    plan, _ = _make(spec, *streams)
    return [plan.video, plan.audio]


HEVC = builtin("hevc-1080p")
AV1 = builtin("av1-1080p")


@pytest.mark.parametrize(
    ("spec", "video", "expected"),
    [
        (HEVC, _video(codec="hevc"), "copy"),
        (HEVC, _video(codec="hevc", pix_fmt="yuv420p10le", hdr=True), "copy"),  # Main 10 fits
        (HEVC, _video(codec="hevc", pix_fmt="yuv422p10le"), "encode"),
        (HEVC, _video(codec="hevc", width=3840, height=2160), "encode"),
        (HEVC, _video(codec="hevc", bit_rate=9_000_000), "encode"),  # above 6000 kb/s
        (HEVC, _video(codec="h264"), "encode"),
        (msgspec.structs.replace(HEVC, copy_when_compatible=False), _video(codec="hevc"), "encode"),
        (AV1, _video(codec="av1", pix_fmt="yuv420p10le"), "copy"),
        (AV1, _video(codec="av1", pix_fmt="yuv420p12le"), "encode"),
        (AV1, _video(codec="av1", width=2560, height=1440), "encode"),
        (AV1, _video(codec="vp9"), "encode"),
    ],
)
def test_video_is_copied_only_when_it_already_fits_the_preset(
    spec: PresetSpec, video: StreamInfo, expected: str
) -> None:
    assert _plan(spec, video, _audio())[0] == expected


def test_frame_rate_cap_and_deinterlace_decide_copy() -> None:
    capped = PresetSpec(video=VideoSpec(codec="h264", max_fps=30))
    assert _plan(capped, _video(frame_rate=29.97))[0] == "copy"
    assert _plan(capped, _video(frame_rate=59.94))[0] == "encode"
    assert _plan(capped, _video(frame_rate=None))[0] == "encode"
    deint = PresetSpec(video=VideoSpec(codec="h264", deinterlace=True))
    assert _plan(deint, _video(interlaced=False))[0] == "copy"
    bwdif = "bwdif=mode=send_frame:parity=auto:deint=interlaced"
    for interlaced in (True, None):  # bwdif passes the progressive frames of a mixed source
        plan, argv = _make(deint, _video(interlaced=interlaced, width=3840, height=2160))
        assert plan.video == "encode" and plan.deinterlace
        assert argv[argv.index("-vf") + 1] == f"{bwdif},scale=1920:1080"
    # a progressive source re-encoded for another reason skips the filter
    plan, argv = _make(deint, _video(interlaced=False, codec="vc1"))
    assert plan.video == "encode" and "-vf" not in argv
    plan, argv = _make(capped, _video(frame_rate=59.94))
    assert argv[argv.index("-fpsmax") + 1] == "30"


def test_audio_is_copied_when_codec_matches_and_channels_fit() -> None:
    opus_stereo = PresetSpec(container="mkv", audio=AudioSpec(codec="opus"))
    assert _plan(opus_stereo, _video(), _audio(codec="opus"))[1] == "copy"
    assert _plan(opus_stereo, _video(), _audio(codec="opus", channels=6))[1] == "encode"
    assert _plan(opus_stereo, _video(), _audio(codec="aac"))[1] == "encode"
    surround = PresetSpec(audio=AudioSpec(channels=6))
    assert _plan(surround, _video(), _audio(channels=2))[1] == "copy"
    # a surround preset does not upmix a stereo source it must re-encode
    opus_51 = PresetSpec(container="mkv", audio=AudioSpec(codec="opus", channels=6))
    plan, argv = _make(opus_51, _video(), _audio())
    assert argv[argv.index("-ac") + 1] == "2" and plan.audio == "encode"


def test_hevc_in_mp4_is_tagged_hvc1_copied_or_encoded() -> None:
    for video in (_video(codec="hevc"), _video(codec="h264")):
        for ext, tagged in (("mp4", True), ("mkv", False)):
            _, argv = _make(msgspec.structs.replace(HEVC, container=ext), video)
            assert ("hvc1" in argv) is tagged


def test_audio_only_preset_on_a_silent_source_says_why_it_cannot_run() -> None:
    with pytest.raises(SourceError, match="no audio stream, and profile p makes audio only"):
        _plan(builtin("audio-aac"), _video())


# ---------------------------------------------------------------- real encodes


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("preset-clips")
    return {
        # MPEG-4 Part 2 video, AC-3 5.1 audio, SubRip: no preset copies them, every encoder runs
        "encode": make_clip(
            d / "mpeg4_ac3.mkv",
            seconds=1.0,
            width=320,
            height=180,
            fps=10,
            vcodec="mpeg4",
            acodec="ac3",
            channels=6,
            container="mkv",
            subtitles=True,
        ),
        "interlaced": make_clip(
            d / "interlaced.mp4", seconds=1.0, width=320, height=180, fps=10, interlaced=True
        ),
    }


async def _encode(
    name: str, spec: PresetSpec, source: Path, out_dir: Path
) -> av.container.InputContainer:
    profile, container = preset_profile(name, spec), get_container(spec.container)
    output = out_dir / f"{name}{container.extension}"
    plan = make_plan(probe(str(source)), profile, container)
    result = await run_ffmpeg(
        build_args(ffmpeg_exe(), str(source), str(output), plan, profile, container, progress=False)
    )
    assert result.returncode == 0, result.stderr_tail
    opened = av.open(str(output))
    assert isinstance(opened, av.container.InputContainer)
    return opened


@pytest.mark.parametrize("name", [*BUILTIN_PRESETS, *USER_PRESETS])
async def test_every_preset_encodes_a_playable_file(
    name: str, sources: dict[str, Path], tmp_path: Path
) -> None:
    spec = BUILTIN_PRESETS.get(name) or USER_PRESETS[name]
    source = sources["interlaced" if name == "h264-capped" else "encode"]
    with await _encode(name, spec, source, tmp_path) as out:
        videos, audios = list(out.streams.video), list(out.streams.audio)
        assert len(videos) == (spec.video is not None) and len(audios) == (spec.audio is not None)
        if spec.video is not None:
            codec = videos[0].codec_context
            assert codec.codec.canonical_name == spec.video.codec
            cap = preset_profile(name, spec)
            assert codec.width <= cap.max_width and codec.height <= cap.max_height
            if spec.video.max_fps is not None:
                assert videos[0].average_rate is not None
                assert videos[0].average_rate <= spec.video.max_fps
            assert sum(1 for _ in out.decode(video=0)) > 0  # PyAV plays it back
        if spec.audio is not None:
            # the 5.1 source gives 6 channels only where the preset asks for them
            assert audios[0].codec_context.codec.canonical_name == spec.audio.codec
            assert audios[0].codec_context.channels == spec.audio.channels
        assert len(out.streams.subtitles) == (1 if spec.subtitles else 0)
        assert out.format.name == DEMUXERS.get(spec.container, "matroska,webm")
        if name == "hevc-1080p":
            assert videos[0].codec_tag == "hvc1"  # Apple players need it
        if name in ("av1-webm", "h264-capped"):
            assert (videos[0].codec_context.width, videos[0].codec_context.height) == (256, 144)
    if spec.container == "m4a":
        assert (tmp_path / f"{name}.m4a").read_bytes()[8:12] == b"M4A "


async def test_fitting_streams_are_copied_into_the_preset_container(tmp_path: Path) -> None:
    # Given a 10-bit HEVC/AAC source in Matroska (no hvc1 tag to inherit)
    source = make_clip(
        tmp_path / "hevc.mkv",
        seconds=1.0,
        fps=10,
        vcodec="libx265",
        pix_fmt="yuv420p10le",
        container="mkv",
    )
    # When the HEVC preset and the audio-only preset run, Then nothing is re-encoded
    with await _encode("hevc-1080p", builtin("hevc-1080p"), source, tmp_path) as out:
        video = out.streams.video[0]
        assert (video.codec_context.pix_fmt, video.codec_tag) == ("yuv420p10le", "hvc1")
        assert out.streams.audio[0].codec_context.codec.canonical_name == "aac"
    with await _encode("audio-aac", builtin("audio-aac"), source, tmp_path) as out:
        assert not out.streams.video and out.streams.audio[0].codec_context.channels == 2
    mp4 = get_container("mp4")
    plans = [
        make_plan(probe(str(source)), get_profile(n), mp4) for n in ("hevc-1080p", "audio-aac")
    ]
    assert [p.mode for p in plans] == ["copy", "copy"]


def test_specs_stored_in_messages_take_unknown_fields_from_newer_writers() -> None:
    """A record written by a newer version (a field this one does not know) still decodes."""
    newer = b'{"container": "mp4", "video": {"codec": "h264", "tune": "film"}, "future": 1}'
    spec = msgspec.json.decode(newer, type=PresetSpec)
    assert spec.video is not None and spec.video.codec == "h264"
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(newer, type=PresetSpecInput)


def test_profile_level_keyframes_and_buffer_reach_the_encoder_where_they_fit() -> None:
    # Given a spec that names the H.264 profile, level, keyframe interval and buffer
    spec = parse(
        b'{"copy_when_compatible": false, "video": {"codec": "h264", "max_height": 360,'
        b' "max_bitrate_kbps": 600, "buffer_kbps": 900, "profile": "baseline", "level": "3.0",'
        b' "keyframe_interval": 72}}'
    )
    profile, container = preset_profile("named", spec), get_container("mp4")
    plan = make_plan(None, profile, container)
    argv = build_args("ffmpeg", "/media/a.mkv", "/out/o.mp4", plan, profile, container)
    # Then the encoder gets each of them
    for name, value in [
        ("-profile:v", "baseline"),
        ("-level:v", "3.0"),
        ("-g", "72"),
        ("-maxrate", "600000"),
        ("-bufsize", "900000"),
    ]:
        assert argv[argv.index(name) + 1] == value, argv
    # ... a spec that names none keeps the fingerprint it had before they existed
    assert spec_fingerprint(builtin("optimized")) == "21263872b03dc227"
    # ... and they are refused where they cannot apply
    with pytest.raises(BadRequest, match="profile is for h264 video only"):
        parse(b'{"copy_when_compatible": false, "video": {"codec": "hevc", "profile": "main"}}')
    with pytest.raises(BadRequest, match="A copied stream keeps its own level"):
        parse(b'{"video": {"codec": "h264", "level": "3.1"}}')
    with pytest.raises(BadRequest, match="buffer_kbps needs max_bitrate_kbps"):
        parse(b'{"video": {"codec": "h264", "buffer_kbps": 900}}')


@pytest.mark.parametrize("container", ["mp4", "mkv"])
async def test_a_variable_frame_rate_source_keeps_every_frame_and_its_timestamps(
    container: str, tmp_path: Path
) -> None:
    """Given a source whose first 2 s run at 24 fps and next 2 s at 30 fps (108 frames), an
    encode keeps all 108 frames at their own times, in MP4 as in Matroska, rather than making
    it constant 24 fps and dropping frames."""
    source = tmp_path / "vfr.mkv"
    parts = "[0:v][1:v]concat=n=2:v=1[v]"
    parts_in = [f"testsrc2=size=320x180:rate={rate}:duration=2" for rate in (24, 30)]
    argv = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", parts_in[0], "-f", "lavfi"]
    argv += ["-i", parts_in[1], "-filter_complex", parts, "-map", "[v]", "-fps_mode", "vfr"]
    argv += ["-c:v", "libx264", "-preset", "ultrafast", str(source)]
    assert (await run_ffmpeg(argv)).returncode == 0

    def times(path: Path) -> list[float]:
        with av.open(str(path)) as clip:
            return [float(f.time) for f in clip.decode(video=0) if f.time is not None]

    spec = PresetSpec(container=container, video=VideoSpec(codec="h264", max_height=144))
    with await _encode(f"vfr-{container}", spec, source, tmp_path) as out:
        out.close()
    before = times(source)
    after = times(tmp_path / f"vfr-{container}{get_container(container).extension}")
    assert len(before) == 108 and len(after) == 108
    assert after == pytest.approx(before, abs=0.002)
