"""`vidmesh up` as users run it: one command starts nats-server and every service, restarts what
dies, stops everything on Ctrl-C, and keeps jobs across restarts in its data folder."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.harness import ALICE, Client, eventually
from tests.harness.procfs import age_of, processes_with_env, running
from tests.harness.up import Up
from tests.jellyfin_standin import JellyfinStandIn
from vidmesh.supervisor import BACKGROUND


async def _completed_job(client: Client, jellyfin: JellyfinStandIn) -> str:
    job_id = await client.submit(jellyfin.stream_url("fits", ALICE), device="phone-1")
    job = await client.wait_status(job_id, "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    status, body, resp = await client.request("GET", f"/download/{job_id}")
    assert status == 200, (status, body)
    assert hashlib.sha256(body).hexdigest() == resp.headers["X-File-Checksum"]
    return job_id


async def test_up_runs_supervises_stops_and_keeps_jobs(
    launch: Callable[..., Up],
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # Given `vidmesh up` with a Jellyfin
    first = launch(data, jellyfin.url)
    await first.ready()
    alice = Client(http, first.url, ALICE)

    # (a) A Streamyfin job completes and downloads
    job_id = await _completed_job(alice, jellyfin)

    # (b) A service that dies is reported and restarted
    before = first.children()
    assert set(before) == {
        "gateway",
        "scheduler",
        "transcoder",
        "storage",
        "statistics",
        "notifier",
    }, before
    os.kill(before["statistics"], signal.SIGKILL)

    def restarted() -> int | None:
        pid = first.children().get("statistics")
        return pid if pid is not None and pid != before["statistics"] else None

    again = await eventually(restarted, timeout=15, what="a new statistics process")
    # ... still yielding the CPU to the gateway and the scheduler, as the other background
    # services do (VIDMESH_UP_BACKGROUND_NICE)
    now = {**before, "statistics": again}
    niceness = {name: os.getpriority(os.PRIO_PROCESS, pid) for name, pid in now.items()}
    front = niceness["gateway"]
    assert niceness["scheduler"] == front and niceness["transcoder"] == front, niceness
    assert all(niceness[name] == min(front + 5, 19) for name in BACKGROUND), niceness

    def lines() -> list[str]:
        return first.log().splitlines()

    await eventually(
        lambda: sum('"service.ready"' in line and '"statistics"' in line for line in lines()) == 2,
        timeout=15,
        what="the new statistics process to be ready",
    )
    assert any("up.service_exited" in line and "statistics" in line for line in lines())
    assert any("up.service_restarted" in line and "statistics" in line for line in lines())

    # (c) Ctrl-C, once the services have been running a while as they do for users, stops
    # everything it started, each service by itself, within 30 s, and it exits with 0
    await eventually(
        lambda: all(age_of(pid) >= 6.0 for pid in first.children().values()),
        timeout=10,
        what="every service to have run 6 s",
    )
    started = processes_with_env(first.marker)
    assert any("nats-server" in cmdline for cmdline in started.values()), started
    interrupted = time.monotonic()
    os.kill(first.pid, signal.SIGINT)
    problems: list[str] = []
    try:
        code = await first.exit_code(timeout=30)
    except AssertionError:
        problems.append(
            f"vidmesh up did not exit within 30 s of SIGINT; still running: "
            f"{processes_with_env(first.marker)}\n{first.tail()}"
        )
        first.kill_everything()  # so that the restart below can still be checked
    else:
        left = {pid: cmd for pid, cmd in started.items() if running(pid)}
        if left or code != 0:
            problems.append(f"exit code {code}, still running {left}\n{first.tail()}")
    took = time.monotonic() - interrupted
    # ... each service stopping by itself: none is killed for outliving its grace period
    killed = [line for line in lines() if '"up.kill"' in line]
    if killed:
        problems.append("services killed on the way out:\n" + "\n".join(killed))

    # (d) Started again on the same data folder, it still knows the job and counts it
    second = launch(data, jellyfin.url)
    await second.ready()
    alice = Client(http, second.url, ALICE)
    status, jobs, _ = await alice.request("GET", "/all-jobs")
    assert status == 200, jobs
    assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "completed")], jobs
    status, stats, _ = await alice.request("GET", "/statistics")
    assert status == 200, stats
    assert stats["completedJobs"] >= 1, stats
    assert stats["totalTranscodes"] >= 1, stats
    assert not problems, f"after SIGINT ({took:.1f}s): " + "\n".join(problems)


async def test_up_without_jellyfin_says_so_and_refuses_clearly(
    launch: Callable[..., Up], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Given `vidmesh up` with no JELLYFIN_URL
    up = launch(tmp_path / "data", None)
    await up.ready()

    # It prints every service's metrics port, and each serves /metrics and /readyz there
    match = re.search(r"Metrics\s+(.*)\(/metrics", up.log())
    assert match, up.tail()
    ports = dict(re.findall(r"(\w+) :(\d+)", match.group(1)))
    assert set(ports) == {"gateway", "scheduler", "transcoder", "storage", "statistics", "notifier"}
    for name, port in ports.items():
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and "vidmesh_" in await response.text(), name

    # Then it says clearly that Jellyfin is not configured
    jellyfin_lines = [line for line in up.log().splitlines() if "Jellyfin" in line]
    assert any(
        "not configured" in line.lower() and "JELLYFIN_URL" in line for line in jellyfin_lines
    ), up.tail()

    # ... and the Streamyfin API answers with a JSON error, not a crash
    alice = Client(http, up.url, ALICE)
    status, body, resp = await alice.request("GET", "/all-jobs")
    assert status not in (200, 500), (status, body)
    assert resp.content_type == "application/json", body
    error: dict[str, Any] = body["error"]
    assert error["status"] == status and "JELLYFIN_URL" in error["message"], body
