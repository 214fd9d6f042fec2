"""Work that cannot run forever: a source that stops sending, a transcode past its time limit, a
source too long (or live), an output too large. Each ends its job with its own failure code and a
reason, frees the transcoder's slot and leaves nothing of the attempt in the scratch folder.

The misbehaving sources are small aiohttp servers owned by the test; ffmpeg, NATS and every
service are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from services.transcoder.limits import RunLimits, Watchdog, source_refusal
from shared.blobs.backends import open_store
from shared.media import ProbeResult, parse_progress
from tests.harness import ALICE, BUCKET, Api, Client, System, files_under, start_system, stop_system
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import ffmpeg_exe, make_clip
from tests.storage_servers import SeaweedS3


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The misbehaving sources listen on loopback: this operator allows it."""
    return {**env, "VIDMESH_OUTBOUND_ALLOW": "127.0.0.0/8"}


class Sources:
    """An HTTP server whose sources misbehave the ways the limits are for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.release = asyncio.Event()  # lets held responses end when the test is over
        self._runner: web.AppRunner | None = None
        self._endless: set[asyncio.subprocess.Process] = set()

    async def stalling(self, request: web.Request) -> web.StreamResponse:
        """The whole length announced, a quarter of the bytes sent, then nothing more (the
        connection stays open)."""
        data = (self.root / request.match_info["name"]).read_bytes()
        response = web.StreamResponse(headers={"Content-Type": "video/mp4"})
        response.content_length = len(data)
        await response.prepare(request)
        await response.write(data[: len(data) // 4])
        await self.release.wait()
        return response

    async def endless(self, request: web.Request) -> web.StreamResponse:
        """A live MPEG-TS stream with no end (and so no duration), as a camera or a TV channel
        sends it."""
        process = await asyncio.create_subprocess_exec(
            ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error",
            "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=10",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-f", "mpegts", "pipe:1",
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        self._endless.add(process)
        assert process.stdout is not None
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            # the reader goes away (the transcoder stopped it): the stream ends here
            with contextlib.suppress(ConnectionResetError):
                while chunk := await process.stdout.read(65536):
                    await response.write(chunk)
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            self._endless.discard(process)
        return response

    async def file(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.root / request.match_info["name"])

    async def live_playlist(self, request: web.Request) -> web.Response:
        """An HLS playlist without #EXT-X-ENDLIST: a live stream, whose end nobody knows."""
        text = (self.root / "hls" / "live.m3u8").read_text()
        live = "".join(line for line in text.splitlines(True) if "ENDLIST" not in line)
        return web.Response(text=live, content_type="application/vnd.apple.mpegurl")

    async def segment(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.root / "hls" / request.match_info["name"])

    async def start(self) -> Sources:
        app = web.Application()
        app.router.add_get("/stall/{name}", self.stalling)
        app.router.add_get("/endless.ts", self.endless)
        app.router.add_get("/files/{name}", self.file)
        app.router.add_get("/hls/live.m3u8", self.live_playlist)
        app.router.add_get("/hls/{name}", self.segment)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        self.release.set()
        for process in list(self._endless):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("limits-media")
    # moov first, so a reader gets the duration and then the samples in file order
    make_clip(root / "clip.mp4", seconds=8.0, extra_args=["-movflags", "+faststart"])
    ts = make_clip(root / "long.ts", seconds=8.0, width=160, height=120, fps=10, container="mpegts")
    (root / "hls").mkdir()
    subprocess.run(
        [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-i", str(ts),
         "-c", "copy", "-f", "hls", "-hls_time", "2", "-hls_list_size", "0",
         "-hls_segment_filename", str(root / "hls" / "seg%d.ts"), str(root / "hls" / "live.m3u8")],
        check=True,
    )  # fmt: skip
    return root


@pytest_asyncio.fixture
async def sources(media: Path) -> AsyncIterator[Sources]:
    server = await Sources(media).start()
    yield server
    await server.stop()


@contextlib.asynccontextmanager
async def running(env: dict[str, str], **settings: Any) -> AsyncIterator[System]:
    """A whole vidmesh with these limits."""
    system = await start_system({**env, **{k: str(v) for k, v in settings.items()}})
    try:
        yield system
    finally:
        await stop_system(system)


def scratch_files(system: System) -> list[Path]:
    return files_under(system.data_dir / "scratch")


async def test_a_source_that_stops_sending_fails_stalled_and_frees_the_slot(
    env: dict[str, str], sources: Sources, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # Given a transcoder with one slot that ends an attempt after 2 s without progress
    async with running(env, VIDMESH_STALL_SECONDS=2, VIDMESH_MAX_ATTEMPTS=2) as system:
        ann = await Api(http, system.url).as_user("ann")
        # When a source sends a quarter of its bytes and then nothing, the connection kept open
        started = time.monotonic()
        job = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": f"{sources.url}/stall/clip.mp4"}
        )
        # Then each attempt ends about 2 s after the source went quiet (a stall is retried once
        # here: the source may be back), and the job fails with its own code and a reason
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=25)
        elapsed = time.monotonic() - started
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "stalled" and failed["attempts"] == 2, failed
        assert "no progress" in failed["error"]["reason"] and "2 s" in failed["error"]["reason"]
        assert elapsed < 20, elapsed  # two attempts of ~2 s each, one retry delay, two probes
        # And nothing of the attempts is left in the scratch folder
        assert scratch_files(system) == []
        # And the slot is free again: an ordinary job completes
        ok = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
        )
        done = await ann.wait_job(ok["id"], "completed", "failed", timeout=30)
        assert done["status"] == "completed", done
        assert scratch_files(system) == []


async def test_a_transcode_past_its_time_limit_fails_time_limit(
    env: dict[str, str], jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # Given a transcoder whose attempts may take 3 s of wall clock
    async with running(env, VIDMESH_MAX_TRANSCODE_SECONDS=3) as system:
        alice = Client(http, system.url, ALICE)
        # When a Streamyfin user asks for a source served slowly (about 20 s for the whole clip)
        url = jellyfin.stream_url("long_ts", ALICE, kind="live", rate="40000")
        job_id = await alice.submit(url, item={"Id": "long_ts", "Name": "Slow", "Type": "Movie"})
        # Then the Streamyfin face shows the job failed, with a reason the user can act on
        job = await alice.wait_status(job_id, "failed", "completed", timeout=15)
        assert job["status"] == "failed", job
        assert "3 s" in job["error"] and "time limit" in job["error"], job
        # And the job records the code; a time limit is final (a retry would run as long again)
        record = system.scheduler.jobs.get(job_id)
        assert record is not None and record.error is not None
        assert record.error.code == "time_limit" and record.attempts == 1
        assert scratch_files(system) == []


async def test_sources_longer_than_the_limit_or_live_are_refused(
    env: dict[str, str], sources: Sources, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # Given a service that transcodes sources of at most 3 s
    async with running(env, VIDMESH_MAX_SOURCE_SECONDS=3) as system:
        ann = await Api(http, system.url).as_user("ann")
        # When the source is a 20 s file, or a live HLS playlist (no end), or an endless stream
        long_file = jellyfin.stream_url("long_ts", ALICE)
        live = f"{sources.url}/hls/live.m3u8"
        endless = f"{sources.url}/endless.ts"
        jobs = [
            await ann.ok("POST", "/api/jobs", 201, json={"source": source})
            for source in (long_file, live, endless)
        ]
        # Then each fails `source_too_long`, at once and for good
        outcomes = [await ann.wait_job(j["id"], "failed", "completed", timeout=30) for j in jobs]
        for outcome in outcomes:
            assert outcome["status"] == "failed", outcome
            assert outcome["error"]["code"] == "source_too_long", outcome
            assert outcome["attempts"] == 1, outcome
        file_error, live_error, endless_error = (o["error"]["reason"] for o in outcomes)
        # the file and the playlist at probe, before any ffmpeg ran: the reason says why
        assert "20 s" in file_error and "3 s" in file_error, file_error
        assert "live" in live_error, live_error
        # the endless stream (no duration to know up front) once its output passed 3 s
        assert "3 s" in endless_error, endless_error
        assert system.output_files() == [] and scratch_files(system) == []


async def test_an_output_larger_than_the_limit_fails_and_is_not_published(
    env: dict[str, str], jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # Given outputs of at most 30 kB (ffmpeg stops itself there and exits 0 with a cut file)
    async with running(env, VIDMESH_MAX_OUTPUT_BYTES=30_000) as system:
        ann = await Api(http, system.url).as_user("ann")
        alice = Client(http, system.url, ALICE)
        # When a transcode writes more than that (HEVC to H.264, 2 s)
        source = jellyfin.stream_url("hevc", ALICE)
        job = await ann.ok("POST", "/api/jobs", 201, json={"source": source})
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=30)
        # Then the job fails `output_too_large`, for good, and no output is published
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "output_too_large" and failed["attempts"] == 1, failed
        assert "30000 bytes" in failed["error"]["reason"], failed
        assert failed["output"] is None
        assert system.output_files() == [] and scratch_files(system) == []
        # And the Streamyfin face shows the same job as failed
        job_id = await alice.submit(jellyfin.stream_url("hevc", ALICE, n="2"))
        shown = await alice.wait_status(job_id, "failed", "completed", timeout=30)
        assert shown["status"] == "failed" and "30000 bytes" in shown["error"], shown


async def test_an_output_uploaded_while_written_is_not_published_when_too_large(
    env: dict[str, str], seaweed: SeaweedS3, jellyfin: JellyfinStandIn, http: aiohttp.ClientSession
) -> None:
    # Given outputs of at most 30 kB, and a user whose outputs go to their own S3 bucket as
    # ffmpeg writes them (fragmented MP4: ffmpeg's own -fs does not stop that muxer)
    async with running(env, VIDMESH_MAX_OUTPUT_BYTES=30_000) as system:
        ann = await Api(http, system.url).as_user("ann")
        prefix = f"ann-{uuid.uuid4().hex[:8]}"
        credentials = {
            "bucket": BUCKET,
            "prefix": prefix,
            "endpoint": seaweed.endpoint,
            "region": "us-east-1",
            "access_key_id": seaweed.access_key,
            "secret_access_key": seaweed.secret_key,
        }
        await ann.ok("POST", "/user/s3", 201, json=credentials)
        spec = (await ann.ok("GET", "/api/presets/h264-480p"))["spec"]
        preset = await ann.ok(
            "POST",
            "/api/presets",
            201,
            json={"name": "frag", "spec": {**spec, "container": "fmp4"}},
        )
        # When a transcode writes more than that
        job = await ann.ok(
            "POST",
            "/api/jobs",
            201,
            json={
                "source": jellyfin.stream_url("hevc", ALICE),
                "preset": preset["id"],
                "destination": {"store": "s3", "filename": "big.mp4"},
            },
        )
        failed = await ann.wait_job(job["id"], "failed", "completed", timeout=30)
        # Then it fails `output_too_large` and nothing partial is in the bucket
        assert failed["status"] == "failed", failed
        assert failed["error"]["code"] == "output_too_large", failed
        bucket = open_store(seaweed.config(BUCKET))
        assert await bucket.stat(f"{prefix}/big.mp4") is None
        assert [b.key for b in await bucket.list_blobs(f"{prefix}/")] == []
        assert scratch_files(system) == []


def _block(out_time: str, total_size: int, frame: int) -> dict[str, str]:
    """One `-progress` block as ffmpeg prints it."""
    return {
        "frame": str(frame),
        "total_size": str(total_size),
        "out_time": out_time,
        "progress": "continue",
    }


def test_the_watchdog_sees_the_final_flush_as_progress_and_silence_as_a_stall() -> None:
    now = [0.0]
    limits = RunLimits(stall_seconds=3, max_output_bytes=10**9, max_source_seconds=None)
    watchdog = Watchdog(limits, clock=lambda: now[0])
    watchdog.saw(parse_progress(_block("00:00:05.000000", 1000, 50)))
    # While ffmpeg flushes at the end it reports out_time=N/A, but frames and bytes still grow
    now[0] = 2.0
    watchdog.saw(parse_progress(_block("N/A", 2000, 60)))
    now[0] = 4.5
    assert watchdog.check() is None
    # Blocks that repeat the same numbers are no progress: 3 s of them end the run
    watchdog.saw(parse_progress(_block("00:00:05.000000", 2000, 60)))
    now[0] = 5.5
    error = watchdog.check()
    assert error is not None and error.code == "stalled" and error.retryable


def test_the_watchdog_stops_an_untimed_source_past_the_length_limit_and_a_large_output() -> None:
    limits = RunLimits(stall_seconds=60, max_output_bytes=10_000, max_source_seconds=10)
    long_run = Watchdog(limits)
    long_run.saw(parse_progress(_block("00:00:10.500000", 500, 105)))
    error = long_run.check()
    assert error is not None and error.code == "source_too_long" and not error.retryable
    big = Watchdog(limits)
    big.saw(parse_progress(_block("00:00:01.000000", 10_000, 10)))
    error = big.check()
    assert error is not None and error.code == "output_too_large" and not error.retryable


def test_sources_refused_at_probe() -> None:
    limit = 3600.0
    long_file = ProbeResult(container="matroska", duration=7200.0)
    refused = source_refusal(long_file, 7200.0, False, limit)
    assert refused is not None and refused.code == "source_too_long" and "7200 s" in refused.reason
    live = ProbeResult(container="hls", duration=None)
    refused = source_refusal(live, None, True, limit)
    assert refused is not None and "live" in refused.reason
    # A chunked stream with no duration may be a finite transcode (Jellyfin's): it is watched,
    # not refused; so is an estimate, and a source the probe could not read
    assert source_refusal(ProbeResult(container="mpegts"), None, True, limit) is None
    estimated = ProbeResult(container="mpegts", size=10**10, bit_rate=1000)
    assert source_refusal(estimated, 8e7, True, limit) is None
    assert source_refusal(None, None, True, limit) is None
    # A client's hint longer than the limit is believed
    assert source_refusal(ProbeResult(container="mpegts"), 7200.0, False, limit) is not None
