"""Event feeds: the gateway's one subscription to the events stream, fanned out to its SSE and
WebSocket subscribers.

One JetStream ordered consumer on `<ns>.evt.>` delivers every event stored after start-up. Each
event is decoded once and its frames encoded once (`visibility.py`, with the rules on who sees
what). Every subscriber has a filter and a bounded queue; one that would overflow is closed with its
reason, so a slow client never holds up the others nor grows memory. Stored ranges (a replay after a
reconnect, a job's history) are read with a short-lived consumer that is deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.gateway.feeds.visibility import FeedFilter, StoredEvent, stored_event
from shared.messages.accounts import Role
from shared.nats.subjects import Names
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.gateway.feeds")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAGE = 256  # messages fetched per request when reading a stored range


class FeedClosed(Exception):
    """The hub closed a subscriber: it fell too far behind (`error`), its caller is no longer
    allowed (`unauthorized`), or the gateway stops."""

    def __init__(self, reason: str, *, error: bool, unauthorized: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error
        self.unauthorized = unauthorized


class Subscriber:
    """One feed connection's place in the hub: its filter and its bounded queue."""

    def __init__(self, wanted: FeedFilter, limit: int) -> None:
        self.filter = wanted
        self.limit = limit
        self.closed: FeedClosed | None = None
        self.on_close: Callable[[], object] | None = None
        self._queue: deque[StoredEvent] = deque()
        self._ready = asyncio.Event()

    def offer(self, item: StoredEvent) -> None:
        """Queue an event the subscriber wants; close it instead of letting the queue grow."""
        if self.closed is not None or not self.filter.wants(item):
            return
        if len(self._queue) >= self.limit:
            self.close(f"too slow: more than {self.limit} events were waiting for this client")
            return
        self._queue.append(item)
        self._ready.set()

    def close(self, reason: str, *, error: bool = True, unauthorized: bool = False) -> None:
        """Close with `reason`, dropping what is queued; a second close changes nothing."""
        if self.closed is not None:
            return
        self.closed = FeedClosed(reason, error=error, unauthorized=unauthorized)
        self._queue.clear()
        self._ready.set()
        if self.on_close is not None:
            self.on_close()

    async def next_batch(self, idle: float) -> list[StoredEvent]:
        """Every queued event, waiting for one at most `idle` seconds (then []); raises
        `FeedClosed` once the subscriber is closed."""
        if not self._queue and self.closed is None:
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self._ready.wait()
        if self.closed is not None:
            closed = self.closed
            raise FeedClosed(closed.reason, error=closed.error, unauthorized=closed.unauthorized)
        batch = list(self._queue)
        self._queue.clear()
        return batch


class EventHub:
    """The events stream, read once per gateway and fanned out to feed subscribers."""

    def __init__(self, js: JetStreamContext, names: Names, *, queue_size: int) -> None:
        self.js = js
        self.names = names
        self.queue_size = queue_size
        self.last_seq = 0  # the stream sequence of the last event handed to subscribers
        self._subscribers: set[Subscriber] = set()
        self._by_owner: dict[str, set[Subscriber]] = {}
        self._all_jobs: set[Subscriber] = set()
        self._admins: set[Subscriber] = set()
        self._sub: JetStreamContext.PushSubscription | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._subscribers)

    # ---- subscribers ---------------------------------------------------------------------
    def subscribe(self, wanted: FeedFilter) -> Subscriber:
        """A new subscriber; it receives events handed out from now on (after `last_seq`)."""
        sub = Subscriber(wanted, self.queue_size)
        self._subscribers.add(sub)
        if wanted.all_jobs:
            self._all_jobs.add(sub)
        else:
            self._by_owner.setdefault(wanted.user_id, set()).add(sub)
        if wanted.role is Role.ADMIN:
            self._admins.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (its connection ended)."""
        self._subscribers.discard(sub)
        self._all_jobs.discard(sub)
        self._admins.discard(sub)
        owned = self._by_owner.get(sub.filter.user_id)
        if owned is not None:
            owned.discard(sub)
            if not owned:
                del self._by_owner[sub.filter.user_id]

    def close_all(self, reason: str) -> None:
        """Close every subscriber (the gateway stops; clients reconnect elsewhere)."""
        for sub in list(self._subscribers):
            sub.close(reason, error=False)

    def _hand_out(self, item: StoredEvent) -> None:
        if item.owner is None:
            for sub in self._admins:
                sub.offer(item)
            return
        for sub in self._by_owner.get(item.owner, ()):
            sub.offer(item)
        for sub in self._all_jobs:
            sub.offer(item)

    # ---- the live subscription -----------------------------------------------------------
    async def start(self) -> None:
        """Follow the events stream from its current end."""
        info = await self.js.stream_info(self.names.events_stream)
        self.last_seq = info.state.last_seq
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last_seq + 1
        )
        self._sub = await self.js.subscribe(
            self.names.events_all,
            stream=self.names.events_stream,
            ordered_consumer=True,
            config=config,
        )
        self._task = asyncio.create_task(self._follow(self._sub), name="feeds:hub")
        log.info("feeds.following", stream=self.names.events_stream, after=self.last_seq)

    async def stop(self) -> None:
        """Close every subscriber and stop following the stream."""
        self.close_all("the server is shutting down")
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._sub = self._task = None

    async def _follow(self, sub: JetStreamContext.PushSubscription) -> None:
        async for msg in sub.messages:
            try:
                await self._take(msg)
            except Exception as exc:
                log.warning("feeds.event_failed", subject=msg.subject, **describe(exc))
        log.info("feeds.stopped", last_seq=self.last_seq)

    async def _take(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= self.last_seq:  # seen already (the ordered consumer was re-created)
            return
        if seq > self.last_seq + 1:
            await self._fill_gap(seq)
        item = stored_event(seq, msg.data)
        if item is None:
            log.warning("feeds.undecodable", seq=seq, subject=msg.subject)
        else:
            self._hand_out(item)
        self.last_seq = seq
        # Let every feed take the event before the next one: a burst is no backlog.
        await asyncio.sleep(0)

    async def _fill_gap(self, seq: int) -> None:
        """Hand out what the live subscription skipped (dropped as a slow consumer)."""
        log.info("feeds.gap", after=self.last_seq, before=seq)
        async with contextlib.aclosing(self.read(after_seq=self.last_seq, upto=seq - 1)) as pages:
            async for page in pages:
                for item in page:
                    self._hand_out(item)
                    self.last_seq = item.seq

    # ---- stored ranges -------------------------------------------------------------------
    async def stream_last_seq(self) -> int:
        """The sequence of the last event stored (this hub may not have handed it out yet)."""
        info = await self.js.stream_info(self.names.events_stream)
        return int(info.state.last_seq)

    async def read(
        self,
        *,
        subjects: list[str] | None = None,
        after_seq: int = 0,
        since: datetime | None = None,
        upto: int | None = None,
        limit: int | None = None,
    ) -> AsyncGenerator[list[StoredEvent], None]:
        """Stored events after `after_seq` (and stored from `since`), oldest first, in pages;
        stops at sequence `upto`, after `limit` events, or at the end of the stream."""
        if since is not None:
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            if since > datetime.now(UTC):  # nothing yet (and NATS reads years past 2262 as 1677)
                return
            if since <= _EPOCH:
                since = None
        stream = self.names.events_stream
        filters = subjects or [self.names.events_all]
        by_time = since is not None
        start = DeliverPolicy.BY_START_TIME if by_time else DeliverPolicy.BY_START_SEQUENCE
        config = ConsumerConfig(
            name=f"feed-read-{uuid.uuid4().hex}",
            ack_policy=AckPolicy.NONE,
            deliver_policy=start,
            opt_start_time=since,
            opt_start_seq=None if by_time else after_seq + 1,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            inactive_threshold=60.0,
            mem_storage=True,
            num_replicas=1,
        )
        assert config.name is not None
        info = await self.js.add_consumer(stream, config)
        pending = info.num_pending or 0
        taken = 0
        pull = await self.js.pull_subscribe_bind(consumer=config.name, stream=stream)
        try:
            while pending > 0 and (limit is None or taken < limit):
                try:
                    msgs = await pull.fetch(min(pending, _PAGE), timeout=5.0)
                except TimeoutError:  # the rest was deleted meanwhile (retention)
                    return
                page: list[StoredEvent] = []
                for msg in msgs:
                    meta = msg.metadata
                    pending = meta.num_pending
                    seq = meta.sequence.stream
                    if upto is not None and seq > upto:
                        pending = 0
                        break
                    item = stored_event(seq, msg.data) if seq > after_seq else None
                    if item is not None:
                        page.append(item)
                        taken += 1
                        if limit is not None and taken >= limit:
                            break
                if page:
                    yield page
        finally:
            with contextlib.suppress(Exception):
                await pull.unsubscribe()
            with contextlib.suppress(Exception):
                await self.js.delete_consumer(stream, config.name)

    async def history(
        self, job_id: str, *, after_seq: int = 0, since: datetime | None = None, limit: int
    ) -> list[StoredEvent]:
        """A job's stored events, oldest first (at most `limit`)."""
        found: list[StoredEvent] = []
        subjects = [self.names.job_event(job_id, "*")]
        reader = self.read(subjects=subjects, after_seq=after_seq, since=since, limit=limit)
        async with contextlib.aclosing(reader) as pages:
            async for page in pages:
                found += page
        return found

    def replay_subjects(self, wanted: FeedFilter) -> list[str] | None:
        """Subject filters that cover what `wanted` may match (None: the whole stream)."""
        if wanted.job_ids:
            return [self.names.job_event(job_id, "*") for job_id in sorted(wanted.job_ids)]
        if wanted.role is not Role.ADMIN:
            return [self.names.job_event("*", "*")]
        return None
