"""Event feeds: the gateway's one subscription to the events stream, fanned out to its SSE and
WebSocket subscribers.

One JetStream ordered consumer on `<ns>.evt.>` delivers every event stored after start-up, to a
callback: each event is decoded once (`visibility.py`, with the rules on who sees what) and the
events that arrive together are handed out together, as soon as the loop is free, with no wait
of its own: under load the batches grow, so a burst costs each subscriber one write, not one per
event. Who may see an event is decided by index (administrators, moderators, each owner's feeds),
never by testing every feed (`subscriber.py` delivers). Stored ranges (a replay after a
reconnect, a job's history) are read with a short-lived consumer that is deleted afterwards.
Live progress, which is not in the stream, reaches the same subscribers through `progress.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.gateway.feeds.subscriber import Subscriber, offer_all
from services.gateway.feeds.visibility import FeedFilter, StoredEvent, stored_event
from shared.messages.accounts import Role
from shared.nats.subjects import Names
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.gateway.feeds")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAGE = 256  # messages fetched per request when reading a stored range


class EventHub:
    """The events stream, read once per gateway and fanned out to feed subscribers."""

    def __init__(self, js: JetStreamContext, names: Names, *, queue_size: int) -> None:
        self.js = js
        self.names = names
        self.queue_size = queue_size
        self.last_seq = 0  # the stream sequence of the last event handed to subscribers
        self._received = 0  # the stream sequence of the last event received (handed out or pending)
        self._pending: list[StoredEvent] = []  # received, handed out at the next flush
        self._flush_soon: asyncio.Handle | None = None
        self._subscribers: set[Subscriber] = set()
        self._admins: set[Subscriber] = set()  # every event
        self._moderators: set[Subscriber] = set()  # every job's events
        self._by_owner: dict[str, set[Subscriber]] = {}  # their own jobs' events
        self._sub: JetStreamContext.PushSubscription | None = None

    def __len__(self) -> int:
        return len(self._subscribers)

    # ---- subscribers ---------------------------------------------------------------------
    def subscribe(self, wanted: FeedFilter) -> Subscriber:
        """A new subscriber; it receives events handed out from now on (after `last_seq`)."""
        sub = Subscriber(wanted, self.queue_size)
        self._subscribers.add(sub)
        if wanted.role is Role.ADMIN:
            self._admins.add(sub)
        elif wanted.all_jobs:
            self._moderators.add(sub)
        else:
            self._by_owner.setdefault(wanted.user_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber (its connection ended)."""
        self._subscribers.discard(sub)
        self._admins.discard(sub)
        self._moderators.discard(sub)
        owned = self._by_owner.get(sub.filter.user_id)
        if owned is not None:
            owned.discard(sub)
            if not owned:
                del self._by_owner[sub.filter.user_id]

    def watching(self, owner: str) -> tuple[Subscriber, ...]:
        """The subscribers that may see `owner`'s jobs: administrators, moderators, the owner's."""
        return (*self._admins, *self._moderators, *self._by_owner.get(owner, ()))

    def wants_progress(self) -> bool:
        """Whether any subscriber asked for live progress (`job.progress`)."""
        return any(sub.filter.progress for sub in self._subscribers)

    def close_all(self, reason: str) -> None:
        """Close every subscriber (the gateway stops; clients reconnect elsewhere)."""
        for sub in list(self._subscribers):
            sub.close(reason, error=False)

    def _hand_out(self, items: list[StoredEvent]) -> None:
        """Offer events, oldest first, to the subscribers that may see them."""
        now = asyncio.get_running_loop().time()
        offer_all(self._admins, items, now)
        jobs = [item for item in items if item.owner is not None]
        if not jobs:
            return
        offer_all(self._moderators, jobs, now)
        if not self._by_owner:
            return
        owners: dict[str, list[StoredEvent]] = {}
        for item in jobs:
            assert item.owner is not None
            owners.setdefault(item.owner, []).append(item)
        for owner, owned in owners.items():
            subscribers = self._by_owner.get(owner)
            if subscribers:
                offer_all(subscribers, owned, now)

    # ---- the live subscription -----------------------------------------------------------
    async def start(self) -> None:
        """Follow the events stream from its current end."""
        info = await self.js.stream_info(self.names.events_stream)
        self.last_seq = self._received = info.state.last_seq
        config = ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last_seq + 1
        )
        self._sub = await self.js.subscribe(
            self.names.events_all,
            stream=self.names.events_stream,
            cb=self._receive,
            ordered_consumer=True,
            config=config,
        )
        log.info("feeds.following", stream=self.names.events_stream, after=self.last_seq)

    async def stop(self) -> None:
        """Close every subscriber and stop following the stream."""
        self.close_all("the server is shutting down")
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._flush_soon is not None:
            self._flush_soon.cancel()
        self._sub = self._flush_soon = None
        log.info("feeds.stopped", last_seq=self.last_seq)

    async def _receive(self, msg: Msg) -> None:
        """Take one event from the live subscription; it is handed out with the others that
        arrived with it, once the subscription has nothing more at hand."""
        try:
            seq = msg.metadata.sequence.stream
            if seq <= self._received:  # seen already (the ordered consumer was re-created)
                return
            if seq > self._received + 1:
                self._flush()
                await self._fill_gap(seq)
            self._received = seq
            item = stored_event(seq, msg.data)
            if item is None:
                log.warning("feeds.undecodable", seq=seq, subject=msg.subject)
            else:
                self._pending.append(item)
            if self._flush_soon is None:
                self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)
        except Exception as exc:
            log.warning("feeds.event_failed", subject=msg.subject, **describe(exc))

    def _flush(self) -> None:
        """Hand out what was received since the last flush."""
        self._flush_soon = None
        items, self._pending = self._pending, []
        try:
            if items:
                self._hand_out(items)
        except Exception as exc:
            log.warning("feeds.hand_out_failed", **describe(exc))
        self.last_seq = self._received

    async def _fill_gap(self, seq: int) -> None:
        """Hand out what the live subscription skipped (dropped as a slow consumer)."""
        log.info("feeds.gap", after=self.last_seq, before=seq)
        async with contextlib.aclosing(self.read(after_seq=self.last_seq, upto=seq - 1)) as pages:
            async for page in pages:
                self._hand_out(page)
                self.last_seq = self._received = page[-1].seq
        self.last_seq = self._received = seq - 1

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
