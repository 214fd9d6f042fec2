"""Scheduling decisions, pure: what should change, given the view, the time and the settings.

`decide(view, now, settings)` looks at records (all, or the ones that changed) and returns the
changes (`services.scheduler.changes`) that bring them to where they should be: jobs held for
their device's limit or admitted in order under their user's limit, placed on a rendition (shared
with every job that asks for the same output), following their rendition's state, expiring and
purged; renditions nobody wants cancelled or released; the parts of split renditions failed,
cancelled and dropped (`services.scheduler.parts`); leases taken and given back, and work
published (`services.scheduler.dispatch`). It does no I/O and reads no clock; `apply` carries the
changes out, and the guards here (`joined`, `orphaned`, `releasable`) are what it decides again
with on the record it reads when a compare-and-set was lost. The state machine's rules are
`shared.jobs.state`'s.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.scheduler.changes import (
    CancelOrphan,
    Change,
    ClearOutput,
    Complete,
    DeleteRendition,
    Detach,
    Expire,
    Fail,
    Hold,
    MarkManual,
    Place,
    PlaceOwn,
    Purge,
    ReleaseOutput,
    Start,
    Unhold,
    merged,
)
from services.scheduler.config import SchedulerSettings
from services.scheduler.dispatch import decide_dispatch
from services.scheduler.parts import decide_parts
from services.scheduler.view import View, device_limited
from shared.jobs import state as jobstate
from shared.messages.records import JobRecord, JobStatus, Rendition, RenditionState

J = JobStatus
R = RenditionState

# A rendition nobody follows yet may be one a job is about to attach to.
ORPHAN_GRACE = 2.0


def decide(
    view: View,
    now: float,
    settings: SchedulerSettings,
    *,
    renditions: Iterable[str] | None = None,
    jobs: Iterable[str] | None = None,
    leases: Iterable[str] | None = None,
) -> list[Change]:
    """What should change about `renditions`, then `jobs` (oldest first), then the pools'
    leases and work; None looks at every record (for leases: every lease, a full check).

    The decisions read the view as it is: a job placed here counts toward its device's and its
    user's limits for the jobs after it, so one pass never admits more than the limits allow.
    """
    if renditions is None:  # every rendition, and any whose parts outlived it
        renditions = {k for k, _ in view.renditions.items()} | view.renditions_with_parts()
    keys = sorted(renditions)
    ids = jobs if jobs is not None else (k for k, _ in view.jobs.items())
    changes: list[Change] = []
    for key in keys:
        if (change := decide_rendition(view, key, now, settings)) is not None:
            changes.append(change)
        changes.extend(decide_parts(view, key, now))
    placed = Placed()
    for job_id in sorted(ids, key=lambda job_id: _created_at(view, job_id)):
        if (change := decide_job(view, job_id, now, settings, placed)) is not None:
            changes.append(change)
    if view.leases is not None:
        recheck = None if leases is None else set(leases)
        changes.extend(decide_dispatch(view, view.leases, now, settings, recheck))
    return merged(changes)


@dataclass
class Placed:
    """The jobs one pass places, counted toward their device's and user's limits."""

    jobs: set[str] = field(default_factory=set)
    devices: Counter[str] = field(default_factory=Counter)
    owners: Counter[str] = field(default_factory=Counter)

    def add(self, job: JobRecord) -> None:
        self.jobs.add(job.id)
        if device_limited(job):
            self.devices[job.device_id] += 1
        self.owners[job.owner] += 1


# ---- jobs ---------------------------------------------------------------------------------------


def decide_job(
    view: View,
    job_id: str,
    now: float,
    settings: SchedulerSettings,
    placed: Placed | None = None,
) -> Change | None:
    """The one change a job needs now, if any."""
    job = view.jobs.get(job_id)
    if job is None:
        return None
    if job.status is J.QUEUED and job.rendition is None:
        return place(view, job, now, settings, placed or Placed())
    if job.status in (J.QUEUED, J.RUNNING):
        return follow(view, job, settings)
    if job.status is J.HELD:
        return unhold(view, job, settings)
    if job.status is J.COMPLETED and job.keep_until is not None and now >= job.keep_until:
        return Expire(job.id)
    if jobstate.purge_due(job, settings.keep_seconds, now):
        versioned = view.jobs.versioned(job.id)
        if versioned is not None:
            return Purge(job, versioned.revision)
    return None


def place(
    view: View, job: JobRecord, now: float, settings: SchedulerSettings, placed: Placed
) -> Change | None:
    """A queued job without a rendition: hold it for its device's limit, leave it queued while
    its user has enough jobs admitted, or place it (a manual start skips both limits)."""
    if job.id in view.shares.pending:
        return None  # its share check is still out: it is placed when the answer comes back
    limit = settings.max_cached_per_user
    if (
        limit
        and not job.manual_start
        and device_limited(job)
        and view.device_load(job.device_id) + placed.devices[job.device_id] >= limit
    ):
        return Hold(job.id, job.device_id, limit)
    if not job.manual_start and not admissible(view, job, settings, placed):
        return None  # stays queued; admitted in order as the user's other jobs end
    placed.add(job)
    key = jobstate.rendition_key_of(job)
    pool = job.pool or settings.pool
    answer = view.shares.answer(job.id)
    if answer is not None and answer[0] == key:
        allowed = answer[1]
        if not allowed:
            return PlaceOwn(job, jobstate.own_rendition_key(key, job.id), pool)
        return Place(job, key, pool, allowed=True)
    return Place(job, key, pool)


def admissible(view: View, job: JobRecord, settings: SchedulerSettings, placed: Placed) -> bool:
    """Whether the user's active limit has room for this job: it must be among the user's
    oldest waiting jobs that fit, so waiting jobs are admitted in the order they came."""
    limit = settings.max_active_jobs_per_user
    if not limit:
        return True
    free = limit - view.active_count(job.owner) - placed.owners[job.owner]
    if free <= 0:
        return False
    for first in view.waiting_in_order(job.owner):
        if first.id in placed.jobs:
            continue  # admitted in this pass already, counted above
        if first.id == job.id:
            return True
        free -= 1
        if free <= 0:
            return False
    return False


def follow(view: View, job: JobRecord, settings: SchedulerSettings) -> Change | None:
    """An attached job takes on its rendition's state."""
    assert job.rendition is not None
    r = view.renditions.get(job.rendition)
    if r is None or r.generation != job.generation or r.state in (R.CANCELLED, R.RELEASED):
        return Detach(job.id, job.rendition, job.generation)
    if r.state is R.FAILED:
        return Fail(job.id, r)
    if r.state is R.DONE:
        return Complete(job.id, r, settings.keep_seconds)
    if r.state is R.RUNNING and job.status is J.QUEUED:
        return Start(job.id, r)
    if job.manual_start and not r.manual and r.state in (R.PENDING, R.DISPATCHED):
        return MarkManual(r.key)
    return None


def unhold(view: View, job: JobRecord, settings: SchedulerSettings) -> Change | None:
    """A held job goes back to the queue once its device has room, oldest first."""
    limit = settings.max_cached_per_user
    if not device_limited(job):
        limit = 0  # a native job held by an older version: the device limit is not its own
    if not limit:
        return Unhold(job.id)
    free = limit - view.device_load(job.device_id)
    if free <= 0:
        return None
    if any(held.id == job.id for held in view.held_in_order(job.device_id)[:free]):
        return Unhold(job.id)
    return None


def joined(
    current: Rendition | None, job: JobRecord, key: str, pool: str, now: float
) -> tuple[Rendition | None, bool]:
    """What placing `job` makes of its rendition's record: (the record to store, None to leave
    it as it is; whether the job makes the rendition anew rather than joins it)."""
    if current is None:
        return jobstate.new_rendition(key, job, now, pool=pool), True
    if current.state in jobstate.RENDITION_ENDED:
        return jobstate.renew(current, job, now), True
    if current.state not in jobstate.RENDITION_LIVE:
        return None, False  # done: the job takes its output as it is
    joining = current
    if job.manual_start and not joining.manual:
        joining = jobstate.mark_manual(joining, now)
    if job.priority > joining.priority:
        joining = jobstate.raise_priority(joining, job.priority, now)
    return (joining if joining is not current else None), False


def made_own(
    current: Rendition | None, job: JobRecord, key: str, pool: str, now: float
) -> Rendition | None:
    """The record of a job's own rendition (`PlaceOwn`); None leaves it as it is."""
    if current is None:
        return jobstate.new_rendition(key, job, now, pool=pool)
    if current.state in jobstate.RENDITION_ENDED:
        return jobstate.renew(current, job, now)
    return None  # already made for this job: attach to it as it is


def needs_check(job: JobRecord, r: Rendition, *, created: bool, allowed: bool) -> bool:
    """Whether a job must have its own URL checked before it shares `r`: it joins an output
    made from another request's URL (other credentials) and no check said yes yet."""
    return not created and r.source != job.source and not allowed


# ---- renditions ---------------------------------------------------------------------------------


def decide_rendition(
    view: View, key: str, now: float, settings: SchedulerSettings
) -> Change | None:
    """The one change a rendition needs now, if any: stop it, release its output, forget it."""
    r = view.renditions.get(key)
    if r is None:
        return None
    if r.state in jobstate.RENDITION_LIVE:
        if orphaned(view, r) and (now - r.updated_at >= ORPHAN_GRACE or view.left_by_all(r)):
            return CancelOrphan(key)
    elif r.state is R.DONE:
        if not view.needs_output(r, now):
            return ReleaseOutput(key)
    elif not view.jobs_of_rendition(key) and now - r.updated_at >= settings.keep_seconds:
        versioned = view.renditions.versioned(key)
        if versioned is not None:
            return DeleteRendition(key, versioned.revision)
    return None


def orphaned(view: View, r: Rendition) -> bool:
    """Whether a live rendition has no active job following it."""
    return r.state in jobstate.RENDITION_LIVE and not view.followers(r)


def releasable(view: View, r: Rendition, change: ReleaseOutput, now: float) -> bool:
    """Whether a done rendition's output may be released: no job needs it (for a cache clear,
    no job the clear leaves its output to; an administrator's clear takes every one)."""
    if r.state is not R.DONE:
        return False
    if change.request_id and change.cleared is None:
        return True
    cleared = change.cleared
    ignoring: Callable[[JobRecord], bool] | None = (
        (lambda job: job.id in cleared) if cleared is not None else None
    )
    return not view.needs_output(r, now, ignoring=ignoring)


# ---- cache clears -------------------------------------------------------------------------------


def decide_clear(
    view: View, now: float, *, request_id: str, admin: bool, owner: str
) -> list[Change]:
    """A cache clear: the finished outputs in the service's store that it covers (an
    administrator's: all; a user's: what their own jobs hold) are released for the clear first,
    then the jobs let go of them. Outputs in users' own storage are not the service's cache."""

    def covered(job: JobRecord) -> bool:
        if job.output is None or job.output.store or not jobstate.holds_output(job, now):
            return False
        return admin or (bool(owner) and job.owner == owner)

    jobs = [job for job in list(view.jobs.values()) if covered(job)]
    keys = {r.key for r in view.renditions.values()} if admin else set()
    keys |= {job.rendition for job in jobs if job.rendition}
    cleared = None if admin else frozenset(job.id for job in jobs)
    changes: list[Change] = []
    for key in sorted(keys):
        r = view.renditions.get(key)
        if r is None or r.state is not R.DONE or r.output is None or r.output.store:
            continue
        changes.append(ReleaseOutput(key, request_id=request_id, cleared=cleared))
    changes.extend(ClearOutput(job.id) for job in jobs)
    return changes


def _created_at(view: View, job_id: str) -> tuple[float, str]:
    job = view.jobs.get(job_id)
    return (job.created_at if job else 0.0), job_id
