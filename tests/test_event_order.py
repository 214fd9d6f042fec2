"""Events of one job reach NATS subscribers in revision order, also while the machine is busy, many
jobs arrive at once through both faces, and a second scheduler replica (its own process) changes
the same jobs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from tests.conftest import ALICE
from tests.helpers import Api, Client, ServiceProcess, System, eventually
from tests.jellyfin_standin import JellyfinStandIn

pytestmark = pytest.mark.slow

JOBS_PER_FACE = 25
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
def second_scheduler(env: dict[str, str], log_path: Path) -> Iterator[ServiceProcess]:
    """Another scheduler replica, as its own process, in the same namespace."""
    replica = ServiceProcess("scheduler", env, log_path).start()
    try:
        yield replica
    finally:
        if replica.alive:
            replica.kill()


async def test_every_jobs_events_arrive_in_revision_order_starting_with_accepted(
    system: System, alice: Client, ann: Api, jellyfin: JellyfinStandIn, tmp_path: Path
) -> None:
    # Given a subscriber of every job event the events stream stores (an ordered consumer)
    seen: dict[str, list[dict[str, Any]]] = {}

    async def on_event(msg: Msg) -> None:
        event = json.loads(msg.data)
        seen.setdefault(event["job_id"], []).append(event)

    js = system.nc.jetstream()
    sub = await js.subscribe(system.names.job_event("*", "*"), cb=on_event, ordered_consumer=True)
    try:
        with busy_cpus(BURNERS), second_scheduler(system.env, tmp_path / "scheduler.log"):
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
