"""The gateway holds its job records packed (deflated JSON) so its memory does not grow by 4 KiB
with every job ever kept: a packed projection answers every read exactly as one holding decoded
records does, whatever mix of new records, changes, deletions and late news it was fed, keeps
a job in well under a KiB, and what it derived from a record stays right however often the
record was decoded again."""

from __future__ import annotations

import random
import time
from collections.abc import Hashable
from typing import Any, cast

import msgspec

from services.gateway.state import (
    BY_DEVICE,
    BY_OWNER,
    BY_RENDITION,
    BY_STATUS,
    JOB_INDEXES,
    _job_shapes,
    job_projection,
)
from shared.messages.records import JobRecord, JobStatus
from shared.nats.kv import TypedKV
from shared.nats.packed import RECENT, Packed
from shared.nats.projection import Projection
from tests.test_projection_indexes import assert_exact, job

NOW = time.time()


def packed() -> Projection[JobRecord]:
    """The gateway's job projection, fed by hand (no bucket behind it)."""
    return job_projection(cast(TypedKV[JobRecord], None))


def plain() -> Projection[JobRecord]:
    """The same projection holding its records decoded."""
    return Projection(cast(TypedKV[JobRecord], None), "plain", indexes=JOB_INDEXES)


def observed(projection: Projection[JobRecord]) -> dict[str, Any]:
    """Everything a reader can ask of the projection."""
    indexes: dict[str, dict[Hashable, list[JobRecord]]] = {}
    for name in JOB_INDEXES:
        counts = projection.counts(name)
        indexes[name] = {
            key: sorted(projection.find(name, key), key=lambda j: j.id) for key in counts
        }
    return {
        "items": dict(projection.items()),
        "versioned": {key: projection.versioned(key) for key, _ in projection.items()},
        "indexes": indexes,
        "len": len(projection),
    }


def test_a_packed_projection_answers_every_read_as_one_holding_decoded_records() -> None:
    # Given the same random history of records fed to a packed and to a plain projection
    rng = random.Random(15)
    shapes = _job_shapes()
    both = (packed(), plain())
    revisions: dict[str, int] = {}
    for step in range(2_000):
        key = f"j{rng.randrange(300)}"
        revision = revisions.get(key, 0) + rng.choice((1, 1, 1, 2))
        late = rng.random() < 0.1  # older news than what is held changes nothing
        if rng.random() < 0.15:
            value = None
        else:
            shape = rng.choice(shapes)
            value = msgspec.structs.replace(
                shape,
                id=key,
                owner=f"u{rng.randrange(5)}",
                device_id=rng.choice(("", "phone", "tablet")),
                status=rng.choice(list(JobStatus)),
                rendition=rng.choice((None, f"r{rng.randrange(40)}", f"r{step}")),
                updated_at=NOW + step,
            )
        applied = revision - 2 if late else revision
        for projection in both:
            projection.apply(key, value, applied)
        if not late:
            revisions[key] = revision

    # Then every read gives the same answer, and every index is exact
    assert observed(both[0]) == observed(both[1])
    assert assert_exact(both[0]) == assert_exact(both[1])


def test_a_finished_job_is_held_in_well_under_a_kib() -> None:
    jobs = packed()
    for n, shape in enumerate(_job_shapes()):
        record = msgspec.structs.replace(
            shape, id=f"{n:08d}-0000-4000-8000-{n:012d}", owner=f"{n:032x}", updated_at=NOW
        )
        jobs.apply(record.id, record, n + 1)
        assert jobs.get(record.id) == record
    held = cast(Packed[JobRecord], jobs._records)
    sizes = {key: len(data) for key, data in held._packed.items()}
    # a completed job with its probe and output is ~2.8 KiB of JSON and ~4 KiB decoded
    assert max(sizes.values()) < 512, sizes


def test_what_is_derived_from_a_job_stays_right_when_it_was_decoded_again() -> None:
    jobs = packed()
    for n in range(RECENT + 50):
        jobs.apply(f"j{n}", job(f"j{n}", rendition=f"r{n}"), 1)
    made: list[str] = []

    def render(record: JobRecord) -> str:
        made.append(record.id)
        return f"{record.id}:{record.status.value}"

    first = jobs.get("j0")
    assert first is not None
    assert jobs.derived("j0", first, "render", render) == "j0:queued"
    for n in range(1, RECENT + 50):  # every other record read: j0 is decoded afresh next time
        jobs.get(f"j{n}")
    again = jobs.get("j0")
    assert again is not None and again is not first and again == first

    # the same stored version: what was derived is kept, for the copy decoded now
    assert jobs.derived("j0", again, "render", render) == "j0:queued"
    assert made == ["j0"]
    # the copy decoded before is not the one held any more: derived for itself, never kept
    assert jobs.derived("j0", first, "render", render) == "j0:queued"
    assert made == ["j0", "j0"]

    # a change is derived again
    jobs.apply("j0", job("j0", status=JobStatus.COMPLETED), 2)
    now = jobs.get("j0")
    assert now is not None
    assert jobs.derived("j0", now, "render", render) == "j0:completed"


def test_a_key_with_one_record_and_then_several_keeps_each_exactly() -> None:
    jobs = packed()
    jobs.apply("a", job("a", rendition="r1", device_id="phone"), 1)
    assert jobs.keys_of(BY_RENDITION, "r1") == {"a"} and jobs.count(BY_RENDITION, "r1") == 1

    jobs.apply("b", job("b", rendition="r1", device_id="phone"), 1)
    jobs.apply("a", job("a", rendition="r1", device_id="phone", owner="bob"), 2)  # stays filed
    assert jobs.keys_of(BY_RENDITION, "r1") == {"a", "b"}
    assert {j.id for j in jobs.find_any(BY_RENDITION, ["r1", "r1"])} == {"a", "b"}

    jobs.apply("a", None, 3)
    assert jobs.keys_of(BY_RENDITION, "r1") == {"b"}
    assert [j.id for j in jobs.find(BY_DEVICE, ("phone", JobStatus.QUEUED))] == ["b"]
    jobs.apply("b", job("b", rendition="r2", device_id="phone"), 2)
    assert jobs.counts(BY_RENDITION) == {"r2": 1}
    assert jobs.find(BY_OWNER, "bob") == []
    assert jobs.count(BY_STATUS, JobStatus.QUEUED) == 1
    assert_exact(jobs)
