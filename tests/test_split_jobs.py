"""A long job is split into segments that several transcoders encode at once, then joined into
its one output: through the native API, on a real system (every service its own process, two
transcoders, a pool that runs two work items at once).

Splitting is tuned down so a 30 s clip is "long": sources of 10 s or more are cut into segments
of about 5 s. Sources come from the Jellyfin stand-in, which answers Range requests (its `live`
stream does not: such a source is stored first); `seek_rate` serves every seek slowly, so a
segment other than the first runs for seconds while the test looks at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from shared.blobs.keys import source_copy_key
from shared.media.probe import probe
from tests.harness import (
    ALICE,
    Api,
    Deployment,
    eventually,
    fast_env,
    ffmpeg_pids,
    free_port,
    new_namespace,
)
from tests.harness.procfs import parent_of
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import ffmpeg_exe, make_clip
from tests.test_segments_media import _frame_times
from vidmesh.natsserver import NatsServer

pytestmark = pytest.mark.slow

SERVICES = ("scheduler", "storage", "statistics", "gateway", "transcoder", "transcoder")
SPLIT_ENV = {
    "VIDMESH_SEGMENT_MIN_SECONDS": "10",
    "VIDMESH_SEGMENT_SECONDS": "5",
    "MAX_CONCURRENT_JOBS": "2",  # the pool runs two work items (parts) at once
    "VIDMESH_ORPHAN_GRACE": "3",
}
# a preset that always re-encodes the video, quickly
ENCODE = {"video": {"codec": "h264", "speed": "ultrafast"}, "copy_when_compatible": False}
B_FRAMES = ["-preset", "fast", "-bf", "3", "-g", "24"]


def _vfr_clip(path: Path) -> Path:
    """8 s at 24 fps then 8 s at 30 fps (432 frames), keyframes every 20 frames, with sound."""
    parts = [f"testsrc2=size=320x240:rate={rate}:duration=8" for rate in (24, 30)]
    argv = [ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", parts[0], "-f", "lavfi", "-i"]
    argv += [parts[1], "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=16"]
    argv += ["-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a"]
    argv += ["-fps_mode", "vfr", "-c:v", "libx264", "-preset", "ultrafast", "-g", "20"]
    argv += ["-c:a", "aac", str(path)]
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, jellyfin: JellyfinStandIn) -> dict[str, Path]:
    """The module's clips, served by the stand-in under their names."""
    root = tmp_path_factory.mktemp("split-clips")
    clips = {
        "split_bframes": make_clip(
            root / "bframes.mkv", seconds=30, fps=24, container="mkv", extra_args=B_FRAMES
        ),
        "split_vfr": _vfr_clip(root / "vfr.mkv"),
        "split_short": make_clip(root / "short.mkv", seconds=4, container="mkv"),
        "split_fits": make_clip(root / "fits.mkv", seconds=12, container="mkv"),
        # MPEG-TS states no duration: served as a live stream, nothing tells it up front
        "split_untimed": make_clip(root / "untimed.ts", seconds=12, container="mpegts"),
    }
    for name, path in clips.items():
        jellyfin.add_media(name, path)
    return clips


@pytest_asyncio.fixture(scope="module")
async def split_system(
    tmp_path_factory: pytest.TempPathFactory, nats_server: NatsServer, jellyfin: JellyfinStandIn
) -> AsyncIterator[Deployment]:
    """Every service, two transcoders of one slot each, splitting tuned down."""
    root = tmp_path_factory.mktemp("split-system")
    env = fast_env(
        new_namespace(),
        root / "data",
        nats_server.url,
        jellyfin.url,
        VIDMESH_PORT=free_port(),
        **SPLIT_ENV,
    )
    deployment = Deployment(env=env, root=root)
    try:
        await deployment.start(*SERVICES)
        yield deployment
    finally:
        await deployment.close()
        print(deployment.report(lines=200))  # shown by pytest only when a test failed


@pytest_asyncio.fixture(scope="module")
async def ann(split_system: Deployment) -> AsyncIterator[Api]:
    """A native API user with a preset for each output container."""
    async with aiohttp.ClientSession() as http:
        user = await Api(http, split_system.url).as_user("ann")
        for container in ("mp4", "mkv"):
            spec = {"container": container, **ENCODE}
            await user.ok(
                "POST", "/api/presets", 201, json={"name": f"x-{container}", "spec": spec}
            )
        yield user


async def sessions_of(api: Api, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await api.ok("GET", f"/api/jobs/{job_id}/sessions")
    return [detail["session"] for detail in found]


class ProgressRecorder:
    """Polls a job's progress while it runs, and remembers every value it read."""

    def __init__(self, api: Api, job_id: str) -> None:
        self.api, self.job_id = api, job_id
        self.seen: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                job = await self.api.ok("GET", f"/api/jobs/{self.job_id}")
                self.seen.append(float(job["progress"]))
            await asyncio.sleep(0.1)

    def __enter__(self) -> ProgressRecorder:
        self._task = asyncio.create_task(self._poll())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def output_of(d: Deployment, rendition: str) -> Path:
    (found,) = [f for f in d.output_files() if rendition in f.as_posix()]
    return found


def parts_left(d: Deployment) -> list[Path]:
    root = d.data_dir / "blobs" / "parts"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.mark.parametrize(
    ("clip", "container"),
    [("split_bframes", "mp4"), ("split_vfr", "mkv")],
    ids=["bframes-mp4", "vfr-mkv"],
)
async def test_a_long_job_is_encoded_in_segments_on_both_transcoders_frame_exactly(
    split_system: Deployment,
    ann: Api,
    jellyfin: JellyfinStandIn,
    sources: dict[str, Path],
    clip: str,
    container: str,
) -> None:
    """Given a source longer than the segment minimum whose video must be re-encoded, when a job
    asks for it, then the job completes with one output that has exactly the source's frames at
    the source's times and plays through; its planner split it, both transcoders encoded parts,
    one join made the output, and the job's progress never went back and ended at 100."""
    d = split_system
    source = jellyfin.stream_url(clip, ALICE)
    job = await ann.ok(
        "POST", "/api/jobs", 201, json={"source": source, "preset": f"x-{container}"}
    )
    with ProgressRecorder(ann, job["id"]) as progress:
        done = await ann.wait_job(job["id"], "completed", "failed", timeout=90)
    assert done["status"] == "completed", (done, d.report())

    sessions = await sessions_of(ann, job["id"])
    (planner,) = [s for s in sessions if not s["part"]]
    videos = [s for s in sessions if s["part"].startswith("v")]
    assert planner["state"] == "succeeded" and planner["split"] == len(videos) >= 2
    assert sorted(s["part"] for s in sessions if s["part"]) == sorted(
        ["audio", "join", *(f"v{i:04d}" for i in range(len(videos)))]
    )
    assert all(s["state"] == "succeeded" and s["attempt"] == 1 for s in sessions)
    assert len({s["worker"] for s in sessions if s["part"] not in ("", "join")}) == 2

    output = output_of(d, planner["rendition"])
    before, after = _frame_times(sources[clip]), _frame_times(output)
    assert len(after) == len(before)
    assert after == pytest.approx(before, abs=0.002)
    assert probe(str(output)).container == (
        "mov,mp4,m4a,3gp,3g2,mj2" if container == "mp4" else "matroska,webm"
    )

    assert progress.seen and progress.seen == sorted(progress.seen), progress.seen
    assert done["progress"] == 100
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")


async def test_a_source_that_cannot_seek_is_stored_first_and_its_parts_read_the_copy(
    split_system: Deployment, ann: Api, jellyfin: JellyfinStandIn, sources: dict[str, Path]
) -> None:
    """Given a long source served without Range requests whose container states its duration,
    when a job asks for it, then the planner copies it once into the service's store and splits
    it; every part reads that copy, never the source; the job completes with exactly the
    source's frames at the source's times, and the copy is deleted with the parts."""
    d = split_system
    clip = "split_bframes"
    source = jellyfin.stream_url(clip, ALICE, kind="live")
    reads_before = jellyfin.hits[f"live:{clip}"]
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source, "preset": "x-mp4"})
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=90)
    assert done["status"] == "completed", (done, d.report())

    sessions = await sessions_of(ann, job["id"])
    (planner,) = [s for s in sessions if not s["part"]]
    assert planner["split"] >= 2 and "matroska" in planner["argv"]  # the copy's ffmpeg
    copy = source_copy_key(planner["rendition"], 1)
    readers = [s for s in sessions if s["part"] not in ("", "join")]
    assert len(readers) == planner["split"] + 1  # the video segments and the audio
    for reader in readers:
        argv = reader["argv"]
        assert argv[argv.index("-i") + 1].endswith(copy), (reader["part"], argv)
    # the probe, the Range check and the copy; none of the parts
    assert jellyfin.hits[f"live:{clip}"] - reads_before <= 3

    output = output_of(d, planner["rendition"])
    before, after = _frame_times(sources[clip]), _frame_times(output)
    assert len(after) == len(before)
    assert after == pytest.approx(before, abs=0.002)
    await eventually(lambda: not parts_left(d), timeout=15, what="the copy and parts deleted")


@pytest.mark.parametrize(
    ("clip", "kind", "preset", "reason"),
    [
        ("split_short", "stream", "x-mp4", "the source is shorter than the segment minimum"),
        ("split_fits", "stream", "optimized", "the video is not re-encoded"),
        # a live stream: it cannot be planned into segments that cover it
        ("split_untimed", "live", "x-mp4", "the source's duration is unknown"),
    ],
    ids=["short", "remux-only", "unknown-duration"],
)
async def test_a_short_job_a_remux_only_job_and_a_source_of_unknown_duration_run_whole(
    split_system: Deployment,
    ann: Api,
    jellyfin: JellyfinStandIn,
    sources: dict[str, Path],
    clip: str,
    kind: str,
    preset: str,
    reason: str,
) -> None:
    """Given a source shorter than the segment minimum, one whose streams are only copied, or a
    live stream whose duration nothing states, when a job asks for it, then it completes in one
    transcode: no part, no split."""
    source = jellyfin.stream_url(clip, ALICE, kind=kind)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source, "preset": preset})
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=30)
    assert done["status"] == "completed", done
    (session,) = await sessions_of(ann, job["id"])
    assert session["part"] == "" and session["split"] == 0 and session["state"] == "succeeded"
    logs = "".join(p.log() for p in split_system.processes if p.name == "transcoder")
    assert f'"reason": "{reason}"' in logs or f'"reason":"{reason}"' in logs


def slow_seeks(jellyfin: JellyfinStandIn, clip: Path, name: str, segment_seconds: float) -> str:
    """The clip's URL with seeks served so that a 5 s segment takes about `segment_seconds`."""
    duration = probe(str(clip)).duration
    assert duration
    rate = int(clip.stat().st_size / duration * 5 / segment_seconds)
    return jellyfin.stream_url(name, ALICE, seek_rate=str(rate))


def segment_ffmpeg(d: Deployment, rendition: str, part: str) -> int | None:
    """The pid of the ffmpeg encoding that part (its scratch file names it)."""
    found = ffmpeg_pids(f"{rendition}.1.{part}-")
    return found[0] if found else None


async def running_segments(api: Api, job_id: str) -> list[dict[str, Any]]:
    """The job's running video parts past the first (the first reads from the start: quick)."""
    sessions = await sessions_of(api, job_id)
    return [
        s
        for s in sessions
        if s["state"] == "running" and s["part"].startswith("v") and s["part"] != "v0000"
    ]


async def test_cancel_stops_every_segments_ffmpeg_within_two_seconds(
    split_system: Deployment, ann: Api, jellyfin: JellyfinStandIn, sources: dict[str, Path]
) -> None:
    """Given a split job with two segments encoding, one on each transcoder, when the job is
    cancelled, then no ffmpeg of it is left 2 s later."""
    d = split_system
    source = slow_seeks(jellyfin, sources["split_bframes"], "split_bframes", 8.0)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source, "preset": "x-mp4"})

    async def two_encoding() -> list[int] | None:
        running = await running_segments(ann, job["id"])
        pids = [segment_ffmpeg(d, s["rendition"], s["part"]) for s in running]
        known = [pid for pid in pids if pid is not None]
        return known if len(known) == 2 else None

    pids = await eventually(two_encoding, timeout=30, what="two segments encoding")
    assert len({parent_of(pid) for pid in pids}) == 2  # one on each transcoder

    # When the job is cancelled
    sent = time.monotonic()
    await ann.ok("POST", f"/api/jobs/{job['id']}/cancel")

    # Then every ffmpeg of the deployment is gone within 2 s
    def stopped_after() -> float | None:
        return None if ffmpeg_pids(d.marker) else time.monotonic() - sent

    took = await eventually(stopped_after, timeout=2.0, interval=0.02, what="ffmpeg to stop")
    assert took <= 2.0
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")


async def test_transcoder_killed_mid_segment_only_that_segment_runs_twice(
    split_system: Deployment, ann: Api, jellyfin: JellyfinStandIn, sources: dict[str, Path]
) -> None:
    """Given a split job with a segment encoding on one transcoder, when that transcoder is
    killed (SIGKILL), then the job completes with one output, that segment ran twice (its first
    session never ended, the second succeeded), every other part and the join once, and no part
    file is left once it is done."""
    d = split_system
    source = slow_seeks(jellyfin, sources["split_bframes"], "split_bframes", 2.0)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source, "preset": "x-mp4"})

    async def victim() -> tuple[dict[str, Any], int] | None:
        for s in await running_segments(ann, job["id"]):
            pid = segment_ffmpeg(d, s["rendition"], s["part"])
            if pid is not None:
                return s, pid
        return None

    segment, pid = await eventually(victim, timeout=30, what="a segment encoding")
    parent = parent_of(pid)
    (transcoder,) = [p for p in d.alive("transcoder") if p.process and p.process.pid == parent]

    # When its transcoder is killed
    transcoder.kill()

    # Then the job completes elsewhere
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=90)
    assert done["status"] == "completed", (done, d.report())
    sessions = await sessions_of(ann, job["id"])
    runs = Counter(s["part"] for s in sessions if s["part"])
    assert runs.pop(segment["part"]) == 2
    assert set(runs.values()) == {1} and runs["join"] == 1 and "audio" in runs
    first, second = sorted(
        (s for s in sessions if s["part"] == segment["part"]), key=lambda s: s["attempt"]
    )
    # the dead transcoder's attempt says what became of it, rather than `running` for good
    assert first["state"] == "stopped" and second["state"] == "succeeded", (first, second)
    assert "took it over" in first["error"], first
    assert first["worker"] != second["worker"]
    rendition = segment["rendition"]
    output_of(d, rendition)  # exactly one output of this job
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")
