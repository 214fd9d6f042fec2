"""Events of one job reach NATS subscribers in revision order, also while the machine is busy and
many jobs arrive at once through both faces of a gateway that runs as its own process, beside two
scheduler replicas (one of them its own process too) that change the same jobs."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared.nats.subjects import Names
from tests.conftest import ALICE
from tests.harness import (
    Api,
    Client,
    ServiceProcess,
    eventually,
    free_port,
    start_system,
    stop_system,
    wait_ready,
)
from tests.jellyfin_standin import JellyfinStandIn

pytestmark = pytest.mark.slow

JOBS_PER_FACE = 15
BURNERS = 3
FINISHED = {"job.completed", "job.failed", "job.cancelled"}


@contextmanager
def busy_cpus(count: int) -> Iterator[None]:
    """Processes that keep `count` cores busy for as long as the block runs."""
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()


@contextmanager
def processes(*running: ServiceProcess) -> Iterator[None]:
    """Services started as their own processes, killed when the block ends."""
    try:
        yield
    finally:
        for process in running:
            if process.alive:
                process.kill()


async def test_every_jobs_events_arrive_in_revision_order_starting_with_accepted(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    system = await start_system(env, "scheduler", "storage", "statistics", "notifier", "transcoder")
    port = free_port()
    gateway_env = {**env, "VIDMESH_PORT": str(port)}
    gateway = ServiceProcess("gateway", gateway_env, tmp_path / "gateway.log").start()
    replica = ServiceProcess("scheduler", env, tmp_path / "scheduler.log").start()
    url = f"http://127.0.0.1:{port}"
    # the gateway gets what CPU the busy machine leaves over: it is the first to wait
    assert gateway.process is not None
    os.setpriority(os.PRIO_PROCESS, gateway.process.pid, 19)
    try:
        with processes(gateway, replica):
            await wait_ready(url)
            await _submit_many_and_check_event_order(system.nc, system.names, url, http, jellyfin)
    finally:
        await stop_system(system)


async def _submit_many_and_check_event_order(
    nc: NATS, names: Names, url: str, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    alice = Client(http, url, ALICE)
    ann = await Api(http, url).as_user("ann")
    # Given a subscriber of every job event the events stream stores (an ordered consumer)
    seen: dict[str, list[dict[str, Any]]] = {}

    async def on_event(msg: Msg) -> None:
        event = json.loads(msg.data)
        seen.setdefault(event["job_id"], []).append(event)

    js = nc.jetstream()
    sub = await js.subscribe(names.job_event("*", "*"), cb=on_event, ordered_consumer=True)
    try:
        with busy_cpus(BURNERS):
            # When many jobs arrive at once through both faces while the machine is busy
            streamyfin = [
                alice.submit(
                    jellyfin.stream_url("fits", ALICE, n=str(n)),
                    device=f"dev-{n % 3}",
                    item={"Id": f"item-{n}", "Name": f"Clip {n}"},
                )
                for n in range(JOBS_PER_FACE)
            ]
            native = [
                ann.ok(
                    "POST",
                    "/api/jobs",
                    201,
                    json={"source": jellyfin.stream_url("fits", ALICE, n=str(100 + n))},
                )
                for n in range(JOBS_PER_FACE)
            ]
            created = await asyncio.gather(*streamyfin, *native)
            job_ids = [c if isinstance(c, str) else c["id"] for c in created]

            def all_finished() -> bool:
                return all(
                    any(e["type"] in FINISHED for e in seen.get(job_id, ())) for job_id in job_ids
                )

            await eventually(all_finished, timeout=240, what="every job to finish")
    finally:
        await sub.unsubscribe()

    # Then each job's events start with `accepted` and their revisions only go up
    for job_id in job_ids:
        story = seen[job_id]
        kinds = [(e["type"], e["revision"]) for e in story]
        assert story[0]["type"] == "job.accepted", (job_id, kinds)
        revisions = [e["revision"] for e in story]
        assert revisions == sorted(set(revisions)), (job_id, kinds)
