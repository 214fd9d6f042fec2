"""vidmesh on a 3-node NATS JetStream cluster (three nats-server processes on loopback, routed),
with every stream and bucket replicated 3 times: jobs keep being accepted and finished while a
node is killed and restarted, and while a node is frozen; none is lost or done twice.

Run with `-s` to see how long jobs stalled in each phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import nats
import nats.js.errors
import pytest
import pytest_asyncio

from shared.messages import events as ev
from shared.nats.client import safe_twice
from shared.nats.subjects import Names
from tests.harness import (
    ALICE,
    Client,
    eventually,
    fast_env,
    files_under,
    new_namespace,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from tests.nats_cluster import NatsCluster

SUBMIT_EVERY = 0.4  # seconds between submissions, through every phase
PHASE_SECONDS = 2.5  # how long a node stays down or frozen


@pytest.mark.parametrize(
    ("subject", "headers", "again"),
    [
        ("$JS.API.STREAM.INFO.VIDMESH_WORK", None, True),
        ("$JS.API.DIRECT.GET.KV_vidmesh-jobs.$KV.vidmesh-jobs.j1", None, True),
        ("$JS.API.CONSUMER.INFO.VIDMESH_WORK.transcode-default", None, True),
        ("vidmesh.evt.job.j1.completed", {"Nats-Msg-Id": "j1:7"}, True),
        # a compare-and-set that landed is refused the second time, then recognised by TypedKV
        ("$KV.vidmesh-jobs.j1", {"Nats-Expected-Last-Subject-Sequence": "6"}, True),
        ("$KV.vidmesh-jobs.j1", None, True),
        # a publish that expects a sequence and is not de-duplicated
        ("vidmesh.cmd.x", {"Nats-Expected-Last-Sequence": "6"}, False),
        # an unnamed consumer created twice is two consumers
        ("$JS.API.CONSUMER.CREATE.VIDMESH_EVENTS", None, False),
        ("$JS.API.STREAM.DELETE.VIDMESH_WORK", None, False),
    ],
)
def test_after_a_timeout_only_requests_that_are_safe_twice_are_sent_again(
    subject: str, headers: dict[str, str] | None, again: bool
) -> None:
    assert safe_twice(subject, headers) is again


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    running = NatsCluster(tmp_path / "nats")
    await running.start()
    yield running
    await running.stop()


@dataclass
class Submission:
    phase: str
    sent: float
    answered: float = 0.0
    status: int = 0
    job_id: str = ""
    completed: float = 0.0
    error: str = ""

    @property
    def stall(self) -> float:
        """Seconds from the request to the job reading completed."""
        return self.completed - self.sent


@dataclass
class Load:
    """Submits a job every SUBMIT_EVERY seconds and notes when each one reads completed."""

    client: Client
    source: str
    phase: str = "before"
    sent: list[Submission] = field(default_factory=list)

    async def submit_forever(self) -> None:
        n = 0
        while True:
            n += 1
            submission = Submission(self.phase, time.monotonic())
            self.sent.append(submission)
            asyncio.create_task(self._submit(submission, f"{self.source}&n={n}"))
            await asyncio.sleep(SUBMIT_EVERY)

    async def _submit(self, submission: Submission, url: str) -> None:
        payload = {"url": url, "deviceId": "dev-1", "itemId": "item-1", "item": {"Id": "item-1"}}
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, body, _ = await self.client.request(
                "POST", "/optimize-version", json=payload, timeout=aiohttp.ClientTimeout(60)
            )
            submission.status = status
            if status == 201:
                submission.job_id = body["id"]
            else:
                submission.error = str(body)
        submission.answered = time.monotonic()

    async def follow_forever(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, AssertionError):
                status, jobs, _ = await self.client.request(
                    "GET", "/all-jobs", timeout=aiohttp.ClientTimeout(10)
                )
                ok = status == 200
                done = {j["id"] for j in jobs if j["status"] == "completed"} if ok else set()
                now = time.monotonic()
                for s in self.sent:
                    if s.job_id in done and not s.completed:
                        s.completed = now
            await asyncio.sleep(0.1)

    def accepted(self) -> list[Submission]:
        return [s for s in self.sent if s.status == 201]

    def report(self) -> str:
        lines = []
        for phase in dict.fromkeys(s.phase for s in self.sent):
            of_phase = [s for s in self.sent if s.phase == phase and s.answered]
            stalls = sorted(s.stall for s in of_phase if s.completed)
            answers = sorted(s.answered - s.sent for s in of_phase)
            if stalls:
                lines.append(
                    f"{phase:>14}: {len(of_phase)} jobs, submit->completed "
                    f"p50 {stalls[len(stalls) // 2]:.2f}s max {stalls[-1]:.2f}s, "
                    f"POST answered in max {answers[-1]:.2f}s"
                )
        return "\n".join(lines)


async def events_by_type(servers: list[str], names: Names) -> Counter[tuple[str, str]]:
    """(event type, job id) -> how many such events the events stream holds, read again while
    the cluster still answers 503 (a consumer made just after a node thawed may have no leader
    yet)."""

    async def read() -> tuple[Counter[tuple[str, str]]] | None:
        try:
            return (await read_events(servers, names),)
        except nats.js.errors.ServiceUnavailableError:
            return None

    (seen,) = await eventually(read, timeout=30, what="the events stream to answer")
    return seen


async def read_events(servers: list[str], names: Names) -> Counter[tuple[str, str]]:
    nc = await nats.connect(servers)
    try:
        js = nc.jetstream(timeout=10)
        sub = await js.pull_subscribe(names.events_all, durable=None, stream=names.events_stream)
        seen: Counter[tuple[str, str]] = Counter()
        while True:
            try:
                batch = await sub.fetch(500, timeout=2)
            except TimeoutError:  # nats.errors.TimeoutError is one; a fetch may raise the plain one
                return seen
            for msg in batch:
                with contextlib.suppress(msgspec.DecodeError):
                    event = ev.DECODER.decode(msg.data)
                    job_id = getattr(event, "job_id", None)
                    if job_id:
                        seen[(type(event).__name__, job_id)] += 1
    finally:
        await nc.close()


@pytest.mark.slow  # starts a three-node nats-server cluster
async def test_jobs_survive_a_killed_node_and_a_frozen_node(
    cluster: NatsCluster,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # Given vidmesh on a 3-node cluster, every stream and bucket with 3 replicas
    env = fast_env(
        new_namespace(),
        tmp_path / "data",
        cluster.url,
        jellyfin.url,
        VIDMESH_REPLICAS=3,
        VIDMESH_NATS_PING_INTERVAL=1,
        VIDMESH_MAX_CONCURRENT_JOBS=2,
        VIDMESH_SLOTS=2,
        VIDMESH_MAX_CACHED_PER_USER=1000,
    )
    system = await start_system(env)
    load = Load(Client(http, system.url, ALICE), jellyfin.stream_url("fits", ALICE))
    tasks = [asyncio.create_task(load.submit_forever()), asyncio.create_task(load.follow_forever())]
    try:
        # ... taking jobs steadily
        await eventually(lambda: len(load.accepted()) >= 5, timeout=20, what="jobs accepted")

        # When the node leading the jobs bucket is killed, and restarted a while later
        load.phase = "node killed"
        victim = await cluster.leader_of(f"KV_{system.names.jobs_bucket}")
        await cluster.kill(victim)
        await asyncio.sleep(PHASE_SECONDS)  # the outage itself: how long the node stays down
        load.phase = "node restarted"
        await cluster.restart(victim)
        await asyncio.sleep(PHASE_SECONDS)

        # ... and when the node the services talk to is frozen (SIGSTOP), then thawed
        load.phase = "node frozen"
        connected = cluster.index_of_url(system.nc.connected_url)
        cluster.freeze(connected)
        await asyncio.sleep(PHASE_SECONDS)
        load.phase = "node thawed"
        cluster.thaw(connected)
        await asyncio.sleep(PHASE_SECONDS)
        tasks[0].cancel()

        # Then every job asked for was accepted, and every accepted job completes
        await eventually(
            lambda: all(s.answered for s in load.sent), timeout=60, what="every POST answered"
        )
        refused = [(s.phase, s.status, s.error) for s in load.sent if s.status != 201]
        assert refused == [], load.report()
        await eventually(
            lambda: all(s.completed for s in load.accepted()),
            timeout=90,
            what="every accepted job to complete",
        )
        print("\n" + load.report())

        # ... once: one job record each, one output each, accepted and completed once each
        ids = [s.job_id for s in load.accepted()]
        status, jobs, _ = await load.client.request("GET", "/all-jobs")
        assert status == 200
        listed = Counter(j["id"] for j in jobs)
        assert all(listed[i] == 1 for i in ids) and len(listed) == len(ids), listed
        assert {j["status"] for j in jobs} == {"completed"}
        seen = await events_by_type(cluster.servers, system.names)
        for kind in ("JobAccepted", "JobCompleted"):
            assert all(seen[(kind, i)] == 1 for i in ids), (kind, seen)
        assert not any(k == "JobFailed" for k, _ in seen), seen
        await eventually(
            lambda: len(files_under(tmp_path / "data" / "blobs" / "outputs")) == len(ids),
            timeout=30,
            what="one stored output per job",
        )
    finally:
        for task in tasks:
            task.cancel()
        await stop_system(system)
