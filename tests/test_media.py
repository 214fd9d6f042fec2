"""The media layer, specified by what a user gets: real clips, real ffmpeg, real PyAV probes."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from shared.errors import BadRequest, SourceError
from shared.media import (
    CONTAINERS,
    DEFAULT_PROFILE,
    STDERR_TAIL_CHARS,
    ContainerSpec,
    FfmpegProgress,
    FfmpegRun,
    Plan,
    ProbeResult,
    Profile,
    StreamInfo,
    build_args,
    classify_failure,
    ffmpeg_version,
    get_container,
    get_profile,
    make_plan,
    parse_progress,
    probe,
    probe_async,
    run_ffmpeg,
)
from tests.harness import free_port
from tests.media_clips import (
    ffmpeg_exe,
    make_clip,
    make_text_file,
    mp4_top_level_boxes,
    slow_lavfi_argv,
)

MP4 = CONTAINERS["mp4"]
MKV = CONTAINERS["mkv"]


# ---------------------------------------------------------------- helpers and fixtures


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The source clips most tests share, made once."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "h264_aac": make_clip(d / "h264_aac.mp4"),
        "hevc_aac": make_clip(d / "hevc_aac.mp4", vcodec="libx265", pix_fmt="yuv420p10le"),
        "h264_ac3_51": make_clip(d / "h264_ac3_51.mkv", acodec="ac3", channels=6, container="mkv"),
        "mkv_subs": make_clip(d / "mkv_subs.mkv", container="mkv", subtitles=True),
        "mp4_subs": make_clip(d / "mp4_subs.mp4", subtitles=True),
        "silent": make_clip(d / "silent.mp4", acodec=None),
        "ts": make_clip(d / "clip.ts", container="mpegts", seconds=3.0),
    }


async def transcode(
    source: Path | str,
    output: Path,
    *,
    profile: Profile = DEFAULT_PROFILE,
    container: ContainerSpec = MP4,
) -> tuple[Plan, ProbeResult]:
    """Probe, plan, run ffmpeg for real; return the plan and a probe of the output."""
    plan = make_plan(await probe_async(str(source)), profile, container)
    argv = build_args(ffmpeg_exe(), str(source), str(output), plan, profile, container)
    result = await run_ffmpeg(argv)
    assert result.returncode == 0, result.stderr_tail
    return plan, await probe_async(str(output))


def video_of(result: ProbeResult) -> StreamInfo:
    stream = result.video()
    assert stream is not None
    return stream


def audio_of(result: ProbeResult) -> StreamInfo:
    stream = result.audio()
    assert stream is not None
    return stream


def ffmpeg_is_running(marker: str) -> bool:
    """Whether any live process has `marker` (a unique output path) on its command line."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            status = Path(f"/proc/{pid}/status").read_text()
            if "State:\tZ" not in status:
                return True
    return False


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
async def http_base(clips: dict[str, Path]) -> AsyncIterator[str]:
    """A real HTTP server: /files/<name> (Range-capable), /status/<code>, /chunked/<name>."""

    async def status(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def chunked(request: web.Request) -> web.StreamResponse:
        # no Content-Length, like a live or on-the-fly transcoded stream
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        data = clips[request.match_info["name"]].read_bytes()
        for start in range(0, len(data), 16384):
            await response.write(data[start : start + 16384])
        await response.write_eof()
        return response

    async def files(request: web.Request) -> web.FileResponse:
        return web.FileResponse(clips[request.match_info["name"]])

    app = web.Application()
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/chunked/{name}", chunked)
    app.router.add_get("/files/{name}", files)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


# ---------------------------------------------------------------- copy or encode


async def test_small_h264_aac_source_is_stream_copied(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # Given an H.264/AAC stereo 320x240 source, When it is made into the default rendition
    plan, out = await transcode(clips["h264_aac"], tmp_path / "out.mp4")
    # Then nothing is re-encoded, and the output has the source's streams
    assert (plan.video, plan.audio, plan.mode) == ("copy", "copy", "copy")
    assert (video_of(out).codec, video_of(out).width, video_of(out).height) == ("h264", 320, 240)
    assert (audio_of(out).codec, audio_of(out).channels) == ("aac", 2)
    assert out.duration == pytest.approx(2.0, abs=0.1)


async def test_hevc_source_is_reencoded_to_h264(clips: dict[str, Path], tmp_path: Path) -> None:
    # Given a 10-bit HEVC source with AAC stereo
    plan, out = await transcode(clips["hevc_aac"], tmp_path / "out.mp4")
    # Then the video is encoded to 8-bit H.264 High and the audio copied
    assert (plan.video, plan.audio, plan.mode) == ("encode", "copy", "transcode")
    assert "video hevc is not h264" in plan.reasons
    video = video_of(out)
    assert (video.codec, video.profile, video.pix_fmt) == ("h264", "High", "yuv420p")
    assert (video.width, video.height) == (320, 240)
    assert audio_of(out).codec == "aac"


async def test_surround_audio_is_downmixed_to_stereo_aac(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # Given an H.264 source with AC-3 5.1 audio
    source = probe(str(clips["h264_ac3_51"]))
    assert (audio_of(source).codec, audio_of(source).channels) == ("ac3", 6)
    plan, out = await transcode(clips["h264_ac3_51"], tmp_path / "out.mp4")
    # Then the video is copied and the audio becomes AAC stereo
    assert (plan.video, plan.audio) == ("copy", "encode")
    assert (audio_of(out).codec, audio_of(out).channels) == ("aac", 2)


async def test_source_without_audio_gets_a_video_only_rendition(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    plan, out = await transcode(clips["silent"], tmp_path / "out.mp4")
    assert (plan.video, plan.audio) == ("copy", "none")
    assert out.audio() is None and video_of(out).codec == "h264"


def big_h264(width: int, height: int, **overrides: object) -> ProbeResult:
    video = StreamInfo(
        index=0, kind="video", codec="h264", pix_fmt="yuv420p", width=width, height=height
    )
    audio = StreamInfo(index=1, kind="audio", codec="aac", channels=2)
    return ProbeResult(streams=[msgspec.structs.replace(video, **overrides), audio])


@pytest.mark.parametrize(
    ("size", "target"),
    [
        ((3840, 2160), (1920, 1080)),  # 4K UHD: exactly half
        ((4096, 1716), (1920, 804)),  # scope DCI: width-bound, height rounded down to even
        ((1440, 1920), (810, 1080)),  # portrait: height-bound
        ((2000, 1081), (1920, 1036)),  # just over: never over the box, always even
    ],
)
def test_source_larger_than_1080p_is_scaled_down_keeping_aspect(
    size: tuple[int, int], target: tuple[int, int]
) -> None:
    plan = make_plan(big_h264(*size), DEFAULT_PROFILE, MP4)
    assert plan.video == "encode" and plan.scale == target
    assert all(v % 2 == 0 for v in target)
    assert abs(target[0] / target[1] - size[0] / size[1]) < 0.01


def test_source_that_fits_is_never_upscaled() -> None:
    plan = make_plan(big_h264(640, 360, codec="hevc"), DEFAULT_PROFILE, MP4)
    assert plan.video == "encode" and plan.scale is None and not plan.cap_size


def test_video_above_the_bitrate_cap_is_reencoded(clips: dict[str, Path]) -> None:
    # Given a real clip whose video bit rate (~0.5 Mb/s) is above a profile's cap
    source = probe(str(clips["h264_aac"]))
    assert video_of(source).bit_rate is not None
    capped = msgspec.structs.replace(DEFAULT_PROFILE, max_video_bitrate=100_000)
    plan = make_plan(source, capped, MP4)
    assert plan.video == "encode" and any("bit rate" in r for r in plan.reasons)
    assert make_plan(source, DEFAULT_PROFILE, MP4).video == "copy"


async def test_large_source_is_scaled_to_the_computed_size_end_to_end(tmp_path: Path) -> None:
    # Given a 320x200 source and a profile capped at 160x120 (a stand-in for 4K into 1080p)
    source = make_clip(tmp_path / "wide.mp4", width=320, height=200, seconds=1.0)
    small = msgspec.structs.replace(DEFAULT_PROFILE, max_width=160, max_height=120)
    plan, out = await transcode(source, tmp_path / "out.mp4", profile=small)
    assert plan.scale == (160, 100)
    assert (video_of(out).width, video_of(out).height) == (160, 100)


async def test_unprobed_source_is_encoded_and_capped_by_expression(tmp_path: Path) -> None:
    # Given probing failed, When a plan is made, Then everything is encoded, capped by expression
    plan = make_plan(None, DEFAULT_PROFILE, MP4)
    assert (plan.video, plan.audio, plan.cap_size, plan.mode) == (
        "encode",
        "encode",
        True,
        "transcode",
    )
    # And the expression really caps a too-large source and evens odd sizes
    small = msgspec.structs.replace(DEFAULT_PROFILE, max_width=160, max_height=120)
    cases = [
        (make_clip(tmp_path / "big.mp4", seconds=1.0), small, (160, 120)),
        (
            make_clip(
                tmp_path / "odd.mkv",
                width=321,
                height=241,
                pix_fmt="yuv444p",
                container="mkv",
                seconds=1.0,
            ),
            DEFAULT_PROFILE,
            (320, 240),
        ),
    ]
    for source, profile, size in cases:
        output = tmp_path / f"{source.stem}.out.mp4"
        argv = build_args(ffmpeg_exe(), str(source), str(output), plan, profile, MP4)
        result = await run_ffmpeg(argv)
        assert result.returncode == 0, result.stderr_tail
        out = await probe_async(str(output))
        assert (video_of(out).width, video_of(out).height) == size
        assert (video_of(out).codec, audio_of(out).codec) == ("h264", "aac")


async def test_mkv_keeps_subtitles_mp4_drops_them(clips: dict[str, Path], tmp_path: Path) -> None:
    # Given a Matroska source with a SubRip track
    plan_mkv, out_mkv = await transcode(clips["mkv_subs"], tmp_path / "out.mkv", container=MKV)
    plan_mp4, out_mp4 = await transcode(clips["mkv_subs"], tmp_path / "out.mp4", container=MP4)
    # Then an mkv rendition carries it and an mp4 rendition does not
    assert plan_mkv.subtitles and [s.codec for s in out_mkv.subtitles()] == ["subrip"]
    assert not plan_mp4.subtitles and out_mp4.subtitles() == []
    assert "-sn" in build_args("ffmpeg", "in.mkv", "o.mp4", plan_mp4, DEFAULT_PROFILE, MP4)


async def test_mp4_text_subtitles_are_converted_for_mkv(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # mov_text cannot go into Matroska as it is: it is rewritten as SubRip instead of failing
    plan, out = await transcode(clips["mp4_subs"], tmp_path / "out.mkv", container=MKV)
    assert (plan.subtitles, plan.subtitle_codec) == (True, "srt")
    assert [s.codec for s in out.subtitles()] == ["subrip"]


async def test_output_mp4_is_faststart(clips: dict[str, Path], tmp_path: Path) -> None:
    # Given a source whose moov atom is at the end of the file
    boxes = mp4_top_level_boxes(clips["h264_aac"])
    assert boxes.index("moov") > boxes.index("mdat")
    # When it is copied or transcoded, Then the output's moov comes before its mdat
    for name in ("h264_aac", "hevc_aac"):
        output = tmp_path / f"{name}.mp4"
        await transcode(clips[name], output)
        boxes = mp4_top_level_boxes(output)
        assert boxes.index("moov") < boxes.index("mdat"), boxes


def test_probe_tells_interlaced_video_from_progressive(
    clips: dict[str, Path], tmp_path: Path
) -> None:
    # a deinterlacing preset may copy only what is known to be progressive
    interlaced = make_clip(tmp_path / "fields.mp4", seconds=0.5, interlaced=True)
    assert video_of(probe(str(interlaced))).interlaced is True
    assert video_of(probe(str(clips["h264_aac"]))).interlaced is False


def test_badly_encoded_tags_do_not_make_a_file_unreadable(tmp_path: Path) -> None:
    # Given a file whose title tag is Latin-1, not UTF-8 (the surrogate becomes the raw byte 0xE9)
    latin1_title = ["-metadata", "title=caf\udce9"]
    source = make_clip(
        tmp_path / "latin1.mkv", container="mkv", seconds=1.0, extra_args=latin1_title
    )
    # Then it still probes, and is still copied
    assert make_plan(probe(str(source)), DEFAULT_PROFILE, MKV).mode == "copy"


# ---------------------------------------------------------------- http sources


async def test_http_source_is_probed_and_transcoded_with_reconnect(
    http_base: str, tmp_path: Path
) -> None:
    url = f"{http_base}/files/hevc_aac"
    source = await probe_async(url)
    assert source.duration == pytest.approx(2.0, abs=0.1) and source.size
    plan = make_plan(source, DEFAULT_PROFILE, MP4)
    argv = build_args(ffmpeg_exe(), url, str(tmp_path / "out.mp4"), plan, DEFAULT_PROFILE, MP4)
    assert argv.index("-reconnect") < argv.index("-i") and argv[-1] == str(tmp_path / "out.mp4")
    result = await run_ffmpeg(argv)
    assert result.returncode == 0, result.stderr_tail
    assert video_of(await probe_async(str(tmp_path / "out.mp4"))).codec == "h264"


async def test_chunked_mpegts_stream_has_unknown_duration(http_base: str) -> None:
    source = await probe_async(f"{http_base}/chunked/ts")
    assert source.container == "mpegts" and source.duration is None
    assert video_of(source).codec == "h264"


def test_local_paths_get_no_reconnect_options() -> None:
    argv = build_args(
        "ffmpeg",
        "/m/a.mkv",
        "/o.mp4",
        make_plan(None, DEFAULT_PROFILE, MP4),
        DEFAULT_PROFILE,
        MP4,
        progress=False,
    )
    assert "-reconnect" not in argv and "-progress" not in argv
    assert argv[:6] == ["ffmpeg", "-hide_banner", "-nostdin", "-y", "-loglevel", "error"]


def test_threads_bound_decoding_filtering_and_encoding_only_when_configured() -> None:
    plan = make_plan(None, DEFAULT_PROFILE, MP4)
    unset = build_args("ffmpeg", "/m/a.mkv", "/o.mp4", plan, DEFAULT_PROFILE, MP4)
    one = build_args("ffmpeg", "/m/a.mkv", "/o.mp4", plan, DEFAULT_PROFILE, MP4, threads=1)
    assert "-threads" not in unset and "-filter_threads" not in unset
    source = one.index("-i")
    decoder, encoder = [i for i, arg in enumerate(one) if arg == "-threads"]
    assert decoder < source < encoder  # an input (decoder) and an output (encoder) option
    assert one[decoder + 1] == one[encoder + 1] == one[one.index("-filter_threads") + 1] == "1"
    assert [a for a in one if a not in ("-threads", "-filter_threads", "1")] == unset


# ---------------------------------------------------------------- probe failures


def test_probe_of_unreachable_url_is_a_retryable_source_error() -> None:
    with pytest.raises(SourceError) as caught:
        probe(f"http://127.0.0.1:{free_port()}/Videos/1/stream?api_key=secret", timeout=2)
    assert caught.value.retryable_now is True
    assert "refused" in caught.value.message and "secret" not in caught.value.message


def test_probe_of_non_video_file_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        probe(str(make_text_file(tmp_path / "notes.mp4")))
    assert caught.value.retryable_now is False
    assert caught.value.message.startswith("The source is not a video ffmpeg can read")


def test_probe_of_missing_file_is_not_retryable(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        probe(str(tmp_path / "gone.mkv"))
    assert caught.value.retryable_now is False and "does not exist" in caught.value.message


@pytest.mark.parametrize(
    ("code", "retryable", "words"),
    [
        (404, False, "404 Not Found"),
        (403, False, "403 Forbidden"),
        (401, False, "401 Unauthorized"),
        (503, True, "server error"),
    ],
)
async def test_probe_of_http_errors_says_what_the_server_answered(
    http_base: str, code: int, retryable: bool, words: str
) -> None:
    with pytest.raises(SourceError) as caught:
        await probe_async(f"{http_base}/status/{code}")
    assert caught.value.retryable_now is retryable and words in caught.value.message


async def test_probe_of_a_server_that_never_answers_gives_up_after_its_timeout() -> None:
    # Given a server that accepts connections but never answers
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            await probe_async(f"http://127.0.0.1:{server.getsockname()[1]}/x", timeout=1.0)
    # Then the probe gives up after about its timeout, and retrying later may help
    assert time.monotonic() - started < 5
    assert caught.value.retryable_now is True and "did not answer" in caught.value.message


# ---------------------------------------------------------------- running ffmpeg


async def test_progress_is_reported_while_ffmpeg_runs(tmp_path: Path) -> None:
    seen: list[tuple[float, FfmpegProgress]] = []
    output = tmp_path / "out.mp4"
    run = FfmpegRun(
        slow_lavfi_argv(output, seconds=2.0),
        on_progress=lambda p: seen.append((time.monotonic(), p)),
    )
    await run.start()
    result = await run.wait()
    assert result.returncode == 0 and not result.cancelled
    # several blocks arrived while it ran, in order, and only the last one says done
    assert len(seen) >= 3
    assert [p.done for _, p in seen] == [False] * (len(seen) - 1) + [True]
    times = [p.out_time for _, p in seen]
    assert times == sorted(times) and times[-1] == pytest.approx(2.0, abs=0.2)
    assert seen[-1][0] - seen[0][0] > 0.8  # spread over the run, not all at the end
    assert seen[-1][1].total_size == output.stat().st_size
    assert seen[-1][1].speed is not None and seen[-1][1].frame == 20


async def test_cancel_kills_ffmpeg_within_two_seconds(tmp_path: Path) -> None:
    # Given a transcode that would run for a minute and has started writing
    output = tmp_path / "long.mp4"
    started = asyncio.Event()
    run = FfmpegRun(slow_lavfi_argv(output, seconds=60.0), on_progress=lambda p: started.set())
    await run.start()
    await asyncio.wait_for(started.wait(), 10)
    # When the job is cancelled
    t0 = time.monotonic()
    await run.cancel()
    result = await run.wait()
    # Then ffmpeg is gone within two seconds, killed, and the result says it was cancelled
    assert time.monotonic() - t0 < 2.0
    assert result.cancelled and result.returncode == -9
    assert not ffmpeg_is_running(str(output))


async def test_cancelling_the_awaiting_task_kills_ffmpeg(tmp_path: Path) -> None:
    output = tmp_path / "orphan.mp4"
    started = asyncio.Event()
    task = asyncio.create_task(
        run_ffmpeg(slow_lavfi_argv(output, seconds=60.0), on_progress=lambda p: started.set())
    )
    await asyncio.wait_for(started.wait(), 10)
    assert ffmpeg_is_running(str(output))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: not ffmpeg_is_running(str(output)), within=2.0)


async def test_terminate_lets_ffmpeg_finish_a_playable_file(tmp_path: Path) -> None:
    output = tmp_path / "stopped.mp4"
    started = asyncio.Event()
    run = FfmpegRun(slow_lavfi_argv(output, seconds=60.0), on_progress=lambda p: started.set())
    await run.start()
    await asyncio.wait_for(started.wait(), 10)
    await run.terminate(grace=3.0)
    result = await run.wait()
    # SIGTERM makes ffmpeg write its trailer: what was encoded so far is a valid file
    assert result.cancelled and result.returncode != -9
    assert video_of(await probe_async(str(output))).codec == "h264"


async def test_a_failing_progress_consumer_stops_ffmpeg(tmp_path: Path) -> None:
    def broken(progress: FfmpegProgress) -> None:
        raise RuntimeError("consumer bug")

    run = FfmpegRun(slow_lavfi_argv(tmp_path / "x.mp4", seconds=60.0), on_progress=broken)
    await run.start()
    with pytest.raises(RuntimeError, match="consumer bug"):
        await asyncio.wait_for(run.wait(), 10)
    assert run.returncode == -9


async def test_chatty_stderr_is_drained_and_only_its_tail_kept(tmp_path: Path) -> None:
    # -loglevel debug writes far more than a pipe buffer holds; the run must still finish
    options = "-hide_banner -nostdin -y -loglevel debug -f lavfi"
    options += " -i testsrc2=size=160x120:rate=10:duration=2 -c:v libx264 -preset ultrafast -f mp4"
    argv = [ffmpeg_exe(), *options.split(), str(tmp_path / "x.mp4")]
    result = await asyncio.wait_for(run_ffmpeg(argv), 30)
    assert result.returncode == 0
    assert 0 < len(result.stderr_tail) <= STDERR_TAIL_CHARS


def test_progress_block_with_unknown_values_parses() -> None:
    progress = parse_progress(
        {
            "frame": "0",
            "fps": "0.00",
            "total_size": "N/A",
            "out_time_us": "N/A",
            "out_time_ms": "N/A",
            "out_time": "-00:00:00.040000",
            "speed": "N/A",
            "progress": "continue",
        }
    )
    assert progress == FfmpegProgress(
        out_time=0.0, speed=None, fps=0.0, frame=0, total_size=0, done=False
    )
    assert (
        parse_progress({"out_time_us": "1500000", "speed": "2.5x", "progress": "end"}).out_time
        == 1.5
    )


def test_ffmpeg_version_names_the_build() -> None:
    assert ffmpeg_version(ffmpeg_exe()).startswith("ffmpeg version")


# ---------------------------------------------------------------- failures in words


async def test_classify_failure_recognises_http_404(http_base: str, tmp_path: Path) -> None:
    # Given ffmpeg is pointed at a source the server does not have
    url = f"{http_base}/status/404"
    argv = build_args(
        ffmpeg_exe(),
        url,
        str(tmp_path / "o.mp4"),
        make_plan(None, DEFAULT_PROFILE, MP4),
        DEFAULT_PROFILE,
        MP4,
    )
    result = await run_ffmpeg(argv)
    error = classify_failure(result.stderr_tail, result.returncode)
    # Then the failure says so, in words, and is not retried
    assert result.returncode != 0
    assert (error.code, error.retryable) == ("source_not_found", False)
    assert error.reason == "The source could not be read: the server answered 404 Not Found."
    assert "404" in error.detail


def _failing_run(kind: str, tmp_path: Path, base: str) -> list[str]:
    out = str(tmp_path / f"{kind}.mp4")
    plan = make_plan(None, DEFAULT_PROFILE, MP4)
    src = {
        "refused": f"http://127.0.0.1:{free_port()}/x",
        "server_error": f"{base}/status/502",
        "forbidden": f"{base}/status/403",
        "invalid": str(make_text_file(tmp_path / "not-video.mkv")),
        "missing": str(tmp_path / "missing.mkv"),
    }.get(kind)
    if src is not None:
        return build_args(ffmpeg_exe(), src, out, plan, DEFAULT_PROFILE, MP4)
    clip = str(make_clip(tmp_path / "ok.mp4", seconds=0.5))
    if kind == "no_space":
        return build_args(ffmpeg_exe(), clip, "/dev/full", plan, DEFAULT_PROFILE, MP4)
    assert kind == "no_encoder"
    nvenc = msgspec.structs.replace(DEFAULT_PROFILE, encoder="h264_nvenc", preset="p4")
    return build_args(ffmpeg_exe(), clip, out, plan, nvenc, MP4)


@pytest.mark.parametrize(
    ("kind", "code", "retryable"),
    [
        ("refused", "source_unreachable", True),
        ("server_error", "source_unreachable", True),
        ("forbidden", "source_refused", False),
        ("invalid", "source_invalid", False),
        ("missing", "source_not_found", False),
        ("no_space", "output_failed", True),
        ("no_encoder", "encoder_failed", False),  # no NVENC here (nor on H100/H200)
    ],
)
async def test_real_ffmpeg_failures_are_classified(
    http_base: str, tmp_path: Path, kind: str, code: str, retryable: bool
) -> None:
    result = await run_ffmpeg(_failing_run(kind, tmp_path, http_base))
    error = classify_failure(result.stderr_tail, result.returncode)
    assert result.returncode != 0
    assert (error.code, error.retryable) == (code, retryable), result.stderr_tail
    assert error.reason.endswith(".") and error.detail == result.stderr_tail


@pytest.mark.parametrize(
    ("stderr", "returncode", "code", "retryable"),
    [
        ("[mov,mp4 @ 0x1] moov atom not found\n", 183, "source_invalid", False),
        ("OpenEncodeSessionEx failed: out of memory (10)\n", 187, "encoder_failed", True),
        ("OpenEncodeSessionEx failed: unsupported device (2)\n", 187, "encoder_failed", False),
        ("Error applying encoder options: Invalid argument\n", 234, "encoder_failed", False),
        (
            "Connection to tcp://jf:8096 failed: Connection timed out\n",
            1,
            "source_unreachable",
            True,
        ),
        ("", -9, "ffmpeg_failed", True),
        ("something new\n", 1, "ffmpeg_failed", False),
    ],
)
def test_classify_failure_of_messages_not_reproducible_here(
    stderr: str, returncode: int, code: str, retryable: bool
) -> None:
    error = classify_failure(stderr, returncode)
    assert (error.code, error.retryable) == (code, retryable)


# ---------------------------------------------------------------- profiles and containers


def test_unknown_profile_and_container_are_bad_requests() -> None:
    assert get_profile("optimized") is DEFAULT_PROFILE
    assert get_profile("optimized-720p").max_height == 720
    assert get_container(".MP4") is MP4 and get_container("mkv").muxer == "matroska"
    with pytest.raises(BadRequest) as profile_error:
        get_profile("ultra-4k")
    with pytest.raises(BadRequest) as container_error:
        get_container("avi")
    assert profile_error.value.http_status == 400
    assert "optimized" in profile_error.value.message
    assert "mkv" in container_error.value.message and "mp4" in container_error.value.message


def test_default_profile_is_h264_aac_stereo_capped_at_1080p_faststart() -> None:
    p = DEFAULT_PROFILE
    assert (p.name, p.video_codec, p.audio_codec, p.audio_channels) == (
        "optimized",
        "h264",
        "aac",
        2,
    )
    assert (p.max_width, p.max_height, MP4.faststart, MP4.mime) == (1920, 1080, True, "video/mp4")
    argv = build_args("ffmpeg", "http://jf/v", "/o.mp4", make_plan(None, p, MP4), p, MP4)
    for option in (
        ["-c:v", "libx264"],
        ["-profile:v", "high"],
        ["-level:v", "4.1"],
        ["-b:a", "160k"],
        ["-ac", "2"],
        ["-movflags", "+faststart"],
        ["-f", "mp4"],
        ["-progress", "pipe:1"],
        ["-reconnect_delay_max", "5"],
    ):
        i = argv.index(option[0])
        assert argv[i : i + 2] == option


def test_progress_does_not_drop_to_zero_when_ffmpeg_flushes_with_out_time_na() -> None:
    """During the encoder's final flush ffmpeg prints `out_time=N/A` (read as 0 s): the job's
    progress stays where it was instead of dropping from 99.5 % to 0 % just before it ends."""
    from services.transcoder.progress import ProgressReporter

    reporter = ProgressReporter(None, key="k", generation=1, attempt=1, interval=1)  # type: ignore[arg-type]
    reporter.set_total(20.0, estimated=False)
    reporter.on_ffmpeg(parse_progress({"out_time_us": "19900000", "speed": "3x"}))
    assert reporter.latest.percent == 99.5
    reporter.on_ffmpeg(parse_progress({"out_time_us": "N/A", "out_time": "N/A", "speed": "3x"}))
    assert reporter.latest.percent == 99.5 and reporter.latest.out_time == 19.9


def test_a_retryable_failure_with_no_attempt_left_says_it_is_final() -> None:
    """A job that failed for good does not tell its user that it will be retried."""
    from shared.media.failures import gave_up
    from shared.wire import JobError

    error = JobError(
        code="source_unreachable",
        reason="The source server answered 502 Bad Gateway; it will be retried.",
        retryable=True,
    )
    assert gave_up(error, 3).reason == (
        "The source server answered 502 Bad Gateway; tried 3 times, given up."
    )
    assert gave_up(error, 1).reason.endswith("tried once, given up.")
