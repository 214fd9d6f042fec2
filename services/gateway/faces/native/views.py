"""How the native API shows jobs, accounts and keys: response types and the mappers that fill
them from records (the one job model, in this face's words)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from services.gateway.downloads import download_name
from services.gateway.state import Gateway
from shared.media import PresetSpec, ProbeResult, builtin
from shared.messages.accounts import ApiKey, Role, User
from shared.messages.records import JobRecord, JobStatus, Progress
from shared.sources import redact

# Stages a job goes through, as the native API names them.
STAGES = (
    "queued",
    "downloading",
    "probing",
    "encoding",
    "uploading",
    "completed",
    "failed",
    "cancelled",
)
_LIVE_STAGE = {
    "starting": "downloading",
    "probing": "probing",
    "encoding": "encoding",
    "storing": "uploading",
}


class UserView(msgspec.Struct, kw_only=True):
    """An account as shown to its owner and to administrators."""

    id: str
    username: str
    email: str
    role: Role
    created_at: datetime
    disabled: bool = False


class ApiKeyView(msgspec.Struct, kw_only=True):
    """An API key without its secret."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    user_id: str


class OutputView(msgspec.Struct, kw_only=True):
    """A job's stored output."""

    name: str
    size: int
    sha256: str
    mime: str
    container: str
    duration: float | None
    mode: str


class FailureView(msgspec.Struct, kw_only=True):
    """Why a job failed, in words a user can act on."""

    code: str
    reason: str


class JobStatusView(msgspec.Struct, kw_only=True):
    """Where a job is, briefly."""

    id: str
    status: JobStatus
    stage: str
    progress: Annotated[float, msgspec.Meta(ge=0, le=100)]
    speed: float | None
    fps: float | None
    eta_seconds: float | None
    error: FailureView | None


class JobView(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A job, with the story of what happened to it."""

    id: str
    status: JobStatus
    stage: str
    progress: Annotated[float, msgspec.Meta(ge=0, le=100)]
    speed: float | None
    fps: float | None
    eta_seconds: float | None
    source: str
    preset: str
    # The name the output is (or will be) downloaded under: the one asked for or given by a
    # batch rename, else one made from the job's id and container.
    filename: str
    spec: PresetSpec
    priority: int
    output: OutputView | None
    probe: ProbeResult | None
    attempts: int
    error: FailureView | None
    shared: bool
    owner: str
    client: str
    batch_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    downloaded_at: datetime | None
    keep_until: datetime | None
    # The secret that signs the webhooks sent to the job's `notify_url`: only in the answer to
    # the request that created the job, never again.
    notify_secret: str | None = None


class JobPage(msgspec.Struct, kw_only=True):
    """A page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    count: int
    items: list[JobView]
    next_cursor: str | None


def when(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


def user_view(user: User) -> UserView:
    return UserView(
        id=user.id,
        username=user.username,
        email=user.email,
        role=user.role,
        created_at=datetime.fromtimestamp(user.created_at, UTC),
        disabled=user.disabled,
    )


def key_view(key: ApiKey) -> ApiKeyView:
    return ApiKeyView(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        created_at=datetime.fromtimestamp(key.created_at, UTC),
        user_id=key.user_id,
    )


def stage_of(job: JobRecord, live: Progress | None) -> str:
    status = job.status
    if status is JobStatus.RUNNING:
        return _LIVE_STAGE.get(live.stage, "encoding") if live else "downloading"
    if status in (JobStatus.QUEUED, JobStatus.HELD, JobStatus.PAUSED):
        return "queued"
    if status is JobStatus.REMOVED:
        return "completed" if job.output is not None else "cancelled"
    return status.value


def status_view(gw: Gateway, job: JobRecord) -> JobStatusView:
    live = gw.progress_of(job)
    return JobStatusView(
        id=job.id,
        status=job.status,
        stage=stage_of(job, live),
        progress=_progress(job, live),
        speed=live.speed if live else None,
        fps=live.fps if live else None,
        eta_seconds=live.eta if live else None,
        error=FailureView(code=job.error.code, reason=job.error.reason) if job.error else None,
    )


def _progress(job: JobRecord, live: Progress | None) -> float:
    if live is not None:
        return live.percent
    return 100.0 if job.output is not None else 0.0


def job_view(gw: Gateway, job: JobRecord, viewer_id: str) -> JobView:
    """The job as its owner sees it; others (moderators) see the source's credentials masked."""
    live = gw.progress_of(job)
    output = job.output
    return JobView(
        id=job.id,
        status=job.status,
        stage=stage_of(job, live),
        progress=_progress(job, live),
        speed=live.speed if live else None,
        fps=live.fps if live else None,
        eta_seconds=live.eta if live else None,
        source=job.source if viewer_id == job.owner else redact(job.source),
        preset=job.profile,
        filename=download_name(job),
        spec=job.spec or builtin(job.profile),
        priority=job.priority,
        output=OutputView(
            name=download_name(job),
            size=output.size,
            sha256=output.sha256,
            mime=output.mime,
            container=output.container,
            duration=output.duration,
            mode=output.mode,
        )
        if output
        else None,
        probe=job.probe,
        attempts=job.attempts,
        error=FailureView(code=job.error.code, reason=job.error.reason) if job.error else None,
        shared=job.shared,
        owner=job.owner,
        client=job.client,
        batch_id=job.batch or None,
        created_at=datetime.fromtimestamp(job.created_at, UTC),
        started_at=when(job.started_at),
        finished_at=when(job.finished_at),
        downloaded_at=when(job.downloaded_at),
        keep_until=when(job.keep_until),
    )
