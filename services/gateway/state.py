"""What every face of the gateway shares: projections to read, a way to publish commands and see
their effect, the blob store to serve from, and who the caller is."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import structlog
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.gateway.config import GatewaySettings
from services.gateway.feeds.hub import EventHub
from services.gateway.identity import Identity
from services.gateway.jellyfin import JellyfinAuth
from services.gateway.kube import Cluster
from services.gateway.login_limits import LoginLimits
from shared.blobs.users import Stores, UserStore
from shared.errors import GatewayTimeout, Unavailable, Unprocessable
from shared.fleet import SETTINGS_KEY, Fleet, capped
from shared.jobs import state as jobstate
from shared.media.presets import builtin
from shared.media.probe import ProbeResult, StreamInfo
from shared.messages import commands as cmd
from shared.messages import events, rpc
from shared.messages.accounts import Batch, PresetRecord
from shared.messages.fleet import TranscodingSettings
from shared.messages.records import (
    JobRecord,
    JobStatus,
    Output,
    Progress,
    StorageSummary,
    Totals,
)
from shared.nats.kv import ReadOnlyKV, TypedKV
from shared.nats.packed import Packing
from shared.nats.projection import KeyFn, Projection
from shared.nats.subjects import Names
from shared.nats.topology import (
    announce,
    pending_submission,
    publish_command,
)
from shared.outbound import OutboundRefused
from shared.settings import LiveSettings
from shared.wire import JobError

log = structlog.get_logger("vidmesh.gateway")

# The 503 every NATS outage answers (the Streamyfin face words its own).
NATS_UNREACHABLE = "The job queue (NATS) is not reachable right now."

# The job projection's indexes: each list a face answers reads the jobs under one key of one of
# them, so its cost grows with its answer, never with every job held.
BY_OWNER = "owner"  # user id
BY_DEVICE = "device"  # (Streamyfin deviceId, status): a device's list skips statuses it hides
BY_STATUS = "status"  # JobStatus
BY_CLIENT = "client"  # the face that took the job (its counts summarise all jobs)
BY_BATCH = "batch"  # batch id, for jobs in one
BY_RENDITION = "rendition"  # rendition id, for jobs given one (who else holds an output)
BY_OPENENCODER_ID = "openencoder_id"  # the OpenEncoder face's integer id, for jobs it took

JOB_INDEXES: dict[str, KeyFn[JobRecord]] = {
    BY_OWNER: lambda job: (job.owner,),
    BY_DEVICE: lambda job: ((job.device_id, job.status),) if job.device_id else (),
    BY_STATUS: lambda job: (job.status,),
    BY_CLIENT: lambda job: (job.client,),
    BY_BATCH: lambda job: (job.batch,) if job.batch else (),
    BY_RENDITION: lambda job: (job.rendition,) if job.rendition else (),
    BY_OPENENCODER_ID: lambda job: () if job.openencoder_id is None else (job.openencoder_id,),
}

# The statuses of the jobs that may hold their output (`jobstate.holds_output` decides which do).
MAY_HOLD_OUTPUT = (JobStatus.COMPLETED, JobStatus.REMOVED)


def job_projection(store: TypedKV[JobRecord], nc: NATS | None = None) -> Projection[JobRecord]:
    """The gateway's copy of the job records, with `JOB_INDEXES` kept exact; every job kept is
    held, so they are held packed (about 0.4 KiB each, not 4 decoded)."""
    packing = Packing(JobRecord, _job_shapes())
    return Projection(store, "gateway.jobs", nc=nc, indexes=JOB_INDEXES, packing=packing)


def _job_shapes() -> list[JobRecord]:
    """A job of each shape a record takes (queued; completed with its probe and output, then
    removed; failed; cancelled; from another face, in a batch): what job records are packed
    against. Their values are stand-ins; only their names and shapes matter."""
    queued = jobstate.new_job(
        job_id="00000000-0000-4000-8000-000000000000",
        owner="0" * 32,
        owner_name="user",
        device_id="device",
        item_id="0" * 32,
        item={
            "Id": "0" * 32,
            "Name": "Name",
            "Type": "Episode",
            "SeriesName": "Series",
            "SeasonName": "Season 1",
            "IndexNumber": 1,
            "ParentIndexNumber": 1,
            "ProductionYear": 2000,
            "RunTimeTicks": 10_000_000,
        },
        source="https://jellyfin.example/Videos/0/stream.mkv?static=true&api_key=0",
        spec=builtin("optimized"),
        duration_hint=1.0,
        now=1.0,
    )
    rendition = jobstate.new_rendition("0" * 40, queued, 1.0)
    running = jobstate.start(jobstate.attach(queued, rendition, 1.0, shared=False), rendition, 1.0)
    streams = [
        StreamInfo(
            index=0,
            kind="video",
            codec="h264",
            profile="High",
            width=1920,
            height=1080,
            pix_fmt="yuv420p",
            frame_rate=23.976,
            default=True,
        ),
        StreamInfo(
            index=1, kind="audio", codec="aac", channels=2, sample_rate=48000, language="eng"
        ),
        StreamInfo(index=2, kind="subtitle", codec="subrip", language="eng"),
    ]
    probe = ProbeResult(
        container="matroska,webm", duration=1.0, bit_rate=1, size=1, streams=streams
    )
    output = Output(
        blob="outputs/0.mp4",
        size=1,
        sha256="0" * 64,
        container="mp4",
        mime="video/mp4",
        duration=1.0,
        video="h264",
        audio="aac",
    )
    completed = jobstate.complete(running, output, 1.0, 1.0, 1, probe)
    error = JobError(code="source_unreadable", reason="The source could not be read.")
    return [
        jobstate.new_job(
            job_id="0",
            owner="0",
            source="/media/0.mkv",
            client="api",
            batch="0",
            paused=True,
            now=1.0,
        ),
        jobstate.cancel(queued, 1.0),
        jobstate.fail(running, error, 1.0),
        completed,
        jobstate.release(completed, remove_file_now=False, keep_seconds=1.0, now=1.0),
    ]


@dataclass(slots=True)
class Gateway:
    """The gateway's shared pieces (one per application)."""

    settings: GatewaySettings
    names: Names
    nc: NATS
    js: JetStreamContext
    job_records: ReadOnlyKV[JobRecord]  # the scheduler writes jobs; the gateway only reads
    jobs: Projection[JobRecord]
    progress: Projection[Progress]
    totals: TypedKV[Totals]
    storage: TypedKV[StorageSummary]
    stores: Stores
    userstores: TypedKV[UserStore]
    auth: JellyfinAuth
    identity: Identity
    presets: Projection[PresetRecord]
    batches: Projection[Batch]
    fleet: Fleet
    fleet_settings: Projection[TranscodingSettings]  # the quality ceilings new jobs are capped to
    feeds: EventHub  # live events for the SSE and WebSocket feeds
    login_limits: LoginLimits  # failed sign-ins per username and client address
    server: LiveSettings  # the server settings groups in force (kill switches, base URL, paths)
    cluster: Cluster | None = None  # the Kubernetes API, when running in a cluster
    started_at: float = field(default_factory=time.time)

    def transcoding(self) -> TranscodingSettings:
        """The fleet's transcoding settings in force (the quality ceilings among them)."""
        return self.fleet_settings.get(SETTINGS_KEY) or TranscodingSettings()

    async def job(self, job_id: str) -> JobRecord | None:
        """A job by id: from memory, or from KV when this replica has not seen it yet, or as its
        submission asks for it while the scheduler has not stored it yet."""
        found = self.jobs.get(job_id)
        if found is not None:
            return found
        if not _plausible_id(job_id):
            return None
        versioned = await self.job_records.get(job_id)
        if versioned is None:
            submitted = await self._submitted(job_id)
            if submitted is not None:
                return submitted
            # stored (and its command acknowledged) between the two reads?
            versioned = await self.job_records.get(job_id)
            if versioned is None:
                return None
        self.jobs.apply(job_id, versioned.value, versioned.revision)
        return versioned.value

    async def _submitted(self, job_id: str) -> JobRecord | None:
        """A job submitted but not stored yet (the scheduler is busy or down), as its command,
        still waiting in the commands stream, asks for it; None when there is no such command."""
        try:
            command = await pending_submission(self.js, self.names, job_id)
        except Exception as exc:
            raise Unavailable(NATS_UNREACHABLE) from exc
        if command is None:
            return None
        # within the fleet's ceilings, as the scheduler will store it (and as `show_submitted`
        # shows it once the accepting gateway's notice arrives)
        return jobstate.submitted_job(command, capped(command.spec, self.transcoding()))

    def progress_of(self, job: JobRecord) -> Progress | None:
        """Live progress of a running job's rendition (this generation only)."""
        if job.status is not JobStatus.RUNNING or job.rendition is None:
            return None
        live = self.progress.get(job.rendition)
        if live is None or live.generation != job.generation:
            return None
        return live

    async def command(
        self,
        command: cmd.Command,
        *,
        job_id: str | None = None,
        until: Callable[[JobRecord | None], bool] | None = None,
    ) -> bool:
        """Publish a command; with `until`, wait (bounded) to see its effect on the job.

        Returns whether the effect was seen in time; the command stands either way.
        """
        try:
            await publish_command(self.js, self.names, command)
        except Exception as exc:
            raise Unavailable(NATS_UNREACHABLE) from exc
        if job_id is None or until is None:
            return True
        if self.jobs.get(job_id) is None:
            # Submitted, not stored yet: the scheduler stores it before it acts on this command,
            # so the effect shows on a stored job (absent is not yet, not deleted).
            stored = until
            return await self.jobs.wait_for(
                job_id, lambda job: job is not None and stored(job), self.settings.command_timeout
            )
        return await self.jobs.wait_for(job_id, until, self.settings.command_timeout)

    async def emit(self, event: events.Event) -> None:
        """Publish an event of a change the gateway stored (a pool, a webhook subscription),
        retrying briefly; a failure is logged, never raised: the change is stored already."""
        await announce(self.js, self.names, event)

    async def probe(self, source: str, owner: str) -> ProbeResult:
        """The source as a transcoder probes it (core NATS request to any transcoder): 504 when
        the probe does not finish in time, 503 when no transcoder can take it, 422 when the
        source is not media it can read."""
        timeout = self.settings.metadata_timeout
        # The transcoder gives up a little before this wait ends, so its answer says why
        asked = rpc.ProbeRequest(source=source, owner=owner, timeout=max(1.0, timeout - 1.0))
        payload = rpc.ENCODER.encode(asked)
        try:
            reply = await self.nc.request(self.names.probe_rpc, payload, timeout=timeout)
        except TimeoutError as exc:  # nats.errors.TimeoutError is one
            raise GatewayTimeout(
                f"Probing the source did not finish within {timeout:g} seconds."
            ) from exc
        except Exception as exc:
            raise Unavailable("No transcoder answered the probe request.") from exc
        answer = rpc.PROBE_REPLY.decode(reply.data)
        if answer.code == "source_refused":
            raise OutboundRefused(answer.error)
        if answer.code == "timed_out":
            raise GatewayTimeout("Probing the source timed out: the source did not answer in time.")
        if answer.probe is None:
            raise Unprocessable(answer.error or "The source could not be probed.")
        return answer.probe

    async def clear_cache(self, by: str, *, owner: str, admin: bool) -> events.BlobsDeleted | None:
        """Ask for `owner`'s finished outputs to go (an administrator's clear: every one); wait
        (bounded) for the storage service's report."""
        request_id = uuid.uuid4().hex
        subject = self.names.storage_event("blobs_deleted")
        done: asyncio.Future[events.BlobsDeleted] = asyncio.get_running_loop().create_future()

        async def on_event(msg: object) -> None:
            try:
                event = events.DECODER.decode(msg.data)  # type: ignore[attr-defined]
            except msgspec.DecodeError:
                return
            if (
                isinstance(event, events.BlobsDeleted)
                and event.request_id == request_id
                and not done.done()
            ):
                done.set_result(event)

        sub = await self.nc.subscribe(subject, cb=on_event)
        try:
            command = cmd.ClearCache(
                command_id=request_id, by=by, at=time.time(), owner=owner, admin=admin
            )
            await self.command(command)
            return await asyncio.wait_for(done, self.settings.command_timeout * 2)
        except TimeoutError:
            return None
        finally:
            await sub.unsubscribe()


_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def moved_from(job: JobRecord) -> Callable[[JobRecord | None], bool]:
    """An `until` for `Gateway.command`: whether a command's effect shows (the job changed
    status or was updated, or is gone)."""
    before = (job.status, job.updated_at)
    return lambda j: j is None or (j.status, j.updated_at) != before


def _plausible_id(job_id: str) -> bool:
    """Whether `job_id` could be a KV key at all (others are simply not found)."""
    return bool(_ID.match(job_id))


GATEWAY = web.AppKey("gateway", Gateway)


def gateway(request: web.Request) -> Gateway:
    return request.app[GATEWAY]
