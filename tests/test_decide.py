"""Scheduling decisions, as the scheduler makes them: a pure function of a view built from plain
records, the time and the settings. No NATS, no clock: each case states the records it starts
from and the changes the scheduler decides to make."""

from __future__ import annotations

from typing import Any, TypeVar, cast

import msgspec
import pytest

from services.scheduler import decide as decisions
from services.scheduler.changes import (
    CancelOrphan,
    CancelParts,
    Change,
    Claim,
    ClearOutput,
    Complete,
    DeleteRendition,
    Detach,
    DropParts,
    Expire,
    Fail,
    FailSplit,
    Hold,
    MarkManual,
    Place,
    PlaceOwn,
    Publish,
    PublishPart,
    Purge,
    Release,
    ReleaseOutput,
    Start,
    Unhold,
    merged,
)
from services.scheduler.config import SchedulerSettings
from services.scheduler.decide import ORPHAN_GRACE, decide, decide_clear
from services.scheduler.dispatch import STALE_LEASE_SECONDS
from services.scheduler.parts import JOIN_SETTLE_SECONDS, failed_with
from services.scheduler.view import LeaseView, View
from shared.blobs.keys import source_copy_key
from shared.fleet import SETTINGS_KEY
from shared.jobs import state as jobstate
from shared.messages.fleet import Pool, TranscodingSettings
from shared.messages.records import (
    JobError,
    JobRecord,
    JobStatus,
    Lease,
    Output,
    Part,
    Rendition,
    RenditionState,
    Split,
)
from shared.messages.work import JoinWork, SegmentWork
from shared.nats.kv import TypedKV
from shared.nats.leases import manual_key, slot_key
from shared.nats.projection import Projection

J = JobStatus
R = RenditionState
NOW = 1_000_000.0
HOUR = 3600.0
OUTPUT = Output(blob="outputs/x", size=10, sha256="0" * 64, container="mp4", mime="video/mp4")
ERROR = JobError(code="source_invalid", reason="The source is not a video.")
T = TypeVar("T", bound=msgspec.Struct)


# ---- building views from plain records ----------------------------------------------------------


def settings(**changes: Any) -> SchedulerSettings:
    """The scheduler's defaults, as the tests name them."""
    return SchedulerSettings(**changes)


def projection(records: dict[str, T]) -> Projection[T]:
    """A projection holding `records` (each at revision 1), as if its watch had loaded them."""
    found: Projection[T] = Projection(cast(TypedKV[T], None), "test")
    for key, value in records.items():
        found.apply(key, value, 1)
    return found


def view_of(
    jobs: list[JobRecord] = (),  # type: ignore[assignment]
    renditions: list[Rendition] = (),  # type: ignore[assignment]
    *,
    leases: dict[str, Lease] | None = None,
    pools: list[Pool] = (),  # type: ignore[assignment]
    fleet: TranscodingSettings | None = None,
    parts: list[Part] = (),  # type: ignore[assignment]
) -> View:
    view = View(
        projection({job.id: job for job in jobs}),
        projection({r.key: r for r in renditions}),
        parts=projection({p.key: p for p in parts}),
    )
    view.leases = LeaseView(
        projection(leases or {}),
        view.renditions,
        projection({pool.id: pool for pool in pools}),
        projection({SETTINGS_KEY: fleet} if fleet is not None else {}),
    )
    return view


def a_job(
    job_id: str,
    *,
    owner: str = "u1",
    device: str = "d1",
    client: str = "streamyfin",
    media: str | None = None,
    created: float = NOW - 100,
    status: JobStatus = J.QUEUED,
    **changes: Any,
) -> JobRecord:
    """A job as accepted (queued), its media named after it unless `media` says otherwise."""
    job = jobstate.new_job(
        job_id=job_id,
        owner=owner,
        device_id=device,
        client=client,
        source=f"http://media/{media or job_id}.mkv",
        now=created,
    )
    return msgspec.structs.replace(job, status=status, **changes)


def a_rendition(
    job: JobRecord, state: RenditionState = R.PENDING, *, age: float = 60.0, **changes: Any
) -> Rendition:
    """The rendition `job` asks for, made `age` seconds ago."""
    r = jobstate.new_rendition(jobstate.rendition_key_of(job), job, NOW - age)
    return msgspec.structs.replace(r, state=state, **changes)


def on(job: JobRecord, r: Rendition, status: JobStatus = J.QUEUED, **changes: Any) -> JobRecord:
    """`job` attached to `r`."""
    return msgspec.structs.replace(
        job, status=status, rendition=r.key, generation=r.generation, **changes
    )


def of_kind(changes: list[Change], kind: type) -> list[Any]:
    return [change for change in changes if isinstance(change, kind)]


# ---- device limits (Streamyfin) -----------------------------------------------------------------


def test_a_queued_job_is_placed_on_the_rendition_its_request_asks_for() -> None:
    job = a_job("j1")
    changes = decide(view_of([job]), NOW, settings())
    assert changes == [Place(job, jobstate.rendition_key_of(job), "default")]


def test_a_job_names_its_own_pool() -> None:
    job = a_job("j1", pool="gpu")
    [place] = decide(view_of([job]), NOW, settings())
    assert isinstance(place, Place) and place.pool == "gpu"


def test_a_job_past_its_devices_cache_limit_is_held() -> None:
    done = [a_job(f"c{n}", status=J.COMPLETED) for n in range(2)]
    job = a_job("j1", created=NOW - 10)
    changes = decide(view_of([*done, job]), NOW, settings(max_cached_per_user=2))
    assert changes == [Hold("j1", "d1", 2)]


def test_the_device_limit_counts_running_attached_and_cached_jobs_only() -> None:
    running = a_job("r")
    r = a_rendition(running, R.RUNNING)
    others = [
        on(running, r, J.RUNNING),
        a_job("held", status=J.HELD),
        a_job("cancelled", status=J.CANCELLED),
        a_job("removed", status=J.REMOVED),
    ]
    job = a_job("j1", created=NOW - 10)
    changes = decide(view_of([*others, job], [r]), NOW, settings(max_cached_per_user=2))
    assert of_kind(changes, Place) == [Place(job, jobstate.rendition_key_of(job), "default")]


def test_a_device_cache_limit_of_zero_is_no_limit() -> None:
    done = [a_job(f"c{n}", status=J.COMPLETED) for n in range(5)]
    job = a_job("j1", created=NOW - 10)
    changes = decide(view_of([*done, job]), NOW, settings(max_cached_per_user=0))
    assert of_kind(changes, Place) and not of_kind(changes, Hold)


def test_native_jobs_are_never_held_for_a_device_limit() -> None:
    done = [a_job(f"c{n}", client="native", status=J.COMPLETED) for n in range(3)]
    job = a_job("j1", client="native", created=NOW - 10)
    changes = decide(view_of([*done, job]), NOW, settings(max_cached_per_user=1))
    assert of_kind(changes, Place) and not of_kind(changes, Hold)


def test_a_manual_start_goes_past_the_device_limit() -> None:
    done = a_job("c", status=J.COMPLETED)
    job = a_job("j1", manual_start=True, created=NOW - 10)
    changes = decide(view_of([done, job]), NOW, settings(max_cached_per_user=1))
    assert of_kind(changes, Place) and not of_kind(changes, Hold)


def test_one_pass_places_no_more_of_a_devices_jobs_than_its_limit_has_room_for() -> None:
    first, second = a_job("j1", created=NOW - 20), a_job("j2", created=NOW - 10)
    changes = decide(view_of([second, first]), NOW, settings(max_cached_per_user=1))
    assert changes == [
        Place(first, jobstate.rendition_key_of(first), "default"),
        Hold("j2", "d1", 1),
    ]


def test_a_held_job_is_unheld_once_its_device_has_room_oldest_first() -> None:
    older = a_job("h1", status=J.HELD, created=NOW - 20)
    newer = a_job("h2", status=J.HELD, created=NOW - 10)
    cached = a_job("c", status=J.COMPLETED)
    changes = decide(view_of([cached, newer, older]), NOW, settings(max_cached_per_user=2))
    assert of_kind(changes, Unhold) == [Unhold("h1")]


def test_a_held_job_stays_held_while_its_device_is_full() -> None:
    held = a_job("h1", status=J.HELD)
    cached = a_job("c", status=J.COMPLETED)
    assert decide(view_of([cached, held]), NOW, settings(max_cached_per_user=1)) == []


def test_a_native_job_held_by_an_older_version_is_unheld() -> None:
    held = a_job("h1", client="native", status=J.HELD)
    assert decide(view_of([held]), NOW, settings(max_cached_per_user=1)) == [Unhold("h1")]


# ---- per-user active limits ---------------------------------------------------------------------


def test_a_user_at_the_active_limit_has_new_jobs_wait_queued() -> None:
    active = a_job("a", client="native")
    r = a_rendition(active)
    job = a_job("j1", client="native", created=NOW - 10)
    view = view_of([on(active, r), job], [r])
    changes = decide(view, NOW, settings(max_active_jobs_per_user=1))
    assert not of_kind(changes, Place) and not of_kind(changes, Hold)


def test_waiting_jobs_are_admitted_in_the_order_they_came() -> None:
    jobs = [a_job(f"j{n}", client="native", created=NOW - 30 + n) for n in range(3)]
    changes = decide(view_of(jobs[::-1]), NOW, settings(max_active_jobs_per_user=2))
    assert [change.job.id for change in of_kind(changes, Place)] == ["j0", "j1"]


def test_a_later_job_is_not_admitted_ahead_of_an_earlier_one() -> None:
    first, later = (
        a_job("j1", client="native", created=NOW - 20),
        a_job("j2", client="native", created=NOW - 10),
    )
    active = a_job("a", client="native")
    r = a_rendition(active)
    view = view_of([on(active, r), first, later], [r])
    changes = decide(view, NOW, settings(max_active_jobs_per_user=2), jobs=["j2"])
    assert not of_kind(changes, Place)


def test_an_active_limit_of_zero_is_no_limit() -> None:
    jobs = [a_job(f"j{n}", client="native", created=NOW - 30 + n) for n in range(3)]
    changes = decide(view_of(jobs), NOW, settings(max_active_jobs_per_user=0))
    assert len(of_kind(changes, Place)) == 3


def test_one_users_queue_does_not_hold_up_another_users_job() -> None:
    mine = [a_job(f"j{n}", client="native", created=NOW - 30 + n) for n in range(3)]
    theirs = a_job("other", owner="u2", client="native", created=NOW)
    changes = decide(view_of([*mine, theirs]), NOW, settings(max_active_jobs_per_user=1))
    assert [change.job.id for change in of_kind(changes, Place)] == ["j0", "other"]


def test_a_manual_start_goes_past_the_active_limit() -> None:
    active = a_job("a", client="native")
    r = a_rendition(active)
    job = a_job("j1", client="native", manual_start=True, created=NOW - 10)
    changes = decide(view_of([on(active, r), job], [r]), NOW, settings(max_active_jobs_per_user=1))
    assert [change.job.id for change in of_kind(changes, Place)] == ["j1"]


# ---- shared renditions and share checks ---------------------------------------------------------


def test_jobs_asking_for_the_same_output_are_placed_on_one_rendition() -> None:
    one = a_job("j1", media="film", created=NOW - 20)
    two = a_job("j2", media="film", owner="u2", device="d2", created=NOW - 10)
    places = of_kind(decide(view_of([one, two]), NOW, settings()), Place)
    assert len(places) == 2 and places[0].key == places[1].key


def test_a_job_whose_share_check_is_out_is_left_alone() -> None:
    job = a_job("j1")
    view = view_of([job])
    view.shares.pending.add("j1")
    assert decide(view, NOW, settings()) == []


def test_a_job_whose_own_url_may_read_the_media_shares_the_rendition() -> None:
    job = a_job("j1")
    key = jobstate.rendition_key_of(job)
    view = view_of([job])
    view.shares.answers["j1"] = (key, True)
    assert decide(view, NOW, settings()) == [Place(job, key, "default", allowed=True)]


def test_a_job_whose_share_check_did_not_say_yes_gets_a_rendition_of_its_own() -> None:
    job = a_job("j1")
    key = jobstate.rendition_key_of(job)
    view = view_of([job])
    view.shares.answers["j1"] = (key, False)
    own = jobstate.own_rendition_key(key, "j1")
    assert decide(view, NOW, settings()) == [PlaceOwn(job, own, "default")]


def test_an_answer_about_another_rendition_is_not_used() -> None:
    job = a_job("j1")
    view = view_of([job])
    view.shares.answers["j1"] = ("some-other-key", False)
    assert decide(view, NOW, settings()) == [Place(job, jobstate.rendition_key_of(job), "default")]


@pytest.mark.parametrize(
    ("same_source", "created", "allowed", "check"),
    [
        (False, False, False, True),  # joins another request's output: its own URL is checked
        (True, False, False, False),  # the same URL: nothing to check
        (False, True, False, False),  # makes the rendition itself
        (False, False, True, False),  # a check said yes already
    ],
)
def test_only_a_job_joining_another_requests_output_has_its_url_checked(
    same_source: bool, created: bool, allowed: bool, check: bool
) -> None:
    first = a_job("first", media="film")
    r = a_rendition(first, R.RUNNING)
    joining = first if same_source else msgspec.structs.replace(first, source=first.source + "?t=2")
    assert decisions.needs_check(joining, r, created=created, allowed=allowed) is check


def test_placing_makes_renews_or_joins_the_rendition() -> None:
    job = a_job("j1", priority=5, manual_start=True)
    key = jobstate.rendition_key_of(job)
    made, created = decisions.joined(None, job, key, "default", NOW)
    assert created and made is not None and made.generation == 1 and made.manual
    ended = a_rendition(job, R.CANCELLED)
    renewed, created = decisions.joined(ended, job, key, "default", NOW)
    assert created and renewed is not None and renewed.generation == 2
    live = a_rendition(a_job("j0"), R.RUNNING)
    joined, created = decisions.joined(live, job, key, "default", NOW)
    assert not created and joined is not None and joined.manual and joined.priority == 5
    done = a_rendition(job, R.DONE, output=OUTPUT)
    assert decisions.joined(done, job, key, "default", NOW) == (None, False)


# ---- following the rendition --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "kind"),
    [(R.RUNNING, Start), (R.DONE, Complete), (R.FAILED, Fail), (R.CANCELLED, Detach)],
)
def test_an_attached_job_takes_on_its_renditions_state(state: RenditionState, kind: type) -> None:
    job = a_job("j1")
    r = a_rendition(job, state, output=OUTPUT, last_error=ERROR)
    [change] = decide(view_of([on(job, r)], [r]), NOW, settings(), renditions=[])
    assert isinstance(change, kind) and change.job_id == "j1"


def test_a_completed_job_keeps_its_output_for_the_configured_hours() -> None:
    job = a_job("j1")
    r = a_rendition(job, R.DONE, output=OUTPUT)
    changes = decide(view_of([on(job, r)], [r]), NOW, settings(time_to_keep_files=2.0))
    assert Complete("j1", r, 2 * HOUR) in changes


def test_a_job_whose_rendition_is_gone_or_renewed_looks_for_one_again() -> None:
    job = a_job("j1")
    r = a_rendition(job, R.PENDING, generation=2)
    stale = msgspec.structs.replace(on(job, r), generation=1)
    gone = on(a_job("j2"), a_rendition(a_job("j2")))
    changes = decide(view_of([stale, gone], [r]), NOW, settings(), renditions=[])
    assert sorted(change.job_id for change in of_kind(changes, Detach)) == ["j1", "j2"]


def test_a_running_job_on_a_running_rendition_needs_nothing() -> None:
    job = a_job("j1")
    r = a_rendition(job, R.RUNNING)
    assert decide(view_of([on(job, r, J.RUNNING)], [r]), NOW, settings(), leases=[]) == []


def test_a_job_started_by_hand_marks_its_pending_rendition_manual() -> None:
    job = a_job("j1", manual_start=True)
    r = a_rendition(job, R.PENDING, manual=False)
    changes = decide(view_of([on(job, r)], [r]), NOW, settings())
    assert changes[0] == MarkManual(r.key)


# ---- retention ----------------------------------------------------------------------------------


def test_a_completed_job_expires_at_the_end_of_its_retention() -> None:
    due = a_job("j1", status=J.COMPLETED, output=OUTPUT, keep_until=NOW - 1)
    kept = a_job("j2", status=J.COMPLETED, output=OUTPUT, keep_until=NOW + 1)
    assert decide(view_of([due, kept]), NOW, settings()) == [Expire("j1")]


def test_a_job_that_ended_long_ago_is_purged_and_a_recent_one_is_kept() -> None:
    old = a_job("j1", status=J.FAILED, error=ERROR, finished_at=NOW - 9 * HOUR)
    recent = a_job("j2", status=J.FAILED, error=ERROR, finished_at=NOW - HOUR)
    assert decide(view_of([old, recent]), NOW, settings()) == [Purge(old, 1)]


def test_a_removed_job_that_still_holds_its_output_is_not_purged() -> None:
    holding = a_job(
        "j1", status=J.REMOVED, removed_at=NOW - 9 * HOUR, keep_until=NOW + 1, output=OUTPUT
    )
    assert decide(view_of([holding]), NOW, settings()) == []


# ---- orphans ------------------------------------------------------------------------------------


def test_a_live_rendition_nobody_follows_is_cancelled_after_a_grace() -> None:
    nobody = a_job("j1")
    old = a_rendition(nobody, R.RUNNING, age=ORPHAN_GRACE + 1, updated_at=NOW - ORPHAN_GRACE)
    young = a_rendition(a_job("j2"), R.PENDING, age=1.0, updated_at=NOW - 1.0)
    changes = decide(view_of([], [old, young]), NOW, settings())
    assert changes == [CancelOrphan(old.key)]


def test_a_rendition_whose_jobs_were_all_cancelled_is_cancelled_at_once() -> None:
    job = a_job("j1")
    r = a_rendition(job, R.RUNNING, updated_at=NOW)
    view = view_of([on(job, r, J.CANCELLED)], [r])
    assert decide(view, NOW, settings()) == [CancelOrphan(r.key)]


def test_a_rendition_one_job_still_follows_keeps_running() -> None:
    one, two = a_job("j1", media="film"), a_job("j2", media="film", owner="u2")
    r = a_rendition(one, R.RUNNING, updated_at=NOW - 60)
    view = view_of([on(one, r, J.CANCELLED), on(two, r, J.RUNNING)], [r])
    assert decide(view, NOW, settings(), leases=[]) == []


def test_an_output_no_job_needs_is_released() -> None:
    job = a_job("j1")
    r = a_rendition(job, R.DONE, output=OUTPUT)
    removed = on(job, r, J.REMOVED, keep_until=NOW, output=OUTPUT)
    assert decide(view_of([removed], [r]), NOW, settings()) == [ReleaseOutput(r.key)]


@pytest.mark.parametrize(
    "changes",
    [
        {"status": J.COMPLETED, "keep_until": NOW + HOUR},
        {"status": J.REMOVED, "keep_until": NOW + 1},
    ],
)
def test_an_output_a_job_still_holds_is_kept(changes: dict[str, Any]) -> None:
    job = a_job("j1")
    r = a_rendition(job, R.DONE, output=OUTPUT)
    holder = on(job, r, output=OUTPUT, **changes)
    assert decide(view_of([holder], [r]), NOW, settings()) == []


def test_an_ended_rendition_no_job_names_is_forgotten_after_the_retention() -> None:
    old = a_rendition(a_job("j1"), R.RELEASED, updated_at=NOW - 9 * HOUR)
    recent = a_rendition(a_job("j2"), R.RELEASED, updated_at=NOW - HOUR)
    named = a_rendition(a_job("j3"), R.CANCELLED, updated_at=NOW - 9 * HOUR)
    job = on(a_job("j3", status=J.CANCELLED), named, J.CANCELLED)
    changes = decide(view_of([job], [old, recent, named]), NOW, settings(), jobs=[])
    assert changes == [DeleteRendition(old.key, 1)]


# ---- pool leases, global concurrency, manual starts, order -------------------------------------


def pending(job_id: str, *, age: float = 60.0, **changes: Any) -> tuple[JobRecord, Rendition]:
    """A job waiting on its pending rendition (device and owner named after the job)."""
    job = a_job(job_id, device=f"dev-{job_id}", created=NOW - age)
    r = a_rendition(job, R.PENDING, age=age, **changes)
    return on(job, r), r


def dispatched(changes: list[Change]) -> list[str]:
    """The renditions' keys whose work is published, in order."""
    return [
        c.then.rendition.key if isinstance(c, Claim) else c.rendition.key
        for c in changes
        if isinstance(c, Claim | Publish)
    ]


def test_a_pending_rendition_takes_a_free_slot_and_its_work_names_its_jobs() -> None:
    job, r = pending("j1")
    [claim] = decide(view_of([job], [r]), NOW, settings())
    assert isinstance(claim, Claim) and claim.key == slot_key("default", 0)
    assert claim.lease.rendition == r.key and claim.then.work.jobs == ["j1"]
    assert claim.then.work.dispatch_seq == r.dispatch_seq + 1


def test_a_pool_runs_no_more_than_its_limit() -> None:
    (j1, r1), (j2, r2) = pending("j1", age=20), pending("j2", age=10)
    changes = decide(view_of([j1, j2], [r1, r2]), NOW, settings(max_concurrent_jobs=1))
    assert dispatched(changes) == [r1.key]


def test_a_busy_slot_leaves_the_rest_pending() -> None:
    (j1, r1), (j2, r2) = pending("j1", age=20), pending("j2", age=10)
    r1, j1 = msgspec.structs.replace(r1, state=R.RUNNING), on(j1, r1, J.RUNNING)
    lease = Lease(generation=1, since=NOW - 5, rendition=r1.key, pool="default")
    view = view_of([j1, j2], [r1, r2], leases={slot_key("default", 0): lease})
    assert decide(view, NOW, settings(max_concurrent_jobs=1)) == []


def test_a_pools_own_concurrency_overrides_max_concurrent_jobs() -> None:
    found = [pending(f"j{n}", age=30 - n) for n in range(3)]
    view = view_of(
        [j for j, _ in found], [r for _, r in found], pools=[Pool(id="default", concurrency=2)]
    )
    changes = decide(view, NOW, settings(max_concurrent_jobs=1))
    assert len(dispatched(changes)) == 2


def test_a_disabled_pool_is_given_no_work() -> None:
    job, r = pending("j1")
    view = view_of([job], [r], pools=[Pool(id="default", enabled=False)])
    assert decide(view, NOW, settings()) == []


def test_global_concurrency_bounds_every_pool_together() -> None:
    (j1, r1), (j2, r2) = pending("j1", pool="a"), pending("j2", pool="b")
    view = view_of(
        [j1, j2],
        [r1, r2],
        pools=[Pool(id="a", concurrency=2), Pool(id="b", concurrency=2)],
        fleet=TranscodingSettings(global_concurrency=1),
    )
    assert dispatched(decide(view, NOW, settings())) == [r1.key]


def test_a_manual_start_is_leased_beyond_the_pools_limit() -> None:
    (j1, r1), (j2, r2) = pending("j1", age=20), pending("j2", age=10, manual=True)
    running, j1 = msgspec.structs.replace(r1, state=R.RUNNING), on(j1, r1, J.RUNNING)
    lease = Lease(generation=1, since=NOW - 5, rendition=r1.key, pool="default")
    view = view_of([j1, j2], [running, r2], leases={slot_key("default", 0): lease})
    [claim] = decide(view, NOW, settings(max_concurrent_jobs=1))
    assert isinstance(claim, Claim) and claim.key == manual_key("default", r2.key)
    assert claim.lease.manual


def test_work_goes_out_by_manual_start_then_priority_then_least_busy_client_then_age() -> None:
    busy_job, busy_r = pending("busy", age=100)
    busy_r, busy_job = (
        msgspec.structs.replace(busy_r, state=R.RUNNING),
        on(busy_job, busy_r, J.RUNNING),
    )
    lease = Lease(generation=1, since=NOW, rendition=busy_r.key, pool="default")
    oldest, oldest_r = pending("oldest", age=90, first_device="dev-busy")
    fresh, fresh_r = pending("fresh", age=10)
    high, high_r = pending("high", age=5, priority=3)
    manual, manual_r = pending("manual", age=1, manual=True)
    view = view_of(
        [busy_job, oldest, fresh, high, manual],
        [busy_r, oldest_r, fresh_r, high_r, manual_r],
        leases={slot_key("default", 0): lease},
    )
    changes = decide(view, NOW, settings(max_concurrent_jobs=5))
    assert dispatched(changes) == [manual_r.key, high_r.key, fresh_r.key, oldest_r.key]


def test_a_pending_rendition_nobody_follows_is_not_leased() -> None:
    _, r = pending("j1", age=1.0, updated_at=NOW)
    assert decide(view_of([], [r]), NOW, settings()) == []


def test_the_lease_of_an_ended_rendition_is_released_and_its_slot_given_out() -> None:
    gone_job, gone = pending("gone", age=50)
    gone = msgspec.structs.replace(gone, state=R.FAILED, last_error=ERROR)
    job, r = pending("next", age=10)
    lease = Lease(generation=1, since=NOW - 40, rendition=gone.key, pool="default")
    view = view_of([job], [gone, r], leases={slot_key("default", 0): lease})
    changes = decide(view, NOW, settings(), renditions=[], jobs=[])
    assert changes[0] == Release(slot_key("default", 0), 1)
    assert isinstance(changes[1], Claim) and changes[1].key == slot_key("default", 0)


def test_a_lease_whose_work_was_never_published_is_published_again_then_reclaimed() -> None:
    job, r = pending("j1")
    lease = Lease(generation=1, since=NOW - 1, rendition=r.key, pool="default")
    view = view_of([job], [r], leases={slot_key("default", 0): lease})
    [again] = decide(view, NOW, settings())
    assert isinstance(again, Publish) and again.rendition == r
    later = NOW + STALE_LEASE_SECONDS
    assert Release(slot_key("default", 0), 1) in decide(view, later, settings())


def test_a_renditions_second_lease_is_released_and_the_lowest_kept() -> None:
    job, r = pending("j1")
    r, job = msgspec.structs.replace(r, state=R.RUNNING), on(job, r, J.RUNNING)
    lease = Lease(generation=1, since=NOW - 5, rendition=r.key, pool="default")
    leases = {slot_key("default", 0): lease, slot_key("default", 1): lease}
    view = view_of([job], [r], leases=leases)
    assert decide(view, NOW, settings(max_concurrent_jobs=2)) == [
        Release(slot_key("default", 1), 1)
    ]


def test_only_the_leases_looked_at_are_checked_between_full_checks() -> None:
    job, r = pending("j1")
    ended = msgspec.structs.replace(r, state=R.CANCELLED)
    lease = Lease(generation=1, since=NOW - 5, rendition=r.key, pool="default")
    view = view_of([job], [ended], leases={slot_key("default", 0): lease})
    assert decide(view, NOW, settings(), jobs=[], renditions=[], leases=[]) == []
    assert decide(view, NOW, settings(), jobs=[], renditions=[], leases=None) == [
        Release(slot_key("default", 0), 1)
    ]


# ---- cache clears and one write per record ------------------------------------------------------


def test_a_users_cache_clear_takes_only_what_their_own_jobs_hold() -> None:
    mine, theirs = a_job("mine", media="film"), a_job("theirs", media="film", owner="u2")
    r = a_rendition(mine, R.DONE, output=OUTPUT)
    own_store = msgspec.structs.replace(OUTPUT, store="my-s3")
    kept = a_job("kept", media="other")
    kept_r = a_rendition(kept, R.DONE, output=own_store)
    jobs = [
        on(mine, r, J.COMPLETED, output=OUTPUT),
        on(theirs, r, J.COMPLETED, output=OUTPUT),
        on(kept, kept_r, J.COMPLETED, output=own_store),
    ]
    view = view_of(jobs, [r, kept_r])
    changes = decide_clear(view, NOW, request_id="c1", admin=False, owner="u1")
    assert changes == [ReleaseOutput(r.key, "c1", frozenset({"mine"})), ClearOutput("mine")]
    # the other user's job still holds the shared output: this clear does not release it
    assert not decisions.releasable(view, r, changes[0], NOW)
    everything = decide_clear(view, NOW, request_id="c2", admin=True, owner="")
    assert ReleaseOutput(r.key, "c2", None) in everything
    assert decisions.releasable(view, r, everything[0], NOW)


def test_one_pass_writes_each_job_at_most_once() -> None:
    changes: list[Change] = [Hold("j1", "d1", 1), Unhold("j1"), Unhold("j2"), MarkManual("k")]
    assert merged(changes) == [Hold("j1", "d1", 1), Unhold("j2"), MarkManual("k")]


def test_a_pass_decides_at_most_one_change_per_job() -> None:
    jobs = [a_job(f"j{n}", media="film", created=NOW - n) for n in range(5)]
    r = a_rendition(jobs[0], R.RUNNING, updated_at=NOW - 60)
    view = view_of([on(job, r) for job in jobs], [r])
    changes = decide(view, NOW, settings(), jobs=[job.id for job in jobs] * 2)
    assert sorted(change.job_id for change in changes) == [f"j{n}" for n in range(5)]
    assert all(isinstance(change, Start) for change in changes)


# ---- the view's indexes -------------------------------------------------------------------------


def test_the_views_indexes_forget_each_rendition_device_owner_and_pool_once_its_jobs_go() -> None:
    # Given jobs of many devices and owners, attached, waiting and pending, with leases
    view = view_of()
    assert view.leases is not None
    renditions = []
    for n in range(20):
        job = a_job(f"j{n}", owner=f"u{n}", device=f"d{n}")
        r = a_rendition(job, R.PENDING, pool=f"p{n}")
        renditions.append(r.key)
        view.renditions.apply(r.key, r, 1)
        view.jobs.apply(job.id, on(job, r), 1)
        view.jobs.apply(f"w{n}", a_job(f"w{n}", owner=f"u{n}", device=f"d{n}"), 1)
        lease = Lease(generation=r.generation, since=NOW, rendition=r.key, pool=f"p{n}")
        view.leases.leases.apply(slot_key(f"p{n}", 0), lease, 1)
    assert view.active_count("u3") == 1 and view.pending_pools()

    # When every job, rendition and lease is deleted
    for n, key in enumerate(renditions):
        view.leases.leases.apply(slot_key(f"p{n}", 0), None, 2)
        view.jobs.apply(f"j{n}", None, 2)
        view.jobs.apply(f"w{n}", None, 2)
        view.renditions.apply(key, None, 2)

    # Then no index keeps an empty entry behind
    indexes: dict[str, dict[Any, Any]] = {
        "by rendition": view._by_rendition,
        "by device": view._by_device,
        "admitted": view._admitted,
        "waiting": view._waiting,
        "pending": view._pending,
        "leases of pool": view.leases.of_pool,
        "lease keys of rendition": view.leases.keys_of,
        "busy clients": view.leases.busy,
        "slots": view.leases.slots,
    }
    assert {name: index for name, index in indexes.items() if index} == {}
    assert view.active_count("u3") == 0 and view.waiting_in_order("u3") == []
    assert view.pending_pools() == set() and view.jobs_of_rendition("x") == []


# ---- split renditions: their parts leased, published, joined, failed, cancelled, dropped -------


class Segment(msgspec.Struct, frozen=True):
    index: int
    start: float
    end: float | None
    frames: int


def split_film(
    job_id: str = "film",
    *,
    segments: int = 3,
    age: float = 60.0,
    pool: str = "default",
    **changes: Any,
) -> tuple[JobRecord, Rendition, list[Part]]:
    """A running job whose rendition a transcoder split into an audio part, `segments` spans of
    video and a join, all pending."""
    job, r = pending(job_id, age=age, pool=pool, **changes)
    split = Split(
        segments=segments,
        audio=True,
        seconds=60.0 * segments,
        encoder="libx264",
        segment_seconds=60.0,
        at=NOW - 30,
    )
    r = msgspec.structs.replace(r, state=R.RUNNING, split=split, worker=None)
    spans = [
        Segment(n, 60.0 * n, 60.0 * (n + 1) if n + 1 < segments else None, 1440)
        for n in range(segments)
    ]
    return on(job, r, J.RUNNING), r, jobstate.new_parts(r, split, spans, NOW - 30)


def done(p: Part) -> Part:
    output = Output(blob=f"parts/{p.name}", size=1, sha256="0" * 64, container="mp4", mime="x")
    return msgspec.structs.replace(p, state=R.DONE, output=output, attempt=1)


def named(parts: list[Part], *names: str) -> list[Part]:
    return [p for p in parts if p.name in names]


def parts_out(changes: list[Change]) -> list[str]:
    """The parts whose work is published, by name, in order."""
    out = []
    for change in changes:
        then = change.then if isinstance(change, Claim) else change
        if isinstance(then, PublishPart):
            out.append(then.part.name)
    return out


def part_lease(r: Rendition, name: str, **changes: Any) -> Lease:
    return Lease(
        generation=r.generation, since=NOW - 5, rendition=r.key, pool=r.pool, part=name, **changes
    )


def test_a_split_renditions_parts_are_leased_under_the_pools_limit_audio_first() -> None:
    # Given a film split into audio, three spans of video and a join, in a pool of two slots
    job, r, parts = split_film()
    view = view_of([job], [r], parts=parts)

    # When the scheduler looks
    changes = decide(view, NOW, settings(max_concurrent_jobs=2))

    # Then the audio and the first span take the two slots, as segment work of the film
    assert parts_out(changes) == ["audio", "v0000"]
    claims = of_kind(changes, Claim)
    assert [c.key for c in claims] == [slot_key("default", 0), slot_key("default", 1)]
    assert [c.lease.part for c in claims] == ["audio", "v0000"]
    work = claims[1].then.work
    assert isinstance(work, SegmentWork) and work.kind == "video" and work.encoder == "libx264"
    assert (work.key, work.part, work.start, work.end, work.jobs) == (
        r.key,
        "v0000",
        0.0,
        60.0,
        ["film"],
    )
    assert work.dispatch_seq == 1


def test_a_split_renditions_own_lease_is_released_and_its_parts_take_slots_of_their_own() -> None:
    # Given the film's planner still holding the pool's one slot after it split the film
    job, r, parts = split_film()
    lease = Lease(generation=1, since=NOW - 5, rendition=r.key, pool="default")
    view = view_of([job], [r], parts=parts, leases={slot_key("default", 0): lease})

    # When the scheduler looks
    changes = decide(view, NOW, settings(max_concurrent_jobs=1))

    # Then the rendition's lease goes, and its first part takes the slot
    assert changes[0] == Release(slot_key("default", 0), 1)
    assert parts_out(changes) == ["audio"]


def test_a_parts_lease_is_held_while_it_runs_and_released_once_it_is_stored() -> None:
    job, r, parts = split_film()
    running = [
        msgspec.structs.replace(p, state=R.RUNNING) if p.name == "audio" else p for p in parts
    ]
    leases = {slot_key("default", 0): part_lease(r, "audio")}
    view = view_of([job], [r], parts=running, leases=leases)
    assert decide(view, NOW, settings(max_concurrent_jobs=1)) == []

    stored = [done(p) if p.name == "audio" else p for p in parts]
    view = view_of([job], [r], parts=stored, leases=leases)
    changes = decide(view, NOW, settings(max_concurrent_jobs=1))
    assert changes[0] == Release(slot_key("default", 0), 1)
    assert parts_out(changes) == ["v0000"]


def test_the_join_is_published_only_when_every_other_part_is_stored() -> None:
    # Given a film whose audio and first two spans are stored and whose last span still runs
    job, r, parts = split_film()
    last = named(parts, "v0002")[0]
    stored = [done(p) for p in named(parts, "audio", "v0000", "v0001")]
    running = msgspec.structs.replace(last, state=R.RUNNING)
    join = named(parts, "join")
    leases = {slot_key("default", 0): part_lease(r, "v0002")}

    # Then the join waits, though a slot is free
    view = view_of([job], [r], parts=[*stored, running, *join], leases=leases)
    assert parts_out(decide(view, NOW, settings(max_concurrent_jobs=2))) == []

    # When the last span is stored too, the join is published, once, as join work
    view = view_of([job], [r], parts=[*stored, done(last), *join], leases=leases)
    changes = decide(view, NOW, settings(max_concurrent_jobs=2))
    assert parts_out(changes) == ["join"]
    [claim] = of_kind(changes, Claim)
    assert isinstance(claim.then.work, JoinWork) and claim.then.work.key == r.key


def test_another_clients_job_goes_ahead_of_a_films_next_segment() -> None:
    # Given a film of one client split into parts, and a younger job of another client
    film_job, film, parts = split_film(age=100)
    job, other = pending("other", age=10)
    view = view_of([film_job, job], [film, other], parts=parts)

    # When two slots are free
    changes = decide(view, NOW, settings(max_concurrent_jobs=2))

    # Then the film's first part and the other client's job take them; the film's next waits
    assert parts_out(changes) == ["audio"]
    assert [c.then.work.key for c in of_kind(changes, Claim)] == [film.key, other.key]


def test_a_clients_job_queued_behind_its_own_film_gets_the_next_free_slot() -> None:
    # Given a film split into parts, its audio running in one of the pool's two slots, and a
    # younger whole job of the same client (the same device) queued after it
    film_job, film, parts = split_film(age=100)
    running = [
        msgspec.structs.replace(p, state=R.RUNNING) if p.name == "audio" else p for p in parts
    ]
    job, short = pending("short", age=10, first_device="dev-film")
    leases = {slot_key("default", 0): part_lease(film, "audio")}
    view = view_of([film_job, job], [film, short], parts=running, leases=leases)

    # When the other slot is free, the whole job takes it: the film's next part waits
    changes = decide(view, NOW, settings(max_concurrent_jobs=2))
    assert [c.then.work.key for c in of_kind(changes, Claim)] == [short.key]
    assert parts_out(changes) == []

    # Then a slot nobody else wants still goes to the film's next part
    changes = decide(view, NOW, settings(max_concurrent_jobs=3))
    assert [c.then.work.key for c in of_kind(changes, Claim)] == [short.key, film.key]
    assert parts_out(changes) == ["v0000"]


def test_a_started_by_hand_film_runs_one_part_beyond_the_limit_the_rest_in_slots() -> None:
    job, r, parts = split_film(manual=True)
    changes = decide(view_of([job], [r], parts=parts), NOW, settings(max_concurrent_jobs=1))
    claims = of_kind(changes, Claim)
    assert [c.lease.part for c in claims] == ["audio", "v0000"]
    assert claims[0].key == manual_key("default", parts[0].key) and claims[0].lease.manual
    assert claims[1].key == slot_key("default", 0) and not claims[1].lease.manual


def test_a_part_that_failed_for_good_fails_its_rendition_with_its_error() -> None:
    job, r, parts = split_film()
    failed = msgspec.structs.replace(parts[2], state=R.FAILED, last_error=ERROR)
    view = view_of([job], [r], parts=[*parts[:2], failed, *parts[3:]])
    changes = decide(view, NOW, settings(), jobs=[])
    assert FailSplit(r.key, r.generation, failed.key) in changes
    assert failed_with(view, FailSplit(r.key, r.generation, failed.key)) == ERROR


def test_an_ended_renditions_live_parts_are_cancelled_then_dropped_with_their_files() -> None:
    # Given a cancelled film with a stored span, a running one and others waiting
    job, r, parts = split_film()
    cancelled = msgspec.structs.replace(r, state=R.CANCELLED, finished_at=NOW - 1)
    stored = done(named(parts, "v0000")[0])
    running = msgspec.structs.replace(named(parts, "v0001")[0], state=R.RUNNING)
    rest = named(parts, "audio", "v0002", "join")
    view = view_of([], [cancelled], parts=[stored, running, *rest])

    # When the scheduler looks, its live parts are cancelled (their transcoders stop)
    [cancel] = decide(view, NOW, settings(), jobs=[])
    assert cancel == CancelParts(r.key, 1, tuple(sorted(p.key for p in [running, *rest])))

    # Then, all ended, their files and the stored source go to storage and the records go
    ended = [msgspec.structs.replace(p, state=R.CANCELLED) for p in [running, *rest]]
    view = view_of([], [cancelled], parts=[stored, *ended])
    [drop] = decide(view, NOW, settings(), jobs=[])
    assert isinstance(drop, DropParts)
    assert drop.blobs == tuple(sorted(["parts/v0000", source_copy_key(r.key, 1)]))
    assert sorted(key for key, _ in drop.revisions) == sorted(p.key for p in parts)


def test_parts_of_a_renewed_or_vanished_generation_are_cancelled() -> None:
    job, r, parts = split_film()
    renewed = msgspec.structs.replace(r, generation=2, state=R.PENDING, split=None)
    for current in (renewed, None):
        view = view_of([], [current] if current else [], parts=parts)
        [cancel] = of_kind(decide(view, NOW, settings(), jobs=[]), CancelParts)
        assert cancel.generation == 1 and len(cancel.parts) == len(parts)


def test_parts_made_before_their_rendition_is_marked_split_are_left_alone() -> None:
    # The planner creates the parts first, then marks the rendition split
    job, r, parts = split_film()
    planning = msgspec.structs.replace(r, split=None, worker="t1")
    assert decide(view_of([job], [planning], parts=parts), NOW, settings(), jobs=[]) == []


def test_a_join_that_made_its_rendition_done_is_given_time_to_record_itself_done() -> None:
    job, r, parts = split_film()
    finished = msgspec.structs.replace(r, state=R.DONE, output=OUTPUT, finished_at=NOW)
    joining = [
        msgspec.structs.replace(p, state=R.RUNNING) if p.name == "join" else done(p) for p in parts
    ]
    view = view_of([on(job, r, J.COMPLETED)], [finished], parts=joining)
    assert of_kind(decide(view, NOW + 1, settings(), jobs=[]), CancelParts) == []
    later = NOW + JOIN_SETTLE_SECONDS
    [cancel] = of_kind(decide(view, later, settings(), jobs=[]), CancelParts)
    assert cancel.parts == (joining[-1].key,)
    # ...and the join's file, the rendition's output, is never among the parts' blobs
    ended = [*joining[:-1], done(joining[-1])]
    [drop] = of_kind(
        decide(view_of([], [finished], parts=ended), later, settings(), jobs=[]), DropParts
    )
    assert "parts/join" not in drop.blobs


def test_the_views_part_indexes_forget_each_rendition_and_pool_once_its_parts_go() -> None:
    job, r, parts = split_film()
    view = view_of([job], [r], parts=parts)
    assert view.parts is not None and view.pending_pools() == {"default"}
    # the join waits until every other part is stored
    waiting = {p.name for _, p in view.pending_parts_in("default")}
    assert waiting == {"audio", "v0000", "v0001", "v0002"}
    for p in parts:
        view.parts.apply(p.key, None, 2)
    assert view._parts_of == {} and view._pending_parts == {}
    assert view.all_parts_of(r.key) == [] and view.pending_pools() == set()
