"""A job answered 201 while the scheduler was down (or slow) is a job: every command sent for it
before the scheduler stored it takes effect, the answers say so once it has, a bulk request
with the scheduler down is bounded by one deadline, and a submission whose handling keeps
failing is never dropped by the attempt cap.

Against a real nats-server, with the services started by the harness; the scheduler is started
late, after the commands for the not-yet-stored jobs are waiting in the commands stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
import nats
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from structlog.testing import capture_logs

from services.gateway.state import GATEWAY
from services.scheduler import SchedulerSettings
from services.scheduler.intake import refused
from services.scheduler.service import command_consumer
from shared import config
from shared.errors import BadRequest
from shared.media import builtin
from shared.messages import commands as cmd
from shared.messages.records import JobStatus
from shared.nats.consumer import ACK, Received, Settle
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology, pending_submission, publish_command
from tests.harness import (
    ADMIN_PASSWORD,
    ALICE,
    Api,
    Client,
    System,
    build_service,
    drop_namespace,
    eventually,
    new_namespace,
    start_system,
    stop_system,
)
from tests.jellyfin_standin import JellyfinStandIn
from vidmesh.natsserver import NatsServer

# Everything but the scheduler (and the transcoder: a job that ran would show it).
WITHOUT_SCHEDULER = ("storage", "statistics", "notifier", "gateway")
COMMAND_TIMEOUT = 2.0


@contextlib.asynccontextmanager
async def scheduler_down(env: dict[str, str], command_timeout: float) -> AsyncIterator[System]:
    """A system whose scheduler is not running (yet)."""
    running = await start_system(
        {**env, "VIDMESH_COMMAND_TIMEOUT": str(command_timeout)}, *WITHOUT_SCHEDULER
    )
    try:
        yield running
    finally:
        await stop_system(running)


@pytest_asyncio.fixture
async def down(env: dict[str, str]) -> AsyncIterator[System]:
    async with scheduler_down(env, COMMAND_TIMEOUT) as running:
        yield running


@pytest_asyncio.fixture
async def carl(http: aiohttp.ClientSession, down: System) -> Api:
    return await Api(http, down.url).as_user("carl")


async def commands_waiting(system: System, *subjects: str) -> None:
    """Until a command waits in the commands stream on each of `subjects`."""
    js = system.nc.jetstream()

    async def check() -> bool:
        for subject in subjects:
            try:
                await js.get_last_msg(system.names.commands_stream, subject)
            except NotFoundError:
                return False
        return True

    await eventually(check, what=f"commands waiting on {subjects}")


def cancel_subject(names: Names) -> str:
    return names.command_subject(cmd.CancelJob(command_id="-", at=0, job_id="-"))


async def test_a_job_cancelled_before_the_scheduler_stored_it_ends_cancelled_and_never_runs(
    down: System, carl: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given a job accepted while the scheduler is down (answered after the command timeout)
    created = await carl.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    job_id = created["id"]
    assert created["status"] == "queued"

    # When it is cancelled while still not stored, and the scheduler starts afterwards
    answer = await carl.ok("POST", f"/api/jobs/{job_id}/cancel")
    assert answer["id"] == job_id
    await commands_waiting(down, cancel_subject(down.names))
    await down.start("scheduler")

    # Then the job ends cancelled: the cancel was not lost behind its own submission
    cancelled = await carl.wait_job(job_id, "cancelled", timeout=20)
    # ... and a transcoder started now finds nothing of it to run
    await down.start("transcoder")
    await eventually(
        lambda: down.scheduler.loop.passes > 3, what="the scheduler's passes after the start"
    )
    after = await carl.ok("GET", f"/api/jobs/{job_id}")
    assert after["status"] == "cancelled" and after.get("started_at") is None
    assert cancelled.get("output") is None and after.get("output") is None


async def test_a_batch_started_before_the_scheduler_stored_its_jobs_starts_every_job(
    down: System, carl: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given a paused batch of jobs created while the scheduler is down
    jobs = [{"source": jellyfin.stream_url("fits", ALICE, n=str(n))} for n in range(3)]
    result = await carl.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs, "paused": True})
    assert result["created"] == 3
    ids = [item["job"]["id"] for item in result["results"]]
    batch_id = result["batch_id"]

    # When the batch is started before the scheduler has stored its jobs
    started = await carl.ok("POST", f"/api/batch/{batch_id}/start")
    assert started["started"] is True
    start_batch = down.names.command_subject(
        cmd.StartBatch(command_id="-", at=0, batch_id=batch_id, job_ids=ids)
    )
    await commands_waiting(down, start_batch)
    await down.start("scheduler")

    # Then none of them stays paused: each is queued (no transcoder runs them yet)
    for job_id in ids:
        await carl.wait_job(job_id, "queued", timeout=20)
    await eventually(
        lambda: down.scheduler.loop.passes > 3, what="the scheduler's passes after the start"
    )
    statuses = [(await carl.ok("GET", f"/api/jobs/{job_id}"))["status"] for job_id in ids]
    assert statuses == ["queued"] * 3


async def test_bulk_creation_with_the_scheduler_down_is_bounded_by_one_deadline(
    down: System, carl: Api, jellyfin: JellyfinStandIn
) -> None:
    # Given the scheduler is down, when five jobs are created in one request
    jobs = [{"source": jellyfin.stream_url("fits", ALICE, n=str(n))} for n in range(5)]
    began = time.monotonic()
    result = await carl.ok("POST", "/api/jobs/bulk", 201, json={"jobs": jobs})
    took = time.monotonic() - began

    # Then every item is accepted, in one command timeout (not one per item)
    assert result["created"] == 5 and result["failed"] == 0
    assert took < 2 * COMMAND_TIMEOUT, took
    # ... and each answers by id as queued while it waits for the scheduler
    for item in result["results"]:
        assert (await carl.ok("GET", f"/api/jobs/{item['job']['id']}"))["status"] == "queued"


async def test_streamyfin_cancel_of_a_job_not_stored_yet_answers_once_it_is_cancelled(
    env: dict[str, str], http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # (a command timeout long enough for the scheduler to start while the cancel waits)
    async with scheduler_down(env, 8.0) as down:
        alice = Client(http, down.url, ALICE)
        # Given a job the Streamyfin app submitted while the scheduler is down
        job_id = await alice.submit(jellyfin.stream_url("fits", ALICE))
        assert (await alice.job(job_id))["status"] == "queued"

        # When the app cancels it, and the scheduler starts while the cancel waits
        cancelling = asyncio.ensure_future(alice.request("DELETE", f"/cancel-job/{job_id}"))
        release = down.names.command_subject(cmd.ReleaseJob(command_id="-", at=0, job_id="-"))
        await commands_waiting(down, release)
        assert not cancelling.done()
        await down.start("scheduler")
        status, body, _ = await cancelling

        # Then it answers as for a stored job: cancelled, once the cancel has taken effect
        assert status == 200
        assert body == {
            "message": "Job cancelled successfully",
            "id": job_id,
            "status": "cancelled",
        }
        assert (await alice.job(job_id))["status"] == "cancelled"


async def test_streamyfin_is_answered_at_once_with_the_scheduler_down_and_503_without_a_stream(
    down: System, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    alice = Client(http, down.url, ALICE)
    payload = {"url": jellyfin.stream_url("fits", ALICE), "deviceId": "dev-1", "itemId": "i"}
    # Given the scheduler is down, the app's submission is accepted once it is stored in the
    # commands stream (no wait on the scheduler), and the job reads back at once, queued
    started = time.monotonic()
    status, body, _ = await alice.request("POST", "/optimize-version", json=payload)
    assert status == 201 and time.monotonic() - started < COMMAND_TIMEOUT
    assert (await alice.job(body["id"]))["status"] == "queued"
    status, listed, _ = await alice.request("GET", "/all-jobs", params={"deviceId": "dev-1"})
    assert status == 200 and [job["id"] for job in listed] == [body["id"]]

    # When the commands stream is gone, nothing can store a submission
    await down.nc.jetstream().delete_stream(down.names.commands_stream)
    status, body, _ = await alice.request("POST", "/optimize-version", json=payload)

    # Then the face answers the 503 it gives for every NATS trouble, in its own words
    assert status == 503
    assert body["error"]["message"] == (
        "The job could not be stored: NATS is not reachable right now."
    )


async def test_a_submission_is_found_by_its_job_id_while_it_waits(
    down: System, carl: Api, jellyfin: JellyfinStandIn
) -> None:
    created = await carl.ok(
        "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
    )
    js = down.nc.jetstream()
    waiting = await pending_submission(js, down.names, created["id"])
    assert waiting is not None and waiting.job_id == created["id"]
    subject = down.names.submission_subject(created["id"])
    assert subject == f"{down.names.namespace}.cmd.scheduler.job_submit.{created['id']}"
    assert await pending_submission(js, down.names, "no-such-job") is None
    assert await pending_submission(js, down.names, "not.a>token") is None


def submission(job_id: str = "job-1") -> cmd.SubmitJob:
    return cmd.SubmitJob(
        command_id=f"c-{job_id}",
        at=1_700_000_000.0,
        job_id=job_id,
        owner="user-1",
        source="https://media.example.com/a.mkv",
        spec=builtin("h264-720p"),
    )


async def test_the_scheduler_never_gives_up_on_a_submission_but_caps_other_commands(
    nats_server: NatsServer,
) -> None:
    # Given the scheduler's command consumer allowing one attempt, and a handler for which the
    # job store is out (every attempt fails until the third)
    names = Names(new_namespace())
    settings = config.load(
        SchedulerSettings, {"VIDMESH_NAMESPACE": names.namespace, "VIDMESH_MESSAGE_ATTEMPTS": "1"}
    )
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_topology(js, names)
    try:
        await _submission_outlives_the_cap(js, names, settings)
    finally:
        await drop_namespace(nc, names)
        await nc.close()


async def _submission_outlives_the_cap(
    js: JetStreamContext, names: Names, settings: SchedulerSettings
) -> None:
    attempts: dict[str, list[int]] = {}

    async def store_out(received: Received[cmd.SchedulerCommand]) -> Settle:
        kind = cmd.kind(received.message)
        attempts.setdefault(kind, []).append(received.attempt)
        if received.attempt < 3:
            raise RuntimeError("the jobs bucket is not answering")
        return ACK

    with capture_logs() as logs:
        loops = await command_consumer(names, settings).open(js, "test.commands", store_out)
        try:
            # When a submission and a cancel are sent
            await publish_command(js, names, submission())
            await publish_command(js, names, cmd.CancelJob(command_id="c", at=0, job_id="j"))

            # Then the submission is retried past the cap until it is handled
            await eventually(
                lambda: attempts.get("job_submit") == [1, 2, 3], timeout=15, what="3 attempts"
            )

            async def drained() -> bool:
                info = await js.consumer_info(names.commands_stream, names.scheduler_consumer)
                return info.num_pending == 0 and info.num_ack_pending == 0

            await eventually(drained, what="nothing left to handle")
        finally:
            await loops.cancel(1.0)
            await loops.close()
    # ... while the cancel stopped at the cap, with one error line
    assert attempts["job_cancel"] == [1]
    assert len([entry for entry in logs if entry["event"] == "command.gave_up"]) == 1
    handled = [entry for entry in logs if entry["event"] == "command.handled"]

    def outcomes(tag: str) -> list[str]:
        return [entry["outcome"] for entry in handled if entry.get("tag") == tag]

    assert outcomes("job.cancel") == ["term"]
    assert outcomes("job.submit") == ["retry", "retry", "ack"]


def test_a_submission_that_can_never_be_accepted_is_stored_failed_with_its_reason() -> None:
    job = refused(submission(), BadRequest("Unsupported container 'avi'."))
    assert job.status is JobStatus.FAILED and job.id == "job-1" and job.owner == "user-1"
    assert job.error is not None and job.error.code == "submission_refused"
    assert "Unsupported container 'avi'." in job.error.reason
    assert job.finished_at == job.created_at


def test_a_submissions_subject_names_its_job_for_the_gateway_and_the_scheduler_alike() -> None:
    names = Names("vm")
    assert names.command_subject(submission("job-7")) == "vm.cmd.scheduler.job_submit.job-7"
    assert names.submission_subject("job-7") == "vm.cmd.scheduler.job_submit.job-7"
    # ... and within the scheduler's filter, beside the commands that name no job in their subject
    cancel = cmd.CancelJob(command_id="c", at=0, job_id="job-7")
    assert names.command_subject(cancel) == "vm.cmd.scheduler.job_cancel"
    assert names.scheduler_commands == "vm.cmd.scheduler.>"


async def test_a_job_accepted_by_one_gateway_is_shown_by_the_others_at_once_within_ceilings(
    down: System, http: aiohttp.ClientSession, jellyfin: JellyfinStandIn
) -> None:
    # Given the fleet's quality ceilings, and a second gateway beside the first
    admin = await Api(http, down.url).as_user("admin", ADMIN_PASSWORD, register=False)
    ceilings = {"max_height": 144, "max_video_bitrate_kbps": 500}
    await admin.ok("PUT", "/api/admin/transcoding/settings", json=ceilings)
    first = down.gateway.app[GATEWAY]
    await eventually(lambda: first.transcoding().max_height == 144, what="the ceilings seen")
    second = build_service("gateway", down.nc, down.env)
    await second.start()
    try:
        # When a job is accepted by the first (the scheduler is down: nothing stores it yet)
        on_first, on_second = Client(http, down.url, ALICE), Client(http, second.url, ALICE)
        job_id = await on_first.submit(jellyfin.stream_url("fits", ALICE), device="dev-2")
        ann = await Api(http, down.url).as_user("ann")
        created = await ann.ok(
            "POST", "/api/jobs", 201, json={"source": jellyfin.stream_url("fits", ALICE)}
        )

        # Then the second lists it too, and both show the spec within the ceilings
        async def listed() -> bool:
            _, jobs, _ = await on_second.request("GET", "/all-jobs", params={"deviceId": "dev-2"})
            return [job["id"] for job in jobs] == [job_id]

        await eventually(listed, what="the job listed by the second gateway")
        video = created["spec"]["video"]
        assert (video["max_height"], video["max_bitrate_kbps"]) == (144, 500)
        on_second_api = Api(http, second.url, token=ann.token)
        again = (await on_second_api.ok("GET", f"/api/jobs/{created['id']}"))["spec"]["video"]
        assert (again["max_height"], again["max_bitrate_kbps"]) == (144, 500)
    finally:
        await second.shutdown()
