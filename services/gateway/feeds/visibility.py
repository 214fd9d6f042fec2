"""Events as the feeds deliver them, and who may see which.

A stored event is decoded once and its SSE and WebSocket frames are encoded once
(`StoredEvent`), whoever receives them. A `FeedFilter` holds one caller's visibility rules (their
own jobs; every job for moderators; every event for administrators) and the jobs and event types
that caller asked to follow, live progress (`job.progress`) among them when named.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

import msgspec

from shared.errors import BadRequest
from shared.messages import events
from shared.messages.accounts import RANK, Role

EVENT_TYPES: frozenset[str] = frozenset(
    str(kind.__struct_config__.tag) for kind in get_args(events.AnyEvent)
)
"""Every event tag (`job.completed`, ...); a feed filters on these or on a family (`job.*`)."""
PROGRESS = "job.progress"
"""Live progress of running jobs: not an event of the stream, sent only to feeds that name it."""
# Event sequence numbers a client may send: JSON-safe integers.
MAX_SEQ = 1 << 53


_FAMILIES = frozenset(tag.split(".", 1)[0] for tag in EVENT_TYPES)
MAX_JOB_IDS = 100  # job ids one feed may filter on
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # also safe as a subject token


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored in the events stream, with its feed frames encoded once."""

    seq: int
    tag: str
    event: events.Event
    raw: bytes  # the stored JSON (fields newer than this gateway included)
    job_id: str | None  # job events only
    owner: str | None  # job events only: who owns the job
    sse: bytes
    ws: bytes


def stored_event(seq: int, data: bytes) -> StoredEvent | None:
    """Decode one stored event; None when it is not one this gateway knows."""
    try:
        event = events.DECODER.decode(data)
    except msgspec.DecodeError:
        return None
    raw = data.strip()
    if b"\n" in raw or b"\r" in raw:  # an SSE data line must be one line
        raw = msgspec.json.encode(msgspec.json.decode(raw))
    tag = str(type(event).__struct_config__.tag)
    job = event if isinstance(event, events.JobEvent) else None
    return StoredEvent(
        seq=seq,
        tag=tag,
        event=event,
        raw=raw,
        job_id=job.job_id if job else None,
        owner=job.owner if job else None,
        sse=b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, tag.encode(), raw),
        ws=b'{"type":"s2c_event","payload":{"seq":%d,"event":%s}}' % (seq, raw),
    )


@dataclass(frozen=True, slots=True)
class FeedFilter:
    """What one subscriber sees: job events of its own jobs (moderators: of every job), the
    other events only when it is an administrator; narrowed to some jobs and types if asked."""

    user_id: str
    role: Role
    job_ids: frozenset[str] = frozenset()
    types: frozenset[str] = frozenset()
    families: tuple[str, ...] = ()  # "job." for "job.*"

    @property
    def all_jobs(self) -> bool:
        """Whether this caller sees every job's events (moderators and administrators)."""
        return RANK[self.role] >= RANK[Role.MODERATOR]

    def sees(self, item: StoredEvent) -> bool:
        """Whether this caller may see `item` at all."""
        if item.owner is None:
            return self.role is Role.ADMIN
        return item.owner == self.user_id or self.all_jobs

    def wants(self, item: StoredEvent) -> bool:
        """Whether `item` is among the jobs and event types this caller asked for."""
        if self.job_ids and item.job_id not in self.job_ids:
            return False
        if self.types or self.families:
            return item.tag in self.types or item.tag.startswith(self.families)
        return True

    def matches(self, item: StoredEvent) -> bool:
        """Whether this caller may see `item` and asked for it."""
        return self.sees(item) and self.wants(item)

    @property
    def progress(self) -> bool:
        """Whether this caller asked for live progress (by name: no family includes it)."""
        return PROGRESS in self.types

    def wants_progress(self, job_id: str) -> bool:
        """Whether this caller asked for the live progress of job `job_id` (who may see the
        job is the hub's index)."""
        return PROGRESS in self.types and (not self.job_ids or job_id in self.job_ids)


def feed_filter(
    user_id: str, role: Role, *, job_ids: Iterable[str] = (), types: Iterable[str] = ()
) -> FeedFilter:
    """A filter for this caller; unknown event types are a 400 (they would match nothing)."""
    jobs = frozenset(j for j in (j.strip() for j in job_ids) if j)
    if len(jobs) > MAX_JOB_IDS:
        raise BadRequest(f"A feed follows at most {MAX_JOB_IDS} jobs.")
    for job_id in jobs:
        if not _JOB_ID.fullmatch(job_id):
            raise BadRequest(f"{job_id[:80]!r} is not a job id.")
    exact: set[str] = set()
    families: list[str] = []
    for kind in (t.strip() for t in types):
        if not kind:
            continue
        if kind.endswith(".*") and kind[:-2] in _FAMILIES:
            families.append(kind[:-1])
        elif kind in EVENT_TYPES or kind == PROGRESS:
            exact.add(kind)
        else:
            known = ", ".join(sorted(f"{family}.*" for family in _FAMILIES))
            raise BadRequest(
                f"Unknown event type {kind!r}: use a tag such as job.completed, or {known}, "
                f"or {PROGRESS}.",
                details={"types": sorted(EVENT_TYPES | {PROGRESS})},
            )
    return FeedFilter(
        user_id=user_id, role=role, job_ids=jobs, types=frozenset(exact), families=tuple(families)
    )
