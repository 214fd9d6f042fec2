"""GPU health for heartbeats: a node without a driver reads as a normal CPU-only state, `assess`
tells broken GPUs (critical XIDs, uncorrected ECC, lost) from degraded ones (hardware slowdown),
and reports travel as JSON unchanged. The `gpu` test reads a real GPU where there is one."""

from __future__ import annotations

import asyncio
import ctypes
import time

import msgspec
import pynvml
import pytest

from shared.gpu import (
    GPU_LOST,
    GpuHealth,
    GpuMonitor,
    GpuReport,
    XidEvent,
    assess,
    clock_event_names,
)

NOW = 1_700_000_000.0
UUID = "GPU-6f1c2b7e-0000-0000-0000-000000000000"


def _nvml_library_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


cpu_only = pytest.mark.skipif(
    _nvml_library_present(), reason="an NVIDIA driver is installed: this node is not CPU-only"
)


def a_gpu(**fields: object) -> GpuHealth:
    base = GpuHealth(
        index=0,
        uuid=UUID,
        name="NVIDIA L4",
        utilization_pct=40,
        memory_total_bytes=24 << 30,
        memory_used_bytes=2 << 30,
        temperature_c=55,
        ecc_uncorrected_volatile=0,
    )
    return msgspec.structs.replace(base, **fields)


def an_xid(xid: int, *, seconds_ago: float, critical: bool = True) -> XidEvent:
    return XidEvent(xid=xid, gpu_uuid=UUID, at=NOW - seconds_ago, critical=critical)


@cpu_only
async def test_a_node_without_driver_reads_as_cpu_only_and_keeps_answering() -> None:
    # Given a node with no NVIDIA driver
    monitor = GpuMonitor()
    try:
        # When it is read twice
        first = await monitor.read()
        started = time.perf_counter()
        second = await monitor.read()
        elapsed = time.perf_counter() - started
    finally:
        monitor.close()

    # Then both reads say "no GPU" with the reason, as a normal state, and the second is quick
    for report in (first, second):
        assert report.available is False
        assert "driver" in report.reason and "library" in report.reason.lower()
        assert report.gpus == []
        assert report.healthy is False and report.problems() == []
        assert report.read_at > 0
    assert second.reason == first.reason
    assert elapsed < 0.5


@cpu_only
async def test_reading_leaves_the_event_loop_free() -> None:
    # Given a read in progress and another task that counts its own turns on the loop
    monitor = GpuMonitor()
    read = asyncio.create_task(monitor.read())
    turns = 0

    async def tick() -> None:
        nonlocal turns
        while not read.done():
            turns += 1
            await asyncio.sleep(0)

    # When both run
    try:
        await asyncio.gather(read, tick())
    finally:
        monitor.close()

    # Then the other task got turns while the read ran (a blocking read finishes in its first step)
    assert turns > 0
    assert read.result().available is False


def test_a_critical_xid_within_the_hour_makes_the_gpu_unhealthy() -> None:
    gpu = assess(a_gpu(xid_events=[an_xid(79, seconds_ago=600)]), now=NOW)

    assert gpu.healthy is False
    assert gpu.problems == ["critical XID 79 (GPU has fallen off the bus)"]


def test_repeated_critical_xids_are_one_sentence_with_a_count() -> None:
    events = [an_xid(48, seconds_ago=s) for s in (10, 20, 30)]
    gpu = assess(a_gpu(xid_events=events), now=NOW)

    assert gpu.healthy is False
    assert gpu.problems == ["critical XID 48 (double-bit ECC error), 3 times in the last hour"]


def test_a_critical_xid_older_than_an_hour_no_longer_counts() -> None:
    gpu = assess(a_gpu(xid_events=[an_xid(79, seconds_ago=3601)]), now=NOW)

    assert gpu.healthy is True
    assert gpu.problems == []


def test_a_non_critical_xid_is_kept_but_does_not_make_the_gpu_unhealthy() -> None:
    gpu = assess(a_gpu(xid_events=[an_xid(13, seconds_ago=5, critical=False)]), now=NOW)

    assert gpu.healthy is True and gpu.problems == []
    assert [e.xid for e in gpu.xid_events] == [13]


def test_uncorrected_ecc_errors_make_the_gpu_unhealthy() -> None:
    gpu = assess(a_gpu(ecc_uncorrected_volatile=2), now=NOW)

    assert gpu.healthy is False
    assert gpu.problems == ["2 uncorrected ECC errors since the driver loaded"]


def test_hardware_thermal_slowdown_is_degraded_but_healthy() -> None:
    gpu = assess(a_gpu(clock_event_reasons=["sw_power_cap", "hw_thermal_slowdown"]), now=NOW)

    assert gpu.healthy is True
    assert len(gpu.problems) == 1 and "too hot" in gpu.problems[0]
    assert "hw_thermal_slowdown" in gpu.problems[0]


def test_a_plain_gpu_is_healthy_with_no_problems() -> None:
    gpu = assess(a_gpu(clock_event_reasons=["gpu_idle"]), now=NOW)

    assert gpu.healthy is True and gpu.problems == []


def test_a_lost_gpu_stays_unhealthy_when_assessed_again() -> None:
    lost = GpuHealth(index=1, uuid=UUID, name="", healthy=False, problems=[GPU_LOST])

    once = assess(lost, now=NOW)
    twice = assess(once, now=NOW)

    assert twice.healthy is False and twice.problems == [GPU_LOST]


def test_assess_replaces_stale_problems_instead_of_adding_to_them() -> None:
    stale = a_gpu(healthy=False, problems=["2 uncorrected ECC errors since the driver loaded"])

    assert assess(stale, now=NOW).problems == []


def test_clock_event_bits_read_as_names() -> None:
    mask = pynvml.nvmlClocksEventReasonSwPowerCap | pynvml.nvmlClocksEventReasonHwThermalSlowdown

    assert clock_event_names(mask) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert clock_event_names(0) == []
    assert clock_event_names(1 << 40) == [f"unknown_{1 << 40:#x}"]


def test_report_problems_name_the_gpu() -> None:
    sick = assess(a_gpu(index=1, ecc_uncorrected_volatile=1), now=NOW)
    report = GpuReport(available=True, gpus=[assess(a_gpu(), now=NOW), sick], read_at=NOW)

    assert report.healthy is False
    assert report.problems() == [
        "GPU 1 (NVIDIA L4): 1 uncorrected ECC errors since the driver loaded"
    ]


def test_reports_round_trip_through_json() -> None:
    gpu = assess(
        a_gpu(
            power_w=71.5,
            power_limit_w=72.0,
            clock_event_reasons=["hw_slowdown"],
            encoder_sessions=3,
            encoder_average_fps=240,
            xid_events=[an_xid(94, seconds_ago=1)],
        ),
        now=NOW,
    )
    report = GpuReport(
        available=True,
        driver_version="580.65.06",
        nvml_version="13.580.65.06",
        cuda_driver_version=13000,
        gpus=[gpu],
        read_at=NOW,
    )

    decoded = msgspec.json.decode(msgspec.json.encode(report), type=GpuReport)

    assert decoded == report
    assert decoded.gpus[0].xid_events[0].critical is True
    assert msgspec.json.decode(msgspec.json.encode(gpu), type=GpuHealth) == gpu


@pytest.mark.gpu
async def test_a_real_gpu_is_read_and_encodes() -> None:
    monitor = GpuMonitor()
    try:
        report = await monitor.read()
    finally:
        monitor.close()

    assert report.available, report.reason
    assert report.driver_version
    assert len(report.gpus) >= 1
    for gpu in report.gpus:
        assert gpu.name and gpu.uuid
        assert gpu.memory_total_bytes is not None and gpu.memory_total_bytes > 0
    assert msgspec.json.decode(msgspec.json.encode(report), type=GpuReport) == report
