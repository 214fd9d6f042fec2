"""The statistics service: folds the event stream into totals that survive restarts, keeps the
task history (see `tasks.py`), and samples telemetry (see `telemetry.py`).

It reads every event once, in order, through one durable consumer; the totals record remembers
the last stream sequence it folded, so a redelivered event is never counted twice.
"""

from __future__ import annotations

import socket
import uuid

import msgspec
import structlog
from nats.aio.client import Client as NATS

from services.statistics.config import StatisticsSettings
from services.statistics.tasks import TaskHistory
from services.statistics.telemetry import Telemetry
from shared import cardinality
from shared.messages import events as ev
from shared.messages.records import Totals
from shared.nats.consumer import Consumer, Received
from shared.nats.in_order import open_in_order
from shared.nats.kv import TypedKV, Versioned
from shared.nats.lead import Lead
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology, retention_of
from shared.runtime import Service
from shared.tasks import all_ended

log = structlog.get_logger("vidmesh.statistics")

TOTALS_KEY = "totals"
# The key of the stats bucket whose holder folds the events (one replica at a time).
FOLD_LEAD_KEY = "fold-lead"
# Events folded together at most (one totals write for each batch).
BATCH = 256


def fold(totals: Totals, event: ev.Event, seq: int) -> Totals:
    """Totals after one more event (pure)."""
    changes: dict[str, object] = {"last_seq": seq}
    match event:
        case ev.JobAccepted(device_id=device):
            changes["jobs_accepted"] = totals.jobs_accepted + 1
            # the old record's list of ids moves into the bounded count with the first event
            changes["unique_devices"] = cardinality.add(
                totals.unique_devices, [*totals.devices, device]
            )
            changes["devices"] = []
        case ev.JobCompleted(shared=shared):
            changes["jobs_completed"] = totals.jobs_completed + 1
            if shared:
                changes["shared_hits"] = totals.shared_hits + 1
        case ev.JobFailed():
            changes["jobs_failed"] = totals.jobs_failed + 1
        case ev.JobCancelled():
            changes["jobs_cancelled"] = totals.jobs_cancelled + 1
        case ev.RenditionSucceeded(output=output):
            changes["renditions_succeeded"] = totals.renditions_succeeded + 1
            changes["bytes_produced"] = totals.bytes_produced + output.size
            changes["media_seconds"] = totals.media_seconds + (output.duration or 0.0)
        case ev.RenditionFailed():
            changes["renditions_failed"] = totals.renditions_failed + 1
        case _:
            pass
    return msgspec.structs.replace(totals, **changes)


class Statistics(Service):
    name = "statistics"

    def __init__(self, nc: NATS, settings: StatisticsSettings) -> None:
        super().__init__(grace=settings.stop_grace_seconds, deadline=settings.stop_deadline_seconds)
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self._telemetry: Telemetry | None = None
        self._tasks: TaskHistory | None = None
        # The totals as this process last stored them (its next write starts from them).
        self._known: Versioned[Totals] | None = None
        self._lead: Lead | None = None

    async def start(self) -> None:
        js = self.nc.jetstream()
        buckets = await ensure_topology(
            js,
            self.names,
            replicas=self.settings.replicas,
            retention=retention_of(self.settings),
        )
        self.totals = TypedKV(buckets.stats, Totals)
        self._telemetry = Telemetry(self.nc, self.names, buckets, self._read_totals)
        await self._telemetry.start()
        self._tasks = TaskHistory(self.nc, self.names, buckets)
        await self._tasks.start()
        consumer = Consumer.durable(
            self.names.events_stream,
            self.names.statistics_consumer,
            self.names.events_all,
            ev.DECODER,
            family="event",
            ack_wait=30.0,
            max_attempts=self.settings.message_attempts,
            skip_unknown=True,  # newer producers may add event types
        )
        # In stream order, a batch at a time, for the totals and the task history together (the
        # task history had a consumer of its own: this one starts where the later of the two
        # had got to, and folding an event again changes nothing).
        replaces = [self.names.task_history_consumer]
        # replicas fold one at a time (see `shared.nats.in_order`)
        self._lead = Lead(buckets.stats, FOLD_LEAD_KEY, f"{socket.gethostname()}-{uuid.uuid4()}")
        self._lead.start()
        loops = await open_in_order(
            consumer,
            js,
            "statistics.events",
            self._fold,
            batch=BATCH,
            replaces=replaces,
            lead=self._lead,
        )
        self.consume(loops)

    async def _fold(self, batch: list[Received[ev.AnyEvent]]) -> None:
        """Fold a batch of events (in stream order) into the totals and the task history."""
        assert self._tasks is not None
        # both have ended before the batch is settled (or handed back for another try)
        await all_ended(self._fold_totals(batch), self._tasks.fold(batch))

    async def _fold_totals(self, batch: list[Received[ev.AnyEvent]]) -> None:
        """Fold a batch of events into the totals, each once: the totals remember the last
        sequence folded."""

        def apply(current: Totals | None) -> Totals | None:
            totals = start = current or Totals()
            for received in batch:
                if received.seq > totals.last_seq:
                    totals = fold(totals, received.message, received.seq)
            return None if totals is start else totals

        known, self._known = self._known, None  # read again after a failure
        done = await self.totals.replace(TOTALS_KEY, apply, known=known)
        if done.record is not None and done.revision is not None:
            self._known = Versioned(done.record, done.revision)

    async def _read_totals(self) -> Totals:
        found = await self.totals.get(TOTALS_KEY)
        return found.value if found else Totals()

    async def stop(self) -> None:
        if self._lead is not None:
            await self._lead.stop()  # given back: another replica takes it at once
        if self._tasks is not None:
            await self._tasks.stop()
        if self._telemetry is not None:
            await self._telemetry.stop()
