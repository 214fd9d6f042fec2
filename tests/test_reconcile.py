"""The reconcile loop keeps scheduling whatever one of its steps raises: a failed sweep (the
event repair) or a failed pass is logged, and the loop backs off briefly and goes on. No NATS: the
loop runs over an empty view, with a sweep that fails. And what a sweep looks at: what is due by
time, and a bounded turn of the rest."""

from __future__ import annotations

import asyncio
from typing import cast

import msgspec
from structlog.testing import capture_logs

from services.scheduler.apply import Applier
from services.scheduler.config import SchedulerSettings
from services.scheduler.reconcile import ReconcileLoop, Turns, due_at
from services.scheduler.view import View
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages.records import JobRecord, JobStatus, Rendition
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from tests.harness import eventually


def empty_view() -> View:
    return View(
        Projection(cast(TypedKV[JobRecord], None), "test.jobs"),
        Projection(cast(TypedKV[Rendition], None), "test.renditions"),
    )


async def test_a_sweep_that_raises_does_not_stop_scheduling() -> None:
    # Given a loop whose sweep (the event repair) raises every time
    sweeps = 0

    async def failing_repair() -> None:
        nonlocal sweeps
        sweeps += 1
        raise RuntimeError("the events stream is gone")

    view = empty_view()
    loop = ReconcileLoop(
        view,
        Applier(cast(RecordStore, None), view),
        SchedulerSettings(sweep_interval=0.05),
        on_sweep=failing_repair,
    )

    # When it runs
    with capture_logs() as logs:
        task = asyncio.create_task(loop.run_forever())
        try:
            # Then it goes on with its passes, and sweeps again
            await eventually(lambda: sweeps >= 2 and loop.passes >= 2, what="more passes")
            assert not task.done()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    failures = [line for line in logs if line["event"] == "scheduler.sweep_failed"]
    assert len(failures) >= 2 and failures[0]["log_level"] == "error"
    assert task.cancelled()


async def test_a_pass_that_raises_is_tried_again() -> None:
    # Given a loop whose first pass raises
    view = empty_view()
    loop = ReconcileLoop(view, Applier(cast(RecordStore, None), view), SchedulerSettings())
    real_pass = loop.run_pass
    failed = False

    async def pass_failing_once() -> None:
        nonlocal failed
        if not failed:
            failed = True
            raise RuntimeError("KV timed out")
        await real_pass()

    loop.run_pass = pass_failing_once  # type: ignore[method-assign]

    # When it runs, Then the pass is tried again without any change waking it
    task = asyncio.create_task(loop.run_forever())
    try:
        await eventually(lambda: loop.passes >= 1, what="a pass after the failed one")
        assert failed and not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_sweep_looks_at_a_bounded_turn_of_the_jobs_and_at_every_one_in_time() -> None:
    jobs: Projection[JobRecord] = Projection(cast(TypedKV[JobRecord], None), "test.jobs")
    job = jobstate.new_job(job_id="j", owner="u", client="api", source="s", now=0)
    for n in range(5_000):
        jobs.apply(f"job-{n}", job, 1)
    turns = Turns(2_000)
    seen = [turns.next(jobs) for _ in range(3)]
    assert [len(turn) for turn in seen] == [2_000, 2_000, 1_000]
    assert sorted(key for turn in seen for key in turn) == sorted(k for k, _ in jobs.items())
    assert len(turns.next(jobs)) == 2_000  # and round again


def test_the_time_index_knows_when_an_output_expires_and_an_ended_job_may_go() -> None:
    job = jobstate.new_job(job_id="j", owner="u", client="api", source="s", now=0)
    assert due_at(job, keep_seconds=60) is None  # queued: nothing happens by time alone
    done = msgspec.structs.replace(job, status=JobStatus.COMPLETED, keep_until=500.0)
    assert due_at(done, keep_seconds=60) == 500.0
    failed = msgspec.structs.replace(job, status=JobStatus.FAILED, finished_at=100.0)
    assert due_at(failed, keep_seconds=60) == 160.0
