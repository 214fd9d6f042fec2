"""Tasks: vidmesh's background work (transcodes, probes, webhook deliveries, cleanups) as the
Odeion media server's `/api/admin/tasks` routes, for administrators.

Tasks are read from the task history (the tasks bucket the statistics service keeps; see
`shared.messages.tasks` and `shared.task_history`); a transcode's status, timing and progress are
read from its live job when the job still exists, so what this face answers is never behind the
job. Acting on a task acts on its work, through the commands that exist for it: a transcode is
cancelled and retried by the scheduler's job commands (`CancelJob`, `RetryJob`: cancelling a
running one stops its ffmpeg), a delivery is retried by the notifier's `RetryDelivery`. Probes and
cleanups are finished when they show up, and their input is not kept: they are not cancelled or
retried. Clearing the history deletes finished tasks from the history only: jobs and deliveries
stay as they are.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.jobs_common import command_fields
from services.gateway.faces.native.task_views import (
    ReprocessRequest,
    TaskPage,
    TaskQuery,
    TasksAccepted,
    TaskSummary,
    TaskView,
    view,
)
from services.gateway.http import json_response
from services.gateway.state import Gateway, gateway
from shared import task_history as th
from shared.errors import BadRequest, Conflict, NotFound
from shared.jobs import state as jobstate
from shared.messages import commands as cmd
from shared.messages.records import JobRecord
from shared.messages.tasks import ClearedMark, TaskRecord, TaskStatus, TaskType
from shared.messages.webhooks import RetryDelivery
from shared.nats.kv import TypedKV, valid_key

TAG = Tag.ADMIN
BASE = "/api/admin/tasks"
# The types whose work can run again (a probe's source and a cleanup's request are not kept).
RERUNNABLE = (TaskType.TRANSCODE, TaskType.WEBHOOK_DELIVERY)


# ---- reading ---------------------------------------------------------------------------------
async def _history(gw: Gateway) -> TypedKV[TaskRecord]:
    return TypedKV(await gw.js.key_value(gw.names.tasks_bucket), TaskRecord)


def _live(gw: Gateway, task: TaskRecord) -> tuple[TaskRecord, float | None]:
    """The task as its live job has it now (a transcode whose job still exists), and its
    progress while it runs."""
    job = gw.jobs.get(task.subject) if task.type is TaskType.TRANSCODE else None
    if job is None:
        return task, None
    status = th.job_task_status(job.status) or task.status
    failed = status is TaskStatus.FAILED
    live = msgspec.structs.replace(
        task,
        status=status,
        started_at=job.started_at or task.started_at,
        finished_at=job.finished_at if status in th.FINISHED else None,
        error=(job.error.reason if job.error else task.error) if failed else "",
    )
    progress = gw.progress_of(job)
    return live, (round(progress.percent, 1) if progress is not None else None)


async def _tasks(gw: Gateway) -> list[tuple[TaskRecord, float | None]]:
    found = await (await _history(gw)).values(under=th.TASK_PREFIX.rstrip("."))
    return [_live(gw, task) for task in found.values()]


async def _task(gw: Gateway, task_id: str) -> tuple[TaskRecord, float | None]:
    if th.parse_task_id(task_id) is None or not valid_key(th.key_of(task_id)):
        raise NotFound(f"No task {task_id!r}: task ids look like `transcode.<job id>`.")
    found = await (await _history(gw)).get(th.key_of(task_id))
    if found is not None:
        return _live(gw, found.value)
    # The history is folded from the events a moment after a job is stored: a job that exists
    # has its task already, as the job shows it
    parsed = th.parse_task_id(task_id)
    job = await gw.job(parsed[1]) if parsed and parsed[0] is TaskType.TRANSCODE else None
    status = th.job_task_status(job.status) if job is not None else None
    if job is None or status is None:
        raise NotFound(f"No task {task_id!r}.")
    first = TaskRecord(
        id=task_id,
        type=TaskType.TRANSCODE,
        subject=job.id,
        status=status,
        owner=job.owner,
        title=f"{job.profile} ({job.container})",
        created_at=job.created_at,
        updated_at=job.updated_at,
    )
    return _live(gw, first)


# ---- acting on the work ----------------------------------------------------------------------
async def _cancel(
    gw: Gateway, request: web.Request, job: JobRecord, *, pending_only: bool = False
) -> None:
    """Cancel a job's transcode (a running one's ffmpeg is stopped by the transcoder; with
    `pending_only`, one that has started is left alone), and wait (bounded) to see it done."""
    command = cmd.CancelJob(**command_fields(request), job_id=job.id, pending_only=pending_only)
    done = _not_pending if pending_only else _finished
    await gw.command(command, job_id=job.id, until=done)


def _finished(job: JobRecord | None) -> bool:
    return job is None or not jobstate.is_active(job)


def _not_pending(job: JobRecord | None) -> bool:
    return job is None or th.job_task_status(job.status) is not TaskStatus.PENDING


async def _rerun(gw: Gateway, request: web.Request, task: TaskRecord, *, wait: bool) -> bool:
    """Run a failed (or cancelled) task's work again; whether it was asked for."""
    if task.type is TaskType.TRANSCODE:
        job = await gw.job(task.subject)
        if job is None or not jobstate.can_retry(job):
            return False
        before = (job.status, job.updated_at)
        until = (lambda j: j is None or (j.status, j.updated_at) != before) if wait else None
        command = cmd.RetryJob(**command_fields(request), job_id=job.id)
        await gw.command(command, job_id=job.id, until=until)
        return True
    if task.type is TaskType.WEBHOOK_DELIVERY and task.status is TaskStatus.FAILED:
        await gw.command(RetryDelivery(**command_fields(request), delivery_id=task.subject))
        return True
    return False


def _accepted(message: str, done: list[TaskRecord]) -> web.Response:
    by_type = {type_.value: 0 for type_ in TaskType}
    for task in done:
        by_type[task.type.value] += 1
    return json_response(TasksAccepted(message=message, tasks=len(done), by_type=by_type), 202)


async def _rerun_failed(
    gw: Gateway, request: web.Request, types: tuple[TaskType, ...]
) -> list[TaskRecord]:
    """Run again every failed task of `types`; the tasks it was asked for."""
    failed = [
        task
        for task, _ in await _tasks(gw)
        if task.status is TaskStatus.FAILED and task.type in types
    ]
    asked = await asyncio.gather(*(_rerun(gw, request, task, wait=False) for task in failed))
    return [task for task, ok in zip(failed, asked, strict=True) if ok]


# ---- routes (the fixed paths before the `{id}` ones they would match) ---------------------------
@API.route(
    "GET",
    BASE,
    access=Access.ADMIN,
    tag=TAG,
    summary="Background tasks, newest first (filter by status, type, owner; paged)",
    query=TaskQuery,
    response=TaskPage,
)
async def list_tasks(request: web.Request, query: TaskQuery) -> web.Response:
    chosen = [
        (task, progress)
        for task, progress in await _tasks(gateway(request))
        if (query.status is None or task.status is query.status)
        and (query.type is None or task.type is query.type)
        and (query.owner is None or task.owner == query.owner)
    ]
    chosen.sort(key=lambda found: (found[0].created_at, found[0].id), reverse=True)
    start = (query.page - 1) * query.limit
    items = [view(task, progress) for task, progress in chosen[start : start + query.limit]]
    pages = -(-len(chosen) // query.limit)
    return json_response(
        TaskPage(items=items, total=len(chosen), page=query.page, limit=query.limit, pages=pages)
    )


@API.route(
    "GET",
    f"{BASE}/summary",
    access=Access.ADMIN,
    tag=TAG,
    summary="Tasks counted by status and by type",
    response=TaskSummary,
)
async def tasks_summary(request: web.Request) -> web.Response:
    tasks = [task for task, _ in await _tasks(gateway(request))]
    by_status, by_type = th.counts(tasks)
    return json_response(TaskSummary(total=len(tasks), by_status=by_status, by_type=by_type))


@API.route(
    "POST",
    f"{BASE}/cancel-pending",
    access=Access.ADMIN,
    tag=TAG,
    status=202,
    summary="Cancel every pending transcode in one step (running tasks are left alone)",
    response=TasksAccepted,
)
async def cancel_pending(request: web.Request) -> web.Response:
    gw = gateway(request)
    pending = [
        task
        for task, _ in await _tasks(gw)
        if task.type is TaskType.TRANSCODE and task.status is TaskStatus.PENDING
    ]
    jobs = [gw.jobs.get(task.subject) for task in pending]
    await asyncio.gather(
        *(_cancel(gw, request, job, pending_only=True) for job in jobs if job is not None)
    )
    return _accepted("Pending tasks cancelled", pending)


@API.route(
    "POST",
    f"{BASE}/retry-failed",
    access=Access.ADMIN,
    tag=TAG,
    status=202,
    summary="Run every failed transcode and webhook delivery again",
    response=TasksAccepted,
)
async def retry_failed(request: web.Request) -> web.Response:
    retried = await _rerun_failed(gateway(request), request, RERUNNABLE)
    return _accepted("Failed tasks queued again", retried)


@API.route(
    "POST",
    f"{BASE}/reprocess",
    access=Access.ADMIN,
    tag=TAG,
    status=202,
    summary="Run every failed task of one type again (transcode or webhook_delivery)",
    body=ReprocessRequest,
    response=TasksAccepted,
)
async def reprocess(request: web.Request, body: ReprocessRequest) -> web.Response:
    if body.type not in RERUNNABLE:
        kinds = " or ".join(type_.value for type_ in RERUNNABLE)
        raise BadRequest(
            f"{body.type.value} tasks cannot be reprocessed (their input is not kept); "
            f"choose {kinds}.",
            details={"field": "type"},
        )
    retried = await _rerun_failed(gateway(request), request, (body.type,))
    return _accepted(f"Failed {body.type.value} tasks queued again", retried)


@API.route(
    "DELETE",
    f"{BASE}/clear-old",
    access=Access.ADMIN,
    tag=TAG,
    status=204,
    summary="Delete completed, failed and cancelled tasks from the task history (not the jobs)",
)
async def clear_old(request: web.Request) -> web.Response:
    gw = gateway(request)
    history = await _history(gw)
    # first the mark, so that the history's writer never adds back what is cleared here
    await TypedKV(history.kv, ClearedMark).put(th.CLEARED_KEY, ClearedMark(at=time.time()))
    for key in await history.keys():
        found = await history.get(key) if key.startswith(th.TASK_PREFIX) else None
        if found is not None and found.value.status in th.FINISHED:
            await history.delete(key, found.revision)
    return web.Response(status=204)


@API.route(
    "GET",
    f"{BASE}/{{id}}",
    access=Access.ADMIN,
    tag=TAG,
    summary="One task: its status, progress and timing",
    response=TaskView,
)
async def get_task(request: web.Request) -> web.Response:
    task, progress = await _task(gateway(request), request.match_info["id"])
    return json_response(view(task, progress))


@API.route(
    "DELETE",
    f"{BASE}/{{id}}",
    access=Access.ADMIN,
    tag=TAG,
    status=204,
    summary="Cancel a task: a pending transcode at once, a running one is stopped",
    statuses=(409,),
)
async def cancel_task(request: web.Request) -> web.Response:
    gw = gateway(request)
    task, _ = await _task(gw, request.match_info["id"])
    if task.status in th.FINISHED:
        raise Conflict(f"Task {task.id} has already finished ({task.status}).")
    if task.type is not TaskType.TRANSCODE:
        raise Conflict(
            "Only transcodes are cancelled; a webhook delivery being attempted stops when its "
            "webhook is disabled."
        )
    job = await gw.job(task.subject)
    if job is None or not jobstate.is_active(job):
        raise Conflict(f"Task {task.id} has already finished.")
    await _cancel(gw, request, job)
    return web.Response(status=204)


@API.route(
    "POST",
    f"{BASE}/{{id}}/retry",
    access=Access.ADMIN,
    tag=TAG,
    status=202,
    summary="Run a failed or cancelled task again",
    response=TaskView,
    statuses=(409,),
)
async def retry_task(request: web.Request) -> web.Response:
    gw = gateway(request)
    task, _ = await _task(gw, request.match_info["id"])
    if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        raise Conflict(f"Task {task.id} is {task.status}; only failed or cancelled tasks retry.")
    if task.type not in RERUNNABLE:
        raise Conflict(
            f"A {task.type.value} task cannot run again (its input is not kept): "
            + ("probe the source again." if task.type is TaskType.PROBE else "ask again.")
        )
    if not await _rerun(gw, request, task, wait=True):
        raise Conflict(f"Task {task.id} cannot run again: its work no longer exists.")
    again, progress = await _task(gw, task.id)
    return json_response(view(again, progress), 202)


@API.route(
    "GET",
    f"{BASE}/{{mediaType}}/{{mediaID}}",
    access=Access.ADMIN,
    tag=TAG,
    summary="Tasks of a media item: always 404 (vidmesh has no media library)",
    statuses=(404,),
)
async def media_tasks(request: web.Request) -> web.Response:
    raise NotFound(
        "vidmesh has no media library: list tasks with GET /api/admin/tasks "
        "(filter by type, status or owner)."
    )
