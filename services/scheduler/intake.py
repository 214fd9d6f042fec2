"""Job intake: how a `SubmitJob` command becomes a job.

Faces decide what needs the caller (who it is, the body's shape, the outbound policy for the
source, that the caller's storage exists, which spec a preset name means) and publish the command;
acceptance is decided here, once for every face: the fleet's quality ceilings cap the spec, the
job's own webhook subscription (its `notify_url`) is stored, then the record is created.

Idempotent by construction: the record is written create-only under the job id the face chose
(derived from the caller's Idempotency-Key when one was sent), so a redelivered or repeated
submission finds the job and changes nothing.

Intake refuses nothing a caller could be told about: the ceilings lower a spec and never refuse
it, and every check whose answer is a 4xx needs the caller and stays with the face. A refusal
decided here would be stored as the job, `failed` with its reason, which every face already shows
(its status, its JSON); a face waits for the job to exist, never for a reply.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from nats.js import JetStreamContext

from shared.errors import VidmeshError
from shared.fleet import capped
from shared.jobs import state as jobstate
from shared.jobs.store import RecordStore
from shared.messages import commands as cmd
from shared.messages.fleet import TranscodingSettings
from shared.messages.records import JobRecord
from shared.messages.webhooks import SubscriptionScope, WebhookSubscription
from shared.nats.handler import retryable
from shared.nats.kv import Stale
from shared.nats.subjects import Names
from shared.nats.topology import describe, pending_submission
from shared.webhooks.store import WebhookStore
from shared.webhooks.subscriptions import job_subscription_id
from shared.wire import JobError

log = structlog.get_logger("vidmesh.scheduler")


class Intake:
    """Accepts submitted jobs: ceilings, spec, the `notify_url` subscription, the record.

    `fleet` gives the fleet's transcoding settings in force (the scheduler's projection of
    them, kept by a watch: a change is seen before a submission sent after it arrives)."""

    def __init__(
        self,
        js: JetStreamContext,
        names: Names,
        store: RecordStore,
        fleet: Callable[[], TranscodingSettings],
    ) -> None:
        self.js = js
        self.names = names
        self.store = store
        self.fleet = fleet
        self._webhooks: WebhookStore | None = None

    async def submit(self, command: cmd.SubmitJob) -> JobRecord | None:
        """Store the submitted job; None when it exists already (nothing is changed then).

        A submission is never dropped: what may pass (a KV outage) raises, and the consumer
        retries it until it is stored (its submissions are exempt from the attempt cap); a job
        that can never be accepted as asked is stored `failed` with the reason, so its caller,
        who was told it was accepted, sees it fail."""
        if await self._stored(command):
            log.info("job.submitted_again", job_id=command.job_id)
            return None
        try:
            job = jobstate.submitted_job(command, capped(command.spec, self.fleet()))
        except Exception as exc:
            if retryable(exc):
                raise
            job = refused(command, exc)
            log.error("job.refused", job_id=command.job_id, **describe(exc))
        if job.notify_url:
            # Stored first, so the notifier finds it for the job's first event.
            await self._subscribe(command)
        try:
            await self.store.create_job(job)
        except Stale:
            log.info("job.submitted_again", job_id=command.job_id)
            return None
        log.info("job.accepted", job_id=job.id, client=job.client, owner=job.owner)
        return job

    async def _stored(self, command: cmd.SubmitJob) -> bool:
        """Whether the job is stored already, as far as it matters before storing it: the
        record is written create-only, so a job the projection has not seen yet is found by
        that write; only a job with its own webhook subscription, stored before the record,
        is looked up in the bucket first (a repeat must not write it again)."""
        view = self.store.job_view
        if view is not None and view.get(command.job_id) is not None:
            return True
        if view is None or command.notify_url:
            return await self.store.jobs.get(command.job_id) is not None
        return False

    async def submit_pending(self, job_id: str) -> None:
        """Before a command acts on job `job_id`: if it is not stored yet but its submission waits
        in the commands stream (handled in another slot, or not yet), store it now, so the
        command finds it. A job with neither a record nor a submission is left as it is."""
        if self.store.job_view is not None and self.store.job_view.get(job_id) is not None:
            return
        if await self.store.jobs.get(job_id) is not None:
            return
        command = await pending_submission(self.js, self.names, job_id)
        if command is not None:
            log.info("job.submission_taken_ahead", job_id=job_id)
            await self.submit(command)

    async def _subscribe(self, command: cmd.SubmitJob) -> None:
        """The job's own webhook subscription, signed with the secret the face sealed."""
        if self._webhooks is None:
            self._webhooks = await WebhookStore.open(self.js, self.names)
        sub_id = job_subscription_id(command.job_id)
        subscription = WebhookSubscription(
            id=sub_id,
            scope=SubscriptionScope.JOB,
            owner=command.owner,
            job_id=command.job_id,
            url=command.notify_url,
            event_types=["*"],
            description=f"notify_url of job {command.job_id}",
            secret=command.notify_secret,
            created_at=command.at,
            updated_at=command.at,
        )
        await self._webhooks.subscriptions.put(sub_id, subscription)


def refused(command: cmd.SubmitJob, exc: Exception) -> JobRecord:
    """The job a submission asked for, failed at once: it cannot be accepted as it was asked."""
    reason = exc.message if isinstance(exc, VidmeshError) else str(exc) or type(exc).__name__
    job = jobstate.new_job(
        job_id=command.job_id,
        owner=command.owner,
        owner_name=command.owner_name,
        client=command.client,
        device_id=command.device_id,
        item_id=command.item_id,
        item=command.item,
        source=command.source,
        profile=command.profile,
        priority=command.priority,
        output_name=command.output_name,
        batch=command.batch,
        destination=command.destination,
        pool=command.pool,
        notify_url=command.notify_url,
        request_sha256=command.request_sha256,
        openencoder_id=command.openencoder_id,
        now=command.at,
    )
    error = JobError(
        code="submission_refused",
        reason=f"The job could not be accepted: {reason}",
        detail=type(exc).__name__,
    )
    return jobstate.fail(job, error, command.at)
