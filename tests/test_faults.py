"""Nothing accepted is lost: a job answered with 201 completes or fails visibly, whatever else
happens to the processes around it.

Every service runs as its own OS process (`python -m services.<name>`), as in production; the
faults are real signals to real processes. A job is kept running long enough to be interrupted by
serving its source slowly from the Jellyfin stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from shared.nats.client import connect
from tests.harness import ALICE, Client, Deployment, eventually, ffmpeg_pids, free_port
from tests.jellyfin_standin import JellyfinStandIn
from vidmesh.natsserver import NatsServer

# The `long_ts` clip is ~0.95 MB for 20 s of media: at this rate one pass over it takes ~4 s,
# long enough to interrupt it, short enough to run it twice.
SLOW_RATE = 240_000
# Every service but the transcoder: each test chooses how many transcoders it runs.
OTHER_SERVICES = ("scheduler", "storage", "statistics", "gateway")


def slow_source(jellyfin: JellyfinStandIn, rate: int = SLOW_RATE) -> str:
    """A chunked stream of the 20 s clip, served at `rate` bytes per second."""
    return jellyfin.stream_url("long_ts", ALICE, kind="live", rate=str(rate))


def quick_source(jellyfin: JellyfinStandIn) -> str:
    return jellyfin.stream_url("fits", ALICE)


async def status_of(client: Client, job_id: str) -> str:
    return str((await client.job(job_id))["status"])


async def wait_running(client: Client, job_id: str, deployment: Deployment) -> None:
    """The job reads "optimizing" and its ffmpeg is encoding."""
    await client.wait_status(job_id, "optimizing", timeout=20)
    await eventually(lambda: ffmpeg_pids(deployment.marker), timeout=20, what="ffmpeg to start")


async def assert_downloads(client: Client, job_id: str) -> bytes:
    status, body, resp = await client.request("GET", f"/download/{job_id}")
    assert status == 200, (status, body)
    assert hashlib.sha256(body).hexdigest() == resp.headers["X-File-Checksum"]
    return bytes(body)


class StatusRecorder:
    """Polls a job's status in the background and remembers every status it saw."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.seen: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                status = await status_of(self.client, self.job_id)
                if not self.seen or self.seen[-1] != status:
                    self.seen.append(status)
            await asyncio.sleep(0.1)

    def __enter__(self) -> StatusRecorder:
        self._task = asyncio.create_task(self._poll())
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()


# ---- a transcoder dies ----------------------------------------------------------------------


async def test_transcoder_killed_mid_encode_job_completes_elsewhere_with_one_output(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given two transcoders, and a job whose ffmpeg is encoding on one of them
    d = deploy(nats_server.url, VIDMESH_ORPHAN_GRACE="3")
    await d.start(*OTHER_SERVICES, "transcoder", "transcoder")
    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(slow_source(jellyfin))
    await wait_running(alice, job_id, d)
    victim, _ffmpeg = await d.transcoder_running_ffmpeg()
    (survivor,) = [p for p in d.alive("transcoder") if p is not victim]

    # When that transcoder is killed with SIGKILL
    victim.kill()

    # Then the job runs again on the other transcoder and completes
    job = await alice.wait_status(job_id, "completed", "failed", timeout=45)
    assert job["status"] == "completed", (job, d.report())
    await eventually(
        lambda: '"work.succeeded"' in survivor.log(), timeout=10, what="the survivor's log"
    )
    body = await assert_downloads(alice, job_id)
    # ... with exactly one output: the one recorded, and no other file once the store is swept
    await eventually(
        lambda: len(d.output_files()) == 1, timeout=15, what="exactly one stored output"
    )
    (stored,) = d.output_files()
    assert stored.relative_to(d.data_dir / "blobs").as_posix() == job["outputPath"]
    assert stored.read_bytes() == body


async def test_restarted_transcoder_takes_over_its_dead_predecessors_work_at_once(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given one transcoder on this host, a long ack_wait, and a job it is encoding
    d = deploy(nats_server.url, VIDMESH_ACK_WAIT="120")
    await d.start(*OTHER_SERVICES, "transcoder")
    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(slow_source(jellyfin))
    await wait_running(alice, job_id, d)
    victim, _ffmpeg = await d.transcoder_running_ffmpeg()

    # When it is killed and a transcoder starts again on the same host (as `vidmesh up` does)
    victim.kill()
    killed = time.monotonic()
    (restarted,) = await d.start("transcoder")

    # Then the new one hands the dead one's work back at once instead of after ack_wait
    job = await alice.wait_status(job_id, "completed", "failed", timeout=60)
    assert job["status"] == "completed", (job, d.report())
    assert time.monotonic() - killed < 60, "the job waited for ack_wait"
    assert '"transcoder.orphan_handed_back"' in restarted.log(), d.report()
    await assert_downloads(alice, job_id)


async def test_sigterm_transcoder_hands_back_job(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given two transcoders that give up running work at once on SIGTERM, that have been waiting
    # for work for a while (several fetch timeouts, as in production), and a running job
    d = deploy(nats_server.url, VIDMESH_DRAIN_SECONDS="0", VIDMESH_ORPHAN_GRACE="3")
    transcoders = await d.start("transcoder", "transcoder")
    await d.start(*OTHER_SERVICES)
    await eventually(
        lambda: all(d.age(p) >= 6.0 for p in transcoders), timeout=15, what="transcoders idle 6 s"
    )
    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(slow_source(jellyfin))
    with StatusRecorder(alice, job_id) as recorder:
        await wait_running(alice, job_id, d)
        leaving, ffmpeg = await d.transcoder_running_ffmpeg()
        (staying,) = [p for p in d.alive("transcoder") if p is not leaving]

        # When the transcoder running it gets SIGTERM
        assert leaving.process is not None
        signalled = time.monotonic()
        leaving.process.send_signal(signal.SIGTERM)
        exit_time = asyncio.create_task(leaving.exited_at(timeout=30))

        # Then it stops its ffmpeg and hands the job back
        await eventually(
            lambda: '"work.handed_back"' in leaving.log(), timeout=5, what="the job handed back"
        )
        await eventually(
            lambda: ffmpeg not in ffmpeg_pids(d.marker), timeout=2, what="its ffmpeg to stop"
        )
        # ... and the other transcoder completes the job, which never reads "failed"
        job = await alice.wait_status(job_id, "completed", "failed", timeout=30)
    assert job["status"] == "completed", (job, d.report())
    assert "failed" not in recorder.seen, recorder.seen
    assert job["error"] is None
    # the job reads completed as soon as the rendition is stored; the log line follows it
    await eventually(
        lambda: '"work.succeeded"' in staying.log(), timeout=10, what="the staying one's log"
    )
    await assert_downloads(alice, job_id)
    await eventually(
        lambda: len(d.output_files()) == 1, timeout=15, what="exactly one stored output"
    )
    # ... and the transcoder that was asked to stop exited cleanly within a few seconds
    exited_after = await exit_time - signalled
    assert leaving.process.returncode == 0, leaving.log()
    assert exited_after <= 5.0, (
        f"the transcoder took {exited_after:.1f}s to exit after SIGTERM\n{leaving.log()}"
    )

    # ... and no failure is counted anywhere
    async def counted() -> dict[str, Any] | None:
        status, stats, _ = await alice.request("GET", "/statistics")
        assert status == 200, stats
        return stats if stats["completedJobs"] >= 1 else None

    stats = await eventually(counted, timeout=10, what="statistics to count the job")
    assert stats["failedJobs"] == 0, stats


# ---- the scheduler, the gateway, nats-server restart ------------------------------------------


async def test_scheduler_restart_mid_job_loses_nothing(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given a running job
    d = deploy(nats_server.url)
    await d.start(*OTHER_SERVICES, "transcoder")
    alice = Client(http, d.url, ALICE)
    first = await alice.submit(slow_source(jellyfin), device="dev-1")
    await wait_running(alice, first, d)

    # When the scheduler is killed, a job is accepted while it is down, and it comes back
    (scheduler,) = d.alive("scheduler")
    scheduler.kill()
    second = await alice.submit(quick_source(jellyfin), device="dev-2")
    assert await status_of(alice, second) == "queued"
    await d.start("scheduler")

    # Then both jobs complete and download
    for job_id in (first, second):
        job = await alice.wait_status(job_id, "completed", "failed", timeout=40)
        assert job["status"] == "completed", (job, d.report())
        await assert_downloads(alice, job_id)


async def test_gateway_restart_keeps_jobs(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given an accepted, running job
    d = deploy(nats_server.url)
    await d.start(*OTHER_SERVICES, "transcoder")
    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(slow_source(jellyfin))
    await wait_running(alice, job_id, d)

    # When the gateway is killed and a new one starts on the same port
    (gateway,) = d.alive("gateway")
    gateway.kill()
    await d.start("gateway")

    # Then the job is still known, completes, and downloads
    assert await status_of(alice, job_id) in ("optimizing", "completed")
    status, listed, _ = await alice.request("GET", "/all-jobs")
    assert status == 200 and [j["id"] for j in listed] == [job_id], listed
    job = await alice.wait_status(job_id, "completed", "failed", timeout=30)
    assert job["status"] == "completed", (job, d.report())
    await assert_downloads(alice, job_id)


async def test_nats_server_restart_mid_job(
    deploy: Callable[..., Deployment],
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    # Given a nats-server of our own, every service on it, and a running job
    store = tmp_path / "nats-store"
    servers = [NatsServer(store, log_file=tmp_path / "nats-1.log")]
    await servers[0].start()
    d = deploy(servers[0].url)
    try:
        await d.start(*OTHER_SERVICES, "transcoder")
        alice = Client(http, d.url, ALICE)
        job_id = await alice.submit(slow_source(jellyfin))
        await wait_running(alice, job_id, d)

        # When nats-server is killed and started again on the same port and store
        port = servers[0].port
        await servers[0].stop(kill=True)
        servers.append(NatsServer(store, port=port, log_file=tmp_path / "nats-2.log"))
        await servers[1].start()

        # Then the services reconnect by themselves and the job completes
        job = await alice.wait_status(job_id, "completed", "failed", timeout=45)
        assert job["status"] == "completed", (job, d.report())
        await assert_downloads(alice, job_id)
        assert all(p.alive for p in d.processes), d.report()
    finally:
        await d.close()  # while NATS is still there, so the services can drain and stop
        for server in servers:
            await server.stop()


async def test_sigterm_transcoder_finishes_its_job_within_the_drain_and_takes_no_more(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given a transcoder with two slots and the drain of the Kubernetes manifests (30 s, in a
    # 60 s grace period), encoding a job
    d = deploy(
        nats_server.url,
        VIDMESH_DRAIN_SECONDS="30",
        VIDMESH_SLOTS="2",
        VIDMESH_MAX_CONCURRENT_JOBS="2",
    )
    (leaving,) = await d.start("transcoder")
    await d.start(*OTHER_SERVICES)
    alice = Client(http, d.url, ALICE)
    first = await alice.submit(slow_source(jellyfin))
    with StatusRecorder(alice, first) as recorder:
        await wait_running(alice, first, d)
        _, ffmpeg = await d.transcoder_running_ffmpeg()

        # When it gets SIGTERM (as a rolling upgrade sends), and another job arrives meanwhile
        assert leaving.process is not None
        signalled = time.monotonic()
        leaving.process.send_signal(signal.SIGTERM)
        exit_time = asyncio.create_task(leaving.exited_at(timeout=45))
        await eventually(
            lambda: '"service.stopping"' in leaving.log(), timeout=5, what="the drain to begin"
        )
        second = await alice.submit(quick_source(jellyfin))

        # Then it finishes the running job itself, with the ffmpeg it had
        job = await alice.wait_status(first, "completed", "failed", timeout=40)
        assert ffmpeg not in ffmpeg_pids(d.marker)
    assert job["status"] == "completed", (job, d.report())
    assert "failed" not in recorder.seen, recorder.seen
    await assert_downloads(alice, first)
    # ... exits cleanly once it is done, well within the grace period, having handed nothing back
    exited_after = await exit_time - signalled
    assert leaving.process.returncode == 0, leaving.log()
    assert exited_after < 30, f"{exited_after:.1f}s\n{leaving.log()}"
    assert '"finished_in_time": true' in leaving.log(), leaving.log()
    assert '"work.handed_back"' not in leaving.log()
    # ... and it took no new work while draining: the second job waits for the next transcoder
    assert await status_of(alice, second) == "queued"
    (successor,) = await d.start("transcoder")
    done = await alice.wait_status(second, "completed", "failed", timeout=30)
    assert done["status"] == "completed", (done, d.report())
    await eventually(
        lambda: '"work.succeeded"' in successor.log(), timeout=10, what="the successor's log"
    )
    # ... one output per job, and no failure counted
    await eventually(lambda: len(d.output_files()) == 2, timeout=15, what="two stored outputs")
    status, stats, _ = await alice.request("GET", "/statistics")
    assert status == 200 and stats["failedJobs"] == 0, stats


# ---- cancelling ------------------------------------------------------------------------------


async def test_cancel_stops_ffmpeg_within_two_seconds(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given a job whose ffmpeg is encoding
    d = deploy(nats_server.url)
    await d.start(*OTHER_SERVICES, "transcoder")
    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(slow_source(jellyfin))
    await wait_running(alice, job_id, d)

    # When the client cancels it
    sent = time.monotonic()
    cancel = asyncio.create_task(alice.request("DELETE", f"/cancel-job/{job_id}"))

    # Then no ffmpeg of it is left 2 s after the request was sent
    def stopped_after() -> float | None:
        return None if ffmpeg_pids(d.marker) else time.monotonic() - sent

    try:
        took = await eventually(
            stopped_after,
            timeout=2.0 - (time.monotonic() - sent),
            interval=0.02,
            what="ffmpeg to stop within 2 s of the cancel",
        )
    finally:
        status, body, _ = await cancel
    assert took <= 2.0, f"ffmpeg stopped {took:.2f}s after the cancel"
    assert status == 200, body
    # ... and the job reads "cancelled"
    assert await status_of(alice, job_id) == "cancelled"


# ---- poisoned input --------------------------------------------------------------------------


async def test_poison_command_is_dropped(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    # Given a running system
    d = deploy(nats_server.url)
    await d.start(*OTHER_SERVICES, "transcoder")
    alice = Client(http, d.url, ALICE)

    # When garbage arrives on the scheduler's command subject
    nc = await connect(nats_server.url, "test-poison")
    try:
        js = nc.jetstream()
        await js.publish(d.names.scheduler_command("job_cancel"), b"\x00\xffnot a command{")
        (scheduler,) = d.alive("scheduler")
        await eventually(
            lambda: '"command.poison"' in scheduler.log(), timeout=10, what="poison logged"
        )

        # Then it is dropped for good: nothing pending, nothing waiting for an ack
        async def drained() -> bool:
            info = await js.consumer_info(d.names.commands_stream, d.names.scheduler_consumer)
            return info.num_pending == 0 and info.num_ack_pending == 0

        await eventually(drained, timeout=10, what="the poison to leave the consumer")
    finally:
        await nc.close()
    assert scheduler.log().count('"command.poison"') == 1
    # ... and the scheduler keeps working: a job submitted afterwards completes
    assert scheduler.alive
    job_id = await alice.submit(quick_source(jellyfin))
    job = await alice.wait_status(job_id, "completed", "failed", timeout=30)
    assert job["status"] == "completed", (job, d.report())
    await assert_downloads(alice, job_id)


async def test_every_service_exposes_prometheus_metrics_and_health_on_its_own_port(
    deploy: Callable[..., Deployment],
    nats_server: NatsServer,
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
) -> None:
    d = deploy(nats_server.url)
    ports = {name: free_port() for name in ("transcoder", *OTHER_SERVICES)}
    for name, port in ports.items():
        d.launch(name, VIDMESH_METRICS_PORT=str(port))
    for process in d.processes:
        await d.ready(process)

    async def scrape(name: str) -> str:
        async with http.get(f"http://127.0.0.1:{ports[name]}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return await response.text()

    for name, port in ports.items():
        async with http.get(f"http://127.0.0.1:{port}/livez") as response:
            assert response.status == 200, name

        async def ready(port: int = port) -> bool:
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                return response.status == 200

        await eventually(ready, timeout=20, what=f"{name} /readyz")

    alice = Client(http, d.url, ALICE)
    job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
    assert (await alice.wait_status(job_id, "completed"))["status"] == "completed"
    body = await assert_downloads(alice, job_id)

    def sample(text: str, line_start: str) -> float:
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    async def scheduler_counted() -> str | None:
        text = await scrape("scheduler")
        done = sample(text, 'vidmesh_job_duration_seconds_count{outcome="completed"}') == 1
        return text if done and sample(text, 'vidmesh_jobs{status="completed"}') == 1 else None

    text = await eventually(scheduler_counted, timeout=20, what="the scheduler's job metrics")
    assert sample(text, "vidmesh_job_queue_wait_seconds_count") == 1
    assert 'vidmesh_queue_depth{pool="default"} 0.0' in text
    assert "vidmesh_work_consumer_pending" in text
    transcoder = await scrape("transcoder")
    assert sample(transcoder, 'vidmesh_transcodes_total{outcome="succeeded",pool="default"}') == 1
    assert "vidmesh_transcoder_slots_busy" in transcoder
    gateway = await scrape("gateway")
    assert sample(gateway, 'vidmesh_download_bytes_total{store="local"}') >= len(body)
    assert "vidmesh_nats_reconnects_total" in gateway
