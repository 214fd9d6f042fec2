"""Telemetry as operators use it: settings that apply at once, samples kept in the telemetry
stream and read back downsampled, a live buffer for charts, every pool now, and a job's estimate
from a probe and the pool's recent speed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from services.gateway.faces.native.telemetry import choose_level
from services.statistics.digests import JobDigest, RenditionDigest
from services.statistics.rollups import Rollup
from services.statistics.snapshot import FleetState, readings
from shared.gpu import GpuHealth, GpuReport
from shared.messages.fleet import WorkerInfo
from shared.messages.records import Progress, Totals
from shared.messages.telemetry import Reading, TelemetrySample
from shared.nats.client import connect
from shared.nats.subjects import Names
from tests.harness import ALICE, Api, System, eventually
from tests.jellyfin_standin import JellyfinStandIn

SETTINGS = "/api/admin/settings/telemetry"


@pytest_asyncio.fixture(autouse=True)
async def drop_telemetry_stream(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Once a test's system has stopped, its telemetry stream goes too (the server stays small)."""
    if "system" not in request.fixturenames:
        yield
        return
    env: dict[str, str] = request.getfixturevalue("env")
    yield
    nc = await connect(env["VIDMESH_NATS_URL"], "vidmesh-test-cleanup")
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(Names(env["VIDMESH_NAMESPACE"]).telemetry_stream)
    await nc.close()


async def _samples(admin_api: Api, at_least: int) -> dict[str, Any]:
    """The live buffer once it holds `at_least` samples."""

    async def enough() -> dict[str, Any] | None:
        live = await admin_api.ok("GET", "/api/admin/telemetry/live-buffer")
        queued = [s for s in live["metrics"]["jobs"] if s["labels"] == {"status": "queued"}]
        return live if queued and len(queued[0]["points"]) >= at_least else None

    return await eventually(enough, timeout=15, what=f"{at_least} telemetry samples")


def _source_video_rate(probe: dict[str, Any]) -> int:
    video = next(s for s in probe["streams"] if s["kind"] == "video")
    if video["bit_rate"]:
        return int(video["bit_rate"])
    others = sum(s["bit_rate"] or 0 for s in probe["streams"] if s is not video)
    return int(probe["bit_rate"]) - others


async def test_settings_round_trip_and_out_of_range_values_are_refused(
    system: System, admin_api: Api
) -> None:
    # Given no telemetry settings stored yet, the defaults apply
    defaults = await admin_api.ok("GET", SETTINGS)
    assert (defaults["enabled"], defaults["interval_seconds"], defaults["retention_hours"]) == (
        True,
        10,
        24,
    )
    # When an operator changes some of them, the rest keep their value
    changed = await admin_api.ok("PUT", SETTINGS, json={"retention_hours": 2, "enabled": False})
    assert (changed["enabled"], changed["interval_seconds"], changed["retention_hours"]) == (
        False,
        10,
        2,
    )
    assert await admin_api.ok("GET", SETTINGS) == changed
    # Then the statistics service gives the telemetry stream the new retention
    js = system.nc.jetstream()

    async def max_age() -> bool:
        info = await js.stream_info(system.names.telemetry_stream)
        return info.config.max_age == 2 * 3600

    await eventually(max_age, timeout=10, what="the telemetry stream's max_age of 2 hours")
    # And values out of range, or fields it does not know, are refused with 400
    for body in (
        {"interval_seconds": 0},
        {"interval_seconds": 3601},
        {"retention_hours": 0},
        {"retention_hours": 721},
        {"enabled": "yes"},
        {"colour": "blue"},
    ):
        status, error, _ = await admin_api.call("PUT", SETTINGS, json=body)
        assert status == 400, (body, status, error)
    assert await admin_api.ok("GET", SETTINGS) == changed


async def test_samples_appear_within_seconds_of_a_short_interval_and_query_downsamples_them(
    system: System, admin_api: Api
) -> None:
    # Given telemetry sampled every second (the change applies without a restart)
    await admin_api.ok("PUT", SETTINGS, json={"interval_seconds": 1})
    started = time.time()
    live = await _samples(admin_api, at_least=6)
    # Then the live buffer holds every metric the API defines
    metrics = await admin_api.ok("GET", "/api/admin/telemetry/metrics")
    assert {m["name"] for m in metrics} == set(live["metrics"])
    assert all(m["description"] and m["unit"] for m in metrics)
    assert {"status"} == set(next(m for m in metrics if m["name"] == "jobs")["labels"])
    assert live["interval_seconds"] == 1 and live["enabled"] is True
    transcoders = live["metrics"]["pool_transcoders"]
    assert [s["labels"] for s in transcoders] == [{"pool": "default"}]
    # (the first sample may predate the transcoder: the statistics service starts before it)
    assert transcoders[0]["points"][-1][1] == 1.0

    # When a window is queried at a coarser resolution (ISO start, epoch end)
    start = datetime.fromtimestamp(started - 30, UTC).isoformat()
    result = await admin_api.ok(
        "GET",
        "/api/admin/telemetry/query",
        params={
            "metric": "pool_slots",
            "labels": "pool=default",
            "start": start,
            "end": str(time.time()),
            "resolution": "3",
        },
    )
    # Then the samples come back averaged per 3-second bucket, each point at its bucket's start
    assert result["level"] == "raw" and result["resolution"] == 3
    assert result["samples_read"] >= 6 and not result["truncated"]
    [series] = result["series"]
    assert series["labels"] == {"pool": "default"}
    points = series["points"]
    assert 2 <= len(points) < result["samples_read"]
    assert all(t % 3 == 0 and result["start"] - 3 < t < result["end"] for t, _ in points)
    assert points[-1][1] >= 1 and all(0 <= value <= points[-1][1] for _, value in points)

    # And an unknown metric, an unknown label, or a bad window are refused with 400
    for params in (
        {"metric": "no_such_metric"},
        {"metric": "jobs", "labels": "pool=default"},
        {"metric": "jobs", "start": "yesterday"},
        {"metric": "jobs", "start": str(time.time()), "end": str(time.time() - 60)},
    ):
        status, error, _ = await admin_api.call("GET", "/api/admin/telemetry/query", params=params)
        assert status == 400, (params, status, error)


async def test_estimates_use_the_probe_and_then_the_pools_measured_speed(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn, clips: dict[str, Path]
) -> None:
    hevc = jellyfin.stream_url("hevc", ALICE)
    fits = jellyfin.stream_url("fits", ALICE)
    probe = await admin_api.ok("POST", "/api/metadata", json={"source": hevc})
    # Given a pool that has finished nothing yet, an HEVC source is estimated at real time
    first = await admin_api.ok(
        "POST", "/api/admin/jobs/estimate", json={"source": hevc, "preset": "optimized"}
    )
    assert first["mode"] == "transcode" and first["video"] == "encode"
    assert first["duration_seconds"] == probe["duration"]
    assert first["speed"] == {"scope": "none", "speed": 1.0, "sessions": 0}
    assert first["expected_wall_seconds"] == round(probe["duration"], 2)
    assert any("no history: assumes real time" in words for words in first["basis"])
    # its output is the video at min(source rate, the preset's 8 Mb/s cap) plus 160 kb/s of audio
    video = min(_source_video_rate(probe), 8_000_000)
    assert first["expected_output_bytes"] == round((video + 160_000) * probe["duration"] / 8)
    # and a source that already fits is copied: about the source's own size
    copy = await admin_api.ok("POST", "/api/admin/jobs/estimate", json={"source": fits})
    assert copy["mode"] == "copy"
    assert copy["expected_output_bytes"] == clips["fits"].stat().st_size

    # When the pool has transcoded that source once
    job = await admin_api.ok("POST", "/api/jobs", 201, json={"source": hevc})
    await admin_api.wait_job(job["id"], "completed", timeout=60)

    async def measured() -> dict[str, Any] | None:
        answer = await admin_api.ok(
            "POST", "/api/admin/jobs/estimate", json={"source": hevc, "preset": "optimized"}
        )
        return answer if answer["speed"]["scope"] != "none" else None

    # Then the estimate divides the duration by the pool's measured median speed, and says so
    second = await eventually(measured, timeout=15, what="an estimate from the pool's history")
    speed = second["speed"]
    assert speed["scope"] == "pool" and speed["sessions"] == 1 and speed["speed"] > 0
    assert second["expected_wall_seconds"] == round(probe["duration"] / speed["speed"], 2)
    assert any("median speed" in words for words in second["basis"])

    # And the pool's metrics show the finished transcode and the same median speed
    async def idle_pool() -> dict[str, Any] | None:
        pools = await admin_api.ok("GET", "/api/admin/telemetry/pool-metrics")
        default: dict[str, Any] = next(p for p in pools["pools"] if p["pool"] == "default")
        return default if default["busy"] == 0 and default["running"] == 0 else None

    default = await eventually(idle_pool, timeout=15, what="the default pool to be idle")
    assert default["transcoders"] >= 1 and default["slots"] >= 1
    assert default["completed_last_hour"] == 1 and default["median_speed_sessions"] == 1
    assert default["median_speed"] == speed["speed"]
    assert default["queue_depth"] == 0


async def test_estimating_a_source_that_is_not_media_answers_422_like_metadata(
    system: System, admin_api: Api, jellyfin: JellyfinStandIn
) -> None:
    source = jellyfin.stream_url("not_video", ALICE)
    status, metadata, _ = await admin_api.call("POST", "/api/metadata", json={"source": source})
    assert status == 422, metadata
    status, error, _ = await admin_api.call(
        "POST", "/api/admin/jobs/estimate", json={"source": source}
    )
    assert status == 422, error
    assert error["error"]["code"] == metadata["error"]["code"]
    # an unknown preset is a 404, as when a job names one
    status, error, _ = await admin_api.call(
        "POST", "/api/admin/jobs/estimate", json={"source": source, "preset": "nope"}
    )
    assert status == 404, error


def test_minute_averages_are_published_when_the_next_minute_begins() -> None:
    rollup = Rollup("1m", 60.0)

    def sample(at: float, value: float) -> TelemetrySample:
        return TelemetrySample(at=at, period=10, readings=[Reading("jobs", {"status": "x"}, value)])

    assert rollup.add(sample(600, 1)) is None
    assert rollup.add(sample(630, 3)) is None
    closed = rollup.add(sample(660, 8))
    assert closed == TelemetrySample(
        at=600, period=60, readings=[Reading("jobs", {"status": "x"}, 2.0)]
    )
    assert rollup.add(sample(640, 100)) is None  # a clock stepping back changes nothing closed


def test_long_windows_are_read_from_coarser_averages_within_the_read_cap() -> None:
    day, month = 86_400.0, 30 * 86_400.0
    assert choose_level(3600, 10, 10) == ("raw", 10)
    assert choose_level(3600, 60, 60) == ("raw", 60)  # raw wins a tie: it is never late
    assert choose_level(day, 300, 10) == ("1m", 60)
    assert choose_level(day, 5, 1) == ("1m", 60)  # 86,400 raw samples would be too many
    assert choose_level(month, 3600, 10) == ("1h", 3600)


def test_a_sample_averages_gpus_and_running_transcodes_per_pool_where_they_report() -> None:
    def gpu(index: int, utilization: int, used: int) -> GpuHealth:
        return GpuHealth(
            index=index,
            uuid=f"GPU-{index}",
            name="H100",
            utilization_pct=utilization,
            memory_total_bytes=4,
            memory_used_bytes=used,
        )

    report = GpuReport(available=True, gpus=[gpu(0, 40, 1), gpu(1, 80, 3)])
    workers = [
        WorkerInfo(
            id="g1", host="h", pool="gpu", slots=2, busy=1, started_at=0, updated_at=0, gpu=report
        ),
        WorkerInfo(id="c1", host="h", pool="default", slots=1, busy=0, started_at=0, updated_at=0),
    ]
    renditions = {
        "live": RenditionDigest(generation=2, pool="gpu", state="running"),
        "done": RenditionDigest(generation=1, pool="default", state="done"),
    }
    progress = [
        Progress(
            key="live", generation=2, attempt=1, stage="encoding", fps=50, speed=2.0, updated_at=0
        ),
        # a finished transcode's progress record lingers until its TTL: not a running one
        Progress(
            key="done", generation=1, attempt=1, stage="encoding", fps=9, speed=9.0, updated_at=0
        ),
    ]
    jobs = [
        JobDigest(status="running", pool="gpu", rendition="live"),
        JobDigest(status="queued"),
        JobDigest(status="completed"),
    ]
    state = FleetState(
        now=0,
        pools=["gpu"],
        jobs=jobs,
        renditions=renditions,
        sessions=[],
        workers=workers,
        progress=progress,
        totals=Totals(jobs_completed=7, jobs_failed=2),
    )
    found = {(r.metric, tuple(r.labels.values())): r.value for r in readings(state)}
    assert found[("jobs", ("queued",))] == 1 and found[("jobs", ("running",))] == 1
    assert found[("jobs_completed_total", ())] == 7 and found[("jobs_failed_total", ())] == 2
    assert found[("pool_queue_depth", ("default",))] == 1
    assert found[("pool_running", ("gpu",))] == 1
    assert found[("pool_slots", ("gpu",))] == 2 and found[("pool_slots_busy", ("gpu",))] == 1
    assert found[("transcode_fps", ("gpu",))] == 50 and found[("transcode_speed", ("gpu",))] == 2
    assert found[("gpu_utilization", ("gpu",))] == 60
    assert found[("gpu_memory_used", ("gpu",))] == 50
    # a pool with no GPU and nothing running has no such series (no made-up zeros)
    assert not {m for m, labels in found if labels == ("default",)} & {
        "gpu_utilization",
        "gpu_memory_used",
        "transcode_fps",
        "transcode_speed",
    }
