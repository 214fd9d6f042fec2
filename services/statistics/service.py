"""The statistics service: folds the event stream into totals that survive restarts, keeps the
task history (see `tasks.py`), and samples telemetry (see `telemetry.py`).

It reads every event once, in order, through one durable consumer; the totals record remembers
the last stream sequence it folded, so a redelivered event is never counted twice.
"""

from __future__ import annotations

import msgspec
import structlog
from nats.aio.client import Client as NATS

from services.statistics.config import StatisticsSettings
from services.statistics.tasks import TaskHistory
from services.statistics.telemetry import Telemetry
from shared import cardinality
from shared.messages import events as ev
from shared.messages.records import Totals
from shared.nats.consumer import ACK, Consumer, Received, Settle
from shared.nats.kv import TypedKV
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology, retention_of
from shared.runtime import Service

log = structlog.get_logger("vidmesh.statistics")

TOTALS_KEY = "totals"


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
        consumer = Consumer.durable(
            self.names.events_stream,
            self.names.statistics_consumer,
            self.names.events_all,
            ev.DECODER,
            family="event",
            ack_wait=30.0,
            # One at a time, in stream order: totals fold events sequentially.
            max_ack_pending=1,
            max_attempts=self.settings.message_attempts,
            skip_unknown=True,  # newer producers may add event types
        )
        self.consume(await consumer.open(js, "statistics.events", self._handle))
        self._tasks = TaskHistory(
            self.nc, self.names, buckets, max_attempts=self.settings.message_attempts
        )
        self.consume(await self._tasks.start())

    async def _handle(self, received: Received[ev.AnyEvent]) -> Settle:
        """Fold the event into the totals, once: the totals remember the last sequence folded."""
        event, seq = received.message, received.seq

        def apply(current: Totals | None) -> Totals | None:
            totals = current or Totals()
            if seq <= totals.last_seq:
                return None
            return fold(totals, event, seq)

        await self.totals.change(TOTALS_KEY, apply)
        return ACK

    async def _read_totals(self) -> Totals:
        found = await self.totals.get(TOTALS_KEY)
        return found.value if found else Totals()

    async def stop(self) -> None:
        if self._tasks is not None:
            await self._tasks.stop()
        if self._telemetry is not None:
            await self._telemetry.stop()
