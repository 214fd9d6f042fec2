"""No lost job events: a process that stores a job change and dies before publishing its event
leaves the change without its event. The scheduler sees every change through its job projection;
once a job has stayed at a revision for a little while, it checks that the event for that revision
is in the stream and publishes it if not (de-duplicated by its `Nats-Msg-Id` if it raced the
writer). It publishes through the record store, under the job's turn and only while the job is
still at that revision, so events stay in order per job: no later event of the job can exist yet.
"""

from __future__ import annotations

import time

import structlog
from nats.js.errors import NotFoundError

from shared.jobs.store import RecordStore, stored_event
from shared.messages import events
from shared.messages.records import JobRecord
from shared.nats.projection import Projection
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.scheduler")

# A revision this old (seconds) that has no event yet lost it.
SETTLE_SECONDS = 3.0
# Changes older than this were checked already, or predate this scheduler.
WINDOW_SECONDS = 600.0


class EventRepair:
    """Publishes the event of a job revision whose writer died before publishing it.

    Only what changed is looked at: the projection reports each change (each job when it loads),
    and a revision whose event this process published itself needs no check."""

    def __init__(self, store: RecordStore, jobs: Projection[JobRecord]) -> None:
        self.store = store
        self.js = store.js
        self.names = store.names
        self.jobs = jobs
        self._unchecked: set[str] = set()  # jobs whose latest revision has not been checked
        jobs.listen(self._changed)

    def _changed(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        if new is None:
            self._unchecked.discard(key)
        else:
            self._unchecked.add(key)

    async def run_once(self) -> int:
        """Check every settled, unchecked revision; returns how many events were re-published."""
        now = time.time()
        repaired = 0
        for job_id in list(self._unchecked):
            versioned = self.jobs.versioned(job_id)
            if versioned is None:
                self._unchecked.discard(job_id)
                continue
            job, revision = versioned.value, versioned.revision
            age = now - job.updated_at
            if age < SETTLE_SECONDS:
                continue  # looked at on a later sweep
            if age > WINDOW_SECONDS or self.store.announced(job_id, revision):
                self._unchecked.discard(job_id)
                continue
            try:
                missing = await self._missing(job, revision)
                if missing and await self.store.announce_current(job_id, revision):
                    repaired += 1
                    log.warning("event.repaired", job_id=job_id, revision=revision)
            except Exception as exc:
                log.debug("event.repair_failed", job_id=job_id, **describe(exc))
                continue
            now_at = self.jobs.versioned(job_id)
            if now_at is not None and now_at.revision == revision:
                self._unchecked.discard(job_id)  # not changed again meanwhile
        return repaired

    async def _missing(self, job: JobRecord, revision: int) -> bool:
        event = stored_event(job, revision)
        subject = self.names.job_event(job.id, events.kind_of(event))
        try:
            last = await self.js.get_last_msg(self.names.events_stream, subject)
        except NotFoundError:
            return True
        found = events.DECODER.decode(last.data or b"{}")
        return not isinstance(found, events.JobEvent) or found.revision < revision
