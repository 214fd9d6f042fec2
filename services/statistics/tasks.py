"""The task history: the statistics service keeps the tasks bucket (`<ns>-tasks`), vidmesh's
background work as Odeion-style tasks (`shared.messages.tasks`; `shared.task_history` says how each
kind of work becomes a task).

Two feeds, each folded with compare-and-set writes that remember the last change folded, so a
change seen twice is folded once:
- the events stream, in order, a batch at a time, through the statistics service's consumer
  (`fold`): job events (transcodes), `probe.finished` and `cleanup.finished`;
- the deliveries bucket, through a watch: each change of a delivery record.

The history is a view: the gateway reads it, and clears its finished tasks; jobs and deliveries
are never changed from here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import structlog
from nats.aio.client import Client as NATS

from shared import task_history
from shared.messages import events as ev
from shared.messages.tasks import ClearedMark, TaskRecord, TaskType
from shared.messages.webhooks import Delivery
from shared.nats.consumer import Received
from shared.nats.kv import TypedKV, Versioned
from shared.nats.projection import Projection
from shared.nats.subjects import Names
from shared.nats.topology import Buckets, describe
from shared.recent import Recent
from shared.tasks import all_ended, stop_tasks

log = structlog.get_logger("vidmesh.statistics")

# Tasks whose last write this process remembers (its next write of one starts from it).
_REMEMBERED = 4096
# The news that opens a task.
_CREATES = (ev.JobAccepted, ev.ProbeFinished, ev.CleanupFinished)


class TaskHistory:
    """Folds the events stream and the deliveries bucket into the tasks bucket."""

    def __init__(self, nc: NATS, names: Names, buckets: Buckets) -> None:
        self.nc = nc
        self.names = names
        self.tasks = TypedKV(buckets.tasks, TaskRecord)
        self.marks = TypedKV(buckets.tasks, ClearedMark)
        self.deliveries = Projection(
            TypedKV(buckets.deliveries, Delivery), "task-history.deliveries", nc=nc
        )
        # Keys of the deliveries that changed, waiting to be folded.
        self._changed: asyncio.Queue[str] = asyncio.Queue()
        self._folder: asyncio.Task[None] | None = None
        self._written: Recent[str, Versioned[TaskRecord]] = Recent(_REMEMBERED)

    async def start(self) -> None:
        """Start following the deliveries (the events come through the statistics service's
        consumer, which hands each batch to `fold`)."""
        self.deliveries.listen(self._on_delivery)
        self._folder = asyncio.create_task(self._fold_deliveries(), name="task-history.deliveries")
        await self.deliveries.start()

    async def stop(self) -> None:
        await self.deliveries.stop()
        await stop_tasks([self._folder] if self._folder is not None else [])
        self._folder = None

    async def _mark(self) -> ClearedMark | None:
        found = await self.marks.get(task_history.CLEARED_KEY)
        return found.value if found else None

    async def fold(self, batch: list[Received[ev.AnyEvent]]) -> None:
        """Fold a batch of events (in stream order) into the tasks they are news of (most events
        are of no task): one write per task, the tasks written side by side."""
        news: dict[str, list[Received[ev.AnyEvent]]] = {}
        for received in batch:
            found = task_history.task_id_of(received.message)
            if found is not None:
                news.setdefault(task_history.key_of(found), []).append(received)
        if not news:
            return
        mark = await self._mark()

        def folding(
            items: list[Received[ev.AnyEvent]],
        ) -> Callable[[TaskRecord | None], TaskRecord | None]:
            def apply(current: TaskRecord | None) -> TaskRecord | None:
                task = current
                for received in items:
                    folded = task_history.fold_event(task, received.message, received.seq, mark)
                    if folded is not None:
                        task = folded
                return None if task is current else task

            return apply

        # every write has ended before the batch is settled (or handed back for another try)
        await all_ended(
            *(self._write(key, folding(items), items[0].message) for key, items in news.items())
        )

    async def _write(
        self, key: str, apply: Callable[[TaskRecord | None], TaskRecord | None], first: ev.Event
    ) -> None:
        """Store a task's change, starting from the task as this process last wrote it, or from
        none when its first news is what creates a task (a guess: compare-and-set checks it)."""
        known = self._written.pop(key, None)
        done = await self.tasks.replace(
            key, apply, known=known, absent=known is None and isinstance(first, _CREATES)
        )
        if done.record is not None and done.revision is not None:
            self._written.remember(key, Versioned(done.record, done.revision))

    def _on_delivery(self, key: str, old: Delivery | None, new: Delivery | None) -> None:
        if new is not None:
            self._changed.put_nowait(key)

    async def _fold_deliveries(self) -> None:
        """Fold each changed delivery into its task; a failed write is tried again shortly."""
        while True:
            key = await self._changed.get()
            try:
                await self._fold_delivery(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("task_history.delivery_failed", delivery_id=key, **describe(exc))
                with contextlib.suppress(asyncio.QueueFull):
                    self._changed.put_nowait(key)
                await asyncio.sleep(1.0)

    async def _fold_delivery(self, key: str) -> None:
        versioned = self.deliveries.versioned(key)
        if versioned is None:
            return  # deleted meanwhile: its task stays as it was
        mark = await self._mark()
        await self.tasks.change(
            task_history.key_of(task_history.task_id(TaskType.WEBHOOK_DELIVERY, key)),
            lambda current: task_history.fold_delivery(
                current, versioned.value, versioned.revision, mark
            ),
        )
