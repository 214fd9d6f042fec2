"""A job's own transcode sessions, for its owner: the pipeline it ran and why, the exact ffmpeg
argv (credentials scrubbed), the stderr tail and the throughput, one session per attempt.

Operators see every session under `/api/admin/transcode-sessions` (`sessions.py`); this is the
same view, narrowed to one job's rendition.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.jobs_common import visible_job
from services.gateway.faces.native.sessions import SessionDetail, session_detail
from services.gateway.http import json_response
from services.gateway.identity import Principal
from services.gateway.state import Gateway, gateway
from shared.fleet import Fleet
from shared.jobs.renditions import rendition_key_of
from shared.messages.accounts import Role
from shared.messages.fleet import TranscodeSession
from shared.messages.records import JobRecord


@API.route(
    "GET",
    "/api/jobs/{job_id}/sessions",
    access=Access.USER,
    tag=Tag.JOBS,
    summary="The transcode sessions of a job's attempts, newest first: pipeline, ffmpeg argv, "
    "stderr tail, throughput",
    response=list[SessionDetail],
)
async def job_sessions(request: web.Request) -> web.Response:
    """The sessions that encoded (or tried to encode) the job's output, newest first."""
    gw = gateway(request)
    who = caller(request)
    job = await visible_job(request, request.match_info["job_id"])
    found = await sessions_of_job(gw.fleet, job)
    return json_response([session_detail(gw, _as_seen_by(gw, s, who, job)) for s in found])


async def sessions_of_job(fleet: Fleet, job: JobRecord) -> list[TranscodeSession]:
    """The sessions of the job's rendition that served it, newest first: those that name it, and
    those of the generation it holds (a job that joined a shared rendition later is not named).

    Session ids are `<rendition>-<generation>-<attempt>`: only the rendition's keys are read."""
    # a job queued again (a retry) holds no rendition until it is dispatched: its usual one
    rendition = job.rendition or rendition_key_of(job)
    found = []
    for key in await fleet.sessions.keys():
        if not key.startswith(f"{rendition}-"):
            continue
        entry = await fleet.sessions.get(key)
        if entry is not None and _served(entry.value, job):
            found.append(entry.value)
    return sorted(found, key=lambda s: -s.started_at)


def _served(s: TranscodeSession, job: JobRecord) -> bool:
    if job.id in s.jobs:
        return True
    return (s.rendition, s.generation) == (job.rendition, job.generation)


def _as_seen_by(
    gw: Gateway, s: TranscodeSession, who: Principal, job: JobRecord
) -> TranscodeSession:
    """A shared rendition's session serves other users' jobs too: a user who is not a moderator
    sees only their own jobs' ids in it, and no other user's id."""
    if who.at_least(Role.MODERATOR):
        return s
    own = [j for j in s.jobs if j == job.id or _owner(gw, j) == who.user_id]
    return msgspec.structs.replace(s, jobs=own, owner=s.owner if s.owner == who.user_id else "")


def _owner(gw: Gateway, job_id: str) -> str:
    job = gw.jobs.get(job_id)
    return job.owner if job is not None else ""
