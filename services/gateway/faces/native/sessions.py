"""Transcode sessions, one per attempt: what ran, how, and how fast; the operator can cancel
one or export it whole for a bug report.

The machines (OpenEncoder's resource: live transcoder instances) are in `machines.py`.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.jobs_common import command_fields
from services.gateway.http import Message, json_response
from services.gateway.state import Gateway, gateway
from shared.errors import Conflict, NotFound
from shared.jobs import state as jobstate
from shared.messages import commands as cmd
from shared.messages.fleet import SessionState, TranscodeSession, WorkerInfo
from shared.messages.records import JobRecord, Progress
from shared.nats.kv import valid_key

TAG = Tag.TRANSCODING


class SessionQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Filters for the session list (newest first)."""

    state: SessionState | None = None
    pool: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 100


class SessionSummary(msgspec.Struct, kw_only=True):
    """One transcode attempt, without its argv, stderr and throughput history."""

    id: str
    rendition: str
    attempt: int
    jobs: list[str]
    worker: str
    host: str
    pool: str
    state: str
    pipeline: str
    fell_back_from: str
    fps: float | None
    speed: float | None
    started_at: float
    ended_at: float | None
    error: str


class SessionDetail(msgspec.Struct, kw_only=True):
    """A session in full, with live progress while it runs."""

    session: TranscodeSession
    progress: Progress | None


class SessionExport(msgspec.Struct, kw_only=True):
    """Everything about one session in one document, for a bug report."""

    exported_at: float
    session: TranscodeSession
    progress: Progress | None
    worker: WorkerInfo | None
    jobs: list[dict[str, Any]]


def _summary(s: TranscodeSession) -> SessionSummary:
    last = s.throughput[-1] if s.throughput else None
    return SessionSummary(
        id=s.id,
        rendition=s.rendition,
        attempt=s.attempt,
        jobs=s.jobs,
        worker=s.worker,
        host=s.host,
        pool=s.pool,
        state=s.state,
        pipeline=s.pipeline,
        fell_back_from=s.fell_back_from,
        fps=last.fps if last else None,
        speed=last.speed if last else None,
        started_at=s.started_at,
        ended_at=s.ended_at,
        error=s.error,
    )


async def _session(request: web.Request) -> TranscodeSession:
    session_id = request.match_info["session_id"]
    found = await gateway(request).fleet.sessions.get(session_id) if valid_key(session_id) else None
    if found is None:
        raise NotFound(f"There is no transcode session {session_id!r}.")
    return found.value


def session_detail(gw: Gateway, s: TranscodeSession) -> SessionDetail:
    """The session as `GET /api/admin/transcode-sessions/{id}` shows it (a job's page too)."""
    return SessionDetail(session=s, progress=_progress(gw, s))


def _progress(gw: Gateway, s: TranscodeSession) -> Progress | None:
    live = gw.progress.get(s.rendition) if s.state == "running" else None
    if live is None or (live.generation, live.attempt) != (s.generation, s.attempt):
        return None
    return live


@API.route(
    "GET",
    "/api/admin/transcode-sessions",
    access=Access.MODERATOR,
    tag=TAG,
    summary="Transcode sessions, newest first",
    query=SessionQuery,
    response=list[SessionSummary],
)
async def list_sessions(request: web.Request, query: SessionQuery) -> web.Response:
    """Summaries of the sessions that match the filters, newest first."""
    found = [
        s
        for s in await gateway(request).fleet.all_sessions()
        if (query.state is None or s.state == query.state)
        and (query.pool is None or s.pool == query.pool)
    ]
    return json_response([_summary(s) for s in found[: query.limit]])


@API.route(
    "GET",
    "/api/admin/transcode-sessions/{session_id}",
    access=Access.MODERATOR,
    tag=TAG,
    summary="One session: source probe, exact ffmpeg argv, stderr tail, output, throughput",
    response=SessionDetail,
)
async def get_session(request: web.Request) -> web.Response:
    """The session in full, with its live progress while it runs."""
    return json_response(session_detail(gateway(request), await _session(request)))


@API.route(
    "POST",
    "/api/admin/transcode-sessions/{session_id}/cancel",
    access=Access.ADMIN,
    tag=TAG,
    summary="Stop a running session: every job it serves is cancelled",
    response=Message,
)
async def cancel_session(request: web.Request) -> web.Response:
    """Ask the scheduler to cancel every unfinished job the session serves."""
    gw = gateway(request)
    s = await _session(request)
    if s.state != "running":
        raise Conflict(f"The session {s.id} is {s.state}, not running.")
    active = [job_id for job_id in s.jobs if _active(await gw.job(job_id))]
    if not active:
        # its jobs have ended (cancelled, say): the transcoder is stopping it
        raise Conflict(f"The session {s.id} is ending: none of its jobs is active.")
    for job_id in active:
        await gw.command(cmd.CancelJob(job_id=job_id, **command_fields(request)))
    return json_response(Message(message=f"cancelling session {s.id}"))


def _active(job: JobRecord | None) -> bool:
    return job is not None and jobstate.is_active(job)


@API.route(
    "GET",
    "/api/admin/transcode-sessions/{session_id}/export",
    access=Access.MODERATOR,
    tag=TAG,
    summary="The session, its transcoder and its jobs as one JSON document for a bug report",
    response=SessionExport,
)
async def export_session(request: web.Request) -> web.Response:
    """The session, its transcoder and its jobs as a JSON attachment."""
    gw = gateway(request)
    s = await _session(request)
    worker = await gw.fleet.workers.get(s.worker)
    jobs = []
    for job_id in s.jobs:
        job = await gw.job(job_id)
        if job is not None:
            # the source as the session shows it (credentials scrubbed), never the raw one
            jobs.append({**msgspec.to_builtins(job), "source": s.source})
    export = SessionExport(
        exported_at=time.time(),
        session=s,
        progress=_progress(gw, s),
        worker=worker.value if worker else None,
        jobs=jobs,
    )
    response = json_response(export)
    response.headers["Content-Disposition"] = f'attachment; filename="session-{s.id[:40]}.json"'
    return response
