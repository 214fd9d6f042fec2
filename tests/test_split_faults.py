"""A split job meets faults: a segment that fails for good, a transcoder asked to stop while it
encodes a segment, and a retry of the failed job. On the same real system as
`tests/test_split_jobs.py` (its fixtures: every service its own process, two transcoders,
splitting tuned down so a 30 s clip is cut into segments of about 5 s).

A source "goes away" the way a film deleted from the library does: the Jellyfin stand-in stops
serving it, and answers 404 to every request that comes after.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests import test_split_jobs as split_jobs
from tests.harness import Api, Deployment, eventually, ffmpeg_pids
from tests.harness.deployment import ServiceProcess
from tests.harness.procfs import parent_of
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import make_clip
from tests.test_segments_media import _frame_times
from tests.test_split_jobs import (
    output_of,
    parts_left,
    running_segments,
    segment_ffmpeg,
    sessions_of,
    slow_seeks,
)

pytestmark = pytest.mark.slow

# the system and its user, one of each for this module
split_system = split_jobs.split_system
ann = split_jobs.ann


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 s with sound: six segments of 5 s."""
    root = tmp_path_factory.mktemp("split-fault-clips")
    return make_clip(root / "film.mkv", seconds=30, fps=24, container="mkv")


@pytest_asyncio.fixture
async def two_transcoders(split_system: Deployment) -> Deployment:
    """The system with two transcoders running (one may have been stopped by a test)."""
    d = split_system
    for _ in range(2 - len(d.alive("transcoder"))):
        await d.start("transcoder")
    return d


async def encoding_segment(d: Deployment, api: Api, job_id: str) -> tuple[dict[str, Any], int]:
    """A video part past the first that is encoding (so the planner has indexed the source),
    and its ffmpeg."""

    async def found() -> tuple[dict[str, Any], int] | None:
        for s in await running_segments(api, job_id):
            pid = segment_ffmpeg(d, s["rendition"], s["part"])
            if pid is not None:
                return s, pid
        return None

    return await eventually(found, timeout=30, what="a segment encoding")


async def fail_a_segment(
    d: Deployment, api: Api, jellyfin: JellyfinStandIn, clip: Path, name: str
) -> dict[str, Any]:
    """Run a split job whose source is deleted once its segments are encoding; the job as it
    reads once it ended (the stand-in no longer serves `name`)."""
    jellyfin.add_media(name, clip)
    source = slow_seeks(jellyfin, clip, name, 2.0)
    job = await api.ok("POST", "/api/jobs", 201, json={"source": source, "preset": "x-mkv"})
    await encoding_segment(d, api, job["id"])
    del jellyfin.media[name]  # from here on: 404 Not Found
    done: dict[str, Any] = await api.wait_job(job["id"], "completed", "failed", timeout=30)
    return done


async def test_a_segment_failing_for_good_fails_the_job_with_its_reason(
    two_transcoders: Deployment, ann: Api, jellyfin: JellyfinStandIn, clip: Path
) -> None:
    """Given a split job with segments encoding, when its source is deleted (the server answers
    404), then the next segment to read it fails for good, once, and the job fails with that
    segment's reason; every other part still encoding is stopped (no ffmpeg of the job runs 2 s
    later, its session reads cancelled), and no part file is left."""
    d = two_transcoders
    done = await fail_a_segment(d, ann, jellyfin, clip, "split_deleted")
    failed_at = time.monotonic()

    assert done["status"] == "failed", (done, d.report())
    assert done["error"]["code"] == "source_not_found", done["error"]
    assert "404" in done["error"]["reason"], done["error"]
    sessions = await sessions_of(ann, done["id"])
    failing = [s for s in sessions if s["state"] == "failed"]
    assert failing and all(s["part"] not in ("", "join") for s in failing), sessions
    assert done["error"]["reason"] in {s["error"] for s in failing}
    # a failure that says retrying cannot help: no part ran twice
    runs = Counter(s["part"] for s in sessions if s["part"])
    assert set(runs.values()) == {1}, runs
    assert "join" not in runs

    # ... and every other part's ffmpeg stops
    def stopped_after() -> float | None:
        return None if ffmpeg_pids(d.marker) else time.monotonic() - failed_at

    await eventually(stopped_after, timeout=2.0, interval=0.02, what="every ffmpeg to stop")

    async def none_running() -> bool:
        return all(s["state"] != "running" for s in await sessions_of(ann, done["id"]))

    await eventually(none_running, timeout=5, what="every session of the job to end")
    # ... one of them stopped mid-encode (the audio reads the whole source: it was still running)
    ended = await sessions_of(ann, done["id"])
    assert any(s["state"] == "cancelled" for s in ended), ended
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")


async def test_a_failed_split_job_retried_completes(
    two_transcoders: Deployment, ann: Api, jellyfin: JellyfinStandIn, clip: Path
) -> None:
    """Given a split job that failed because a segment could not read its source, when the
    source is back and the job is retried, then it is planned and split again and completes
    with one output that has exactly the source's frames at the source's times."""
    d = two_transcoders
    name = "split_back"
    failed = await fail_a_segment(d, ann, jellyfin, clip, name)
    assert failed["status"] == "failed", (failed, d.report())

    # When the source is back and the job is retried
    jellyfin.add_media(name, clip)
    await ann.ok("POST", f"/api/jobs/{failed['id']}/retry")

    # Then it completes, from a second split
    done = await ann.wait_job(failed["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", (done, d.report())
    assert done["error"] is None
    sessions = await sessions_of(ann, done["id"])
    planners = sorted((s for s in sessions if not s["part"]), key=lambda s: s["generation"])
    assert [(p["generation"], p["state"]) for p in planners] == [
        (1, "succeeded"),
        (2, "succeeded"),
    ]
    assert planners[1]["split"] >= 2
    retried = [s for s in sessions if s["generation"] == 2 and s["part"]]
    assert all(s["state"] == "succeeded" for s in retried), retried
    assert sum(s["part"] == "join" for s in retried) == 1

    output = output_of(d, planners[1]["rendition"])
    before, after = _frame_times(clip), _frame_times(output)
    assert len(after) == len(before)
    assert after == pytest.approx(before, abs=0.002)
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")


async def test_sigterm_hands_back_a_segment_that_another_transcoder_finishes(
    two_transcoders: Deployment, ann: Api, jellyfin: JellyfinStandIn, clip: Path
) -> None:
    """Given a split job with a segment encoding on one transcoder, when that transcoder gets
    SIGTERM (no drain), then it stops that segment's ffmpeg, records its session stopped, hands
    the segment back and exits cleanly; the other transcoder encodes the segment again and the
    job completes with one output, no part file left behind."""
    d = two_transcoders
    jellyfin.add_media("split_sigterm", clip)
    source = slow_seeks(jellyfin, clip, "split_sigterm", 2.0)
    job = await ann.ok("POST", "/api/jobs", 201, json={"source": source, "preset": "x-mp4"})
    segment, pid = await encoding_segment(d, ann, job["id"])
    (leaving,) = [p for p in d.alive("transcoder") if pid_of(p) == parent_of(pid)]

    # When that transcoder gets SIGTERM
    assert leaving.process is not None
    leaving.process.send_signal(signal.SIGTERM)
    exit_time = asyncio.create_task(leaving.exited_at(timeout=10))

    # Then it stops the segment's ffmpeg and hands the segment back
    await eventually(lambda: pid not in ffmpeg_pids(d.marker), timeout=2, what="its ffmpeg to stop")
    await eventually(
        lambda: '"part.handed_back"' in leaving.log(), timeout=5, what="the segment handed back"
    )
    await exit_time
    assert leaving.process.returncode == 0, leaving.log()

    # ... and the other transcoder finishes it: the job completes
    done = await ann.wait_job(job["id"], "completed", "failed", timeout=60)
    assert done["status"] == "completed", (done, d.report())
    sessions = await sessions_of(ann, job["id"])
    stopped = [s for s in sessions if s["state"] == "stopped"]
    assert segment["part"] in {s["part"] for s in stopped}, sessions
    assert all(s["worker"] == segment["worker"] for s in stopped), stopped
    assert all(s["error"] == "the transcoder stopped" for s in stopped), stopped
    # each part it handed back ran once more, elsewhere; every other part and the join once
    runs: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(sessions, key=lambda s: s["attempt"]):
        runs.setdefault(s["part"], []).append(s)
    for part, attempts in runs.items():
        states = [s["state"] for s in attempts]
        assert states in (["succeeded"], ["stopped", "succeeded"]), (part, attempts)
        assert attempts[-1]["worker"] != segment["worker"] or len(attempts) == 1
    assert len(runs["join"]) == 1
    output_of(d, segment["rendition"])  # exactly one output of this job
    await eventually(lambda: not parts_left(d), timeout=15, what="the parts' files deleted")


def pid_of(process: ServiceProcess) -> int | None:
    return process.process.pid if process.process else None
