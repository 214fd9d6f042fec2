"""The scheduler's in-memory view: jobs, renditions, the parts of split renditions and leases, with
the indexes its decisions need.

Decisions (`services.scheduler.decide`) read only this: projections of the buckets kept current by
their watches, what the share checks answered, and the fleet's pools and settings. Nothing here
writes to NATS; the view changes as the projections do.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

from shared.fleet import SETTINGS_KEY
from shared.jobs import state as jobstate
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import JobRecord, JobStatus, Lease, Part, Rendition, RenditionState
from shared.nats.leases import holder, pool_of, slot_of
from shared.nats.projection import Projection

# The only face whose jobs come from devices (MAX_CACHED_PER_USER is its concept).
DEVICE_CLIENT = "streamyfin"

# Whose work a rendition is, for taking turns: a Streamyfin device, or a native API user (whose
# jobs have no device: counted as one, every native user would wait behind the busiest).
Client = tuple[str, str]
NO_CLIENT: Client = ("", "")


def device_limited(job: JobRecord) -> bool:
    """Whether the per-device cache limit applies: Streamyfin jobs only, never native ones."""
    return job.client == DEVICE_CLIENT


def admitted(job: JobRecord) -> bool:
    """A job that counts toward its user's active limit: attached and waiting, or running."""
    return (job.status is JobStatus.QUEUED and job.rendition is not None) or (
        job.status is JobStatus.RUNNING
    )


def waiting(job: JobRecord) -> bool:
    """A queued job not admitted yet (no rendition): the user's limit may be holding it."""
    return job.status is JobStatus.QUEUED and job.rendition is None


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Hashable)


def index_add(index: dict[K, set[M]], key: K, member: M) -> None:
    """Add `member` under `key`."""
    index.setdefault(key, set()).add(member)


def index_discard(index: dict[K, set[M]], key: K, member: M) -> None:
    """Remove `member` from under `key`, and the key once nothing is left under it: an index
    keeps only keys that hold something, or it would grow with every rendition, device and
    owner ever seen."""
    members = index.get(key)
    if members is None:
        return
    members.discard(member)
    if not members:
        del index[key]


def client_of(r: Rendition) -> Client:
    """The device the rendition was first asked for from, or else its owner."""
    return ("device", r.first_device) if r.first_device else ("owner", r.owner)


class ShareAnswers:
    """What the share checks (`services.scheduler.sharing`) know, per waiting job: whether a
    check is out, and the answer of one that came back (the rendition key it was asked about,
    and whether the job's own URL may read the media)."""

    def __init__(self) -> None:
        self.pending: set[str] = set()
        self.answers: dict[str, tuple[str, bool]] = {}

    def answer(self, job_id: str) -> tuple[str, bool] | None:
        return self.answers.get(job_id)


class View:
    """Projections of the buckets, indexed by rendition, by device and by owner; the parts of
    split renditions by rendition and, the pending ones, by pool."""

    def __init__(
        self,
        jobs: Projection[JobRecord],
        renditions: Projection[Rendition],
        shares: ShareAnswers | None = None,
        parts: Projection[Part] | None = None,
    ) -> None:
        self.jobs = jobs
        self.renditions = renditions
        self.parts = parts
        self.shares = shares or ShareAnswers()
        self.leases: LeaseView | None = None  # set once the leases are loaded
        # Each index holds only keys with something under them (see `index_discard`).
        self._by_rendition: dict[str, set[str]] = {}
        self._by_device: dict[str, set[str]] = {}
        self._admitted: dict[str, set[str]] = {}
        self._waiting: dict[str, set[str]] = {}
        self._waiting_sorted: dict[str, list[JobRecord]] = {}
        self._pending: dict[str, set[str]] = {}
        self._pending_manual: dict[str, set[str]] = {}  # started by hand: they take no slot
        self._parts_of: dict[str, set[str]] = {}  # rendition -> its parts' keys, every generation
        self._pending_parts: dict[str, set[str]] = {}  # pool -> pending parts' keys
        jobs.listen(self._index)
        renditions.listen(self._index_rendition)
        for key, job in jobs.items():
            self._index(key, None, job)
        for key, r in renditions.items():
            self._index_rendition(key, None, r)
        if parts is not None:
            parts.listen(self._index_part)
            for key, p in parts.items():
                self._index_part(key, None, p)

    def _index(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        if old is not None:
            if old.rendition:
                index_discard(self._by_rendition, old.rendition, key)
            index_discard(self._by_device, old.device_id, key)
            index_discard(self._admitted, old.owner, key)
            index_discard(self._waiting, old.owner, key)
            self._waiting_sorted.pop(old.owner, None)
        if new is not None:
            if new.rendition:
                index_add(self._by_rendition, new.rendition, key)
            if device_limited(new):
                index_add(self._by_device, new.device_id, key)
            if admitted(new):
                index_add(self._admitted, new.owner, key)
            elif waiting(new):
                index_add(self._waiting, new.owner, key)
            self._waiting_sorted.pop(new.owner, None)

    def _index_rendition(self, key: str, old: Rendition | None, new: Rendition | None) -> None:
        if old is not None:
            index_discard(self._pending, old.pool, key)
            index_discard(self._pending_manual, old.pool, key)
        if new is not None and new.state is RenditionState.PENDING:
            index_add(self._pending, new.pool, key)
            if new.manual:
                index_add(self._pending_manual, new.pool, key)

    def _index_part(self, key: str, old: Part | None, new: Part | None) -> None:
        if old is not None:
            index_discard(self._parts_of, old.rendition, key)
            index_discard(self._pending_parts, old.pool, key)
        if new is not None:
            index_add(self._parts_of, new.rendition, key)
            if new.state is RenditionState.PENDING:
                index_add(self._pending_parts, new.pool, key)

    def pending_pools(self) -> set[str]:
        """Pools with a pending rendition or a pending part."""
        return set(self._pending) | set(self._pending_parts)

    def renditions_with_parts(self) -> set[str]:
        """The keys of renditions (gone ones too) that have parts in the bucket."""
        return set(self._parts_of)

    def all_parts_of(self, key: str) -> list[Part]:
        """The parts of the rendition `key` of every generation still in the bucket."""
        if self.parts is None:
            return []
        found = (self.parts.get(part) for part in self._parts_of.get(key, ()))
        return [p for p in found if p is not None]

    def parts_of(self, r: Rendition) -> list[Part]:
        """The parts of this generation of the rendition."""
        return [p for p in self.all_parts_of(r.key) if p.generation == r.generation]

    def pending_parts_in(self, pool: str) -> list[tuple[Rendition, Part]]:
        """The pool's parts that wait for a lease, with their rendition: pending parts of a
        rendition running split at their generation; the join only once every other part is
        stored (`ready_to_join`)."""
        if self.parts is None:
            return []
        found: list[tuple[Rendition, Part]] = []
        for key in self._pending_parts.get(pool, ()):
            p = self.parts.get(key)
            r = self.renditions.get(p.rendition) if p is not None else None
            if p is None or r is None or not jobstate.split_live(r, p.generation):
                continue
            assert r.split is not None
            if p.kind == "join" and not jobstate.ready_to_join(r.split, self.parts_of(r)):
                continue
            found.append((r, p))
        return found

    def pending_in(self, pool: str) -> list[Rendition]:
        """The pool's pending renditions (waiting for a lease)."""
        found = (self.renditions.get(key) for key in self._pending.get(pool, ()))
        return [r for r in found if r is not None]

    def pending_taking_no_slot(self, pool: str, leased: Iterable[str]) -> list[Rendition]:
        """The pool's pending renditions that need no free slot: started by hand, or among
        `leased` (leased already, their work not published yet); found without looking at the
        rest of the queue."""
        pending = self._pending.get(pool, set())
        keys = self._pending_manual.get(pool, set()) | {key for key in leased if key in pending}
        found = (self.renditions.get(key) for key in keys)
        return [r for r in found if r is not None]

    def jobs_of_rendition(self, key: str) -> list[JobRecord]:
        found = (self.jobs.get(job_id) for job_id in self._by_rendition.get(key, ()))
        return [job for job in found if job is not None]

    def followers(self, r: Rendition) -> list[JobRecord]:
        """Active jobs attached to this generation of the rendition."""
        return [job for job in self.jobs_of_rendition(r.key) if jobstate.follows(job, r)]

    def left_by_all(self, r: Rendition) -> bool:
        """Whether jobs followed this generation of the rendition and every one has ended
        (cancelled by its client): nobody is about to attach to it, it is unwanted now."""
        jobs = [job for job in self.jobs_of_rendition(r.key) if job.generation == r.generation]
        return bool(jobs) and not any(jobstate.follows(job, r) for job in jobs)

    def needs_output(
        self, r: Rendition, now: float, *, ignoring: Callable[[JobRecord], bool] | None = None
    ) -> bool:
        """Whether any job (apart from those `ignoring` passes) still wants this rendition's
        output stored."""
        for job in self.jobs_of_rendition(r.key):
            if job.generation != r.generation or (ignoring is not None and ignoring(job)):
                continue
            if jobstate.follows(job, r) or jobstate.holds_output(job, now):
                return True
        return False

    def device_jobs(self, device_id: str) -> list[JobRecord]:
        """The Streamyfin jobs of one device (native jobs have no device)."""
        found = (self.jobs.get(job_id) for job_id in self._by_device.get(device_id, ()))
        return [job for job in found if job is not None]

    def device_load(self, device_id: str) -> int:
        """How many of the device's jobs count toward its cache limit."""
        return sum(
            1 for job in self.device_jobs(device_id) if jobstate.counts_toward_device_limit(job)
        )

    def held_in_order(self, device_id: str) -> list[JobRecord]:
        held = [job for job in self.device_jobs(device_id) if job.status is JobStatus.HELD]
        return sorted(held, key=lambda job: job.created_at)

    def active_count(self, owner: str) -> int:
        """The user's admitted jobs (attached to a rendition and waiting for a slot, or running)."""
        return len(self._admitted.get(owner, ()))

    def waiting_in_order(self, owner: str) -> list[JobRecord]:
        """The user's queued jobs not admitted yet, oldest first (cached until one changes)."""
        cached = self._waiting_sorted.get(owner)
        if cached is None:
            found = (self.jobs.get(job_id) for job_id in self._waiting.get(owner, ()))
            cached = sorted((job for job in found if job is not None), key=_order)
            self._waiting_sorted[owner] = cached
        return cached


class LeaseView:
    """The pools' leases (one KV key each, see `shared.nats.leases`), the pools and the fleet's
    settings, with the indexes dispatch needs kept from the projections' changes, so a pass
    costs what changed, not what is held: leases by pool, lease keys by holder (a rendition, or
    a part by its key), automatic slots taken, and leases per client (see `client_of`, a part's
    lease counting for its rendition's client) per pool."""

    def __init__(
        self,
        leases: Projection[Lease],
        renditions: Projection[Rendition],
        pools: Projection[Pool] | None = None,
        fleet: Projection[TranscodingSettings] | None = None,
    ) -> None:
        self.leases = leases
        self.renditions = renditions
        self.pools = pools
        self.fleet = fleet
        # The processing settings' dispatch concurrency (None: MAX_CONCURRENT_JOBS), kept
        # current by the scheduler's settings watch.
        self.dispatch_concurrency: int | None = None
        # Like the View's indexes, these hold only keys with something under them.
        self.of_pool: dict[str, dict[str, Lease]] = {}
        self.keys_of: dict[str, set[str]] = {}
        self.busy: dict[str, Counter[Client]] = {}
        self.slots: dict[str, set[int]] = {}
        self._client_of: dict[str, Client] = {}
        leases.listen(self._lease_changed)
        for key, lease in leases.items():
            self._lease_changed(key, None, lease)

    def _lease_changed(self, key: str, old: Lease | None, new: Lease | None) -> None:
        pool = pool_of(key)
        if not pool:
            return
        if old is not None:
            held = self.of_pool.get(pool, {})
            held.pop(key, None)
            if not held:
                self.of_pool.pop(pool, None)
            self._forget_busy(pool, self._client_of.pop(key, NO_CLIENT))
            if (slot := slot_of(key)) is not None:
                index_discard(self.slots, pool, slot)
            index_discard(self.keys_of, holder(old), key)
        if new is not None:
            self.of_pool.setdefault(pool, {})[key] = new
            leased = self.renditions.get(new.rendition)
            self._client_of[key] = client_of(leased) if leased else NO_CLIENT
            self.busy.setdefault(pool, Counter())[self._client_of[key]] += 1
            if (slot := slot_of(key)) is not None:
                index_add(self.slots, pool, slot)
            index_add(self.keys_of, holder(new), key)

    def _forget_busy(self, pool: str, client: Client) -> None:
        """One lease fewer for `client` in `pool`; a client (and a pool) with none is dropped."""
        counts = self.busy.get(pool)
        if counts is None:
            return
        counts[client] -= 1
        if counts[client] <= 0:
            del counts[client]
        if not counts:
            del self.busy[pool]

    def __len__(self) -> int:
        return len(self.leases)

    def pool(self, pool_id: str) -> Pool | None:
        return self.pools.get(pool_id) if self.pools is not None else None

    def settings(self) -> TranscodingSettings | None:
        return self.fleet.get(SETTINGS_KEY) if self.fleet is not None else None

    def revision(self, key: str) -> int | None:
        versioned = self.leases.versioned(key)
        return versioned.revision if versioned is not None else None


def _order(job: JobRecord) -> tuple[float, str]:
    return job.created_at, job.id
