"""The gateway's job projection is indexed (by owner, Streamyfin device, status, batch, ...), and
every index stays exact: a job that changes owner, device, status or batch, or is deleted or
purged, moves in or out of each index it belongs to, whichever way the change arrives (the KV
watch, or read-your-writes `apply()` after the gateway's own write), and news older than what the
projection holds changes nothing."""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any, cast

import msgspec
import nats

from services.gateway.state import (
    BY_BATCH,
    BY_CLIENT,
    BY_DEVICE,
    BY_OPENENCODER_ID,
    BY_OWNER,
    BY_RENDITION,
    BY_STATUS,
    JOB_INDEXES,
    job_projection,
)
from shared.messages.records import JobRecord, JobStatus
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection
from tests.harness import eventually, new_namespace
from vidmesh.natsserver import NatsServer

NOW = time.time()


def job(job_id: str, **fields: Any) -> JobRecord:
    base: dict[str, Any] = {
        "id": job_id,
        "owner": "alice",
        "source": f"http://media.example/{job_id}",
        "created_at": NOW,
        "updated_at": NOW,
    }
    return JobRecord(**(base | fields))


def changed(record: JobRecord, **fields: Any) -> JobRecord:
    return msgspec.structs.replace(record, **fields)


def detached() -> Projection[JobRecord]:
    """The gateway's job projection, fed by hand (no bucket behind it)."""
    return job_projection(cast(TypedKV[JobRecord], None))


def ids(projection: Projection[JobRecord], index: str, key: Hashable) -> set[str]:
    return {record.id for record in projection.find(index, key)}


def assert_exact(projection: Projection[JobRecord]) -> dict[str, dict[Hashable, set[str]]]:
    """Every index holds exactly what its key function says of the records held now; returns
    the indexes as the records say they should be."""
    expected: dict[str, dict[Hashable, set[str]]] = {name: {} for name in JOB_INDEXES}
    for key, record in projection.items():
        for name, key_fn in JOB_INDEXES.items():
            for index_key in key_fn(record):
                expected[name].setdefault(index_key, set()).add(key)
    for name, keys in expected.items():
        assert projection.counts(name) == {k: len(v) for k, v in keys.items()}, name
        for index_key, members in keys.items():
            assert set(projection.keys_of(name, index_key)) == members, (name, index_key)
    return expected


def test_a_job_moves_between_index_keys_as_its_owner_device_status_and_batch_change() -> None:
    jobs = detached()
    jobs.apply("j1", job("j1", device_id="phone", client="streamyfin"), 1)
    jobs.apply("j2", job("j2", owner="bob", device_id="tablet"), 1)
    assert ids(jobs, BY_OWNER, "alice") == {"j1"}
    assert ids(jobs, BY_DEVICE, ("phone", JobStatus.QUEUED)) == {"j1"}
    assert ids(jobs, BY_STATUS, JobStatus.QUEUED) == {"j1", "j2"}

    # owner, device, status, batch, rendition all change at once
    moved = changed(
        jobs.get("j1") or job("j1"),
        owner="bob",
        device_id="tablet",
        status=JobStatus.RUNNING,
        batch="b1",
        rendition="r1",
    )
    jobs.apply("j1", moved, 2)

    assert ids(jobs, BY_OWNER, "alice") == set()
    assert ids(jobs, BY_OWNER, "bob") == {"j1", "j2"}
    assert ids(jobs, BY_DEVICE, ("phone", JobStatus.QUEUED)) == set()
    assert ids(jobs, BY_DEVICE, ("tablet", JobStatus.RUNNING)) == {"j1"}
    assert ids(jobs, BY_DEVICE, ("tablet", JobStatus.QUEUED)) == {"j2"}
    assert ids(jobs, BY_STATUS, JobStatus.RUNNING) == {"j1"}
    assert ids(jobs, BY_BATCH, "b1") == {"j1"}
    assert ids(jobs, BY_RENDITION, "r1") == {"j1"}
    assert "alice" not in jobs.counts(BY_OWNER)  # an emptied key is gone, not left at zero
    assert_exact(jobs)

    # leaving a batch and losing a rendition (a restart) takes it out of both
    jobs.apply("j1", changed(moved, batch="", rendition=None, status=JobStatus.QUEUED), 3)
    assert jobs.counts(BY_BATCH) == {}
    assert jobs.counts(BY_RENDITION) == {}
    assert_exact(jobs)


def test_a_deleted_job_leaves_every_index() -> None:
    jobs = detached()
    jobs.apply("j1", job("j1", device_id="phone", batch="b", rendition="r", openencoder_id=7), 1)
    jobs.apply("j2", job("j2", device_id="phone"), 1)

    jobs.apply("j1", None, 2)

    assert jobs.get("j1") is None
    assert ids(jobs, BY_DEVICE, ("phone", JobStatus.QUEUED)) == {"j2"}
    assert jobs.find(BY_OPENENCODER_ID, 7) == []
    assert jobs.counts(BY_BATCH) == {} and jobs.counts(BY_RENDITION) == {}
    assert_exact(jobs)


def test_older_news_applied_late_changes_no_index() -> None:
    jobs = detached()
    jobs.apply("j1", job("j1", status=JobStatus.COMPLETED, owner="bob"), 5)

    jobs.apply("j1", job("j1", status=JobStatus.QUEUED), 4)  # an older revision, arriving late
    jobs.apply("j1", None, 3)  # a delete older than what is held

    assert ids(jobs, BY_STATUS, JobStatus.COMPLETED) == {"j1"}
    assert ids(jobs, BY_OWNER, "bob") == {"j1"}
    assert jobs.count(BY_STATUS, JobStatus.QUEUED) == 0
    assert_exact(jobs)


def test_jobs_without_a_device_batch_rendition_or_openencoder_id_are_in_none_of_those() -> None:
    jobs = detached()
    jobs.apply("j1", job("j1", client="native"), 1)

    assert jobs.counts(BY_DEVICE) == {}
    assert jobs.counts(BY_BATCH) == {}
    assert jobs.counts(BY_RENDITION) == {}
    assert jobs.counts(BY_OPENENCODER_ID) == {}
    assert jobs.counts(BY_CLIENT) == {"native": 1}
    assert jobs.find_any(BY_STATUS, [JobStatus.QUEUED, JobStatus.QUEUED]) == [jobs.get("j1")]


async def test_the_watch_and_read_your_writes_build_the_same_indexes(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"{new_namespace()}-jobs"
    try:
        store = TypedKV(await js.create_key_value(bucket=bucket, history=5), JobRecord)
        # Given a projection fed by the bucket's watch, and one fed only by our own writes
        watched = job_projection(store)
        await watched.start()
        written = job_projection(store)
        for n in range(40):
            record = job(f"j{n}", owner=f"u{n % 3}", device_id=f"d{n % 5}", batch=f"b{n % 2}")
            await written.create(record.id, record)
        # When jobs change owner, device, status and batch, and some are deleted or purged
        for n in range(0, 40, 2):
            held = written.versioned(f"j{n}")
            assert held is not None
            record = changed(
                held.value,
                owner="u9",
                device_id=f"d{n % 7}",
                status=JobStatus.COMPLETED,
                batch="",
                rendition=f"r{n % 4}",
            )
            await written.update(record.id, record, held.revision)
        for n in range(0, 40, 5):
            held = written.versioned(f"j{n}")
            assert held is not None
            await store.delete(f"j{n}", held.revision)
            written.apply(f"j{n}", None, held.revision + 1)  # as the scheduler's store does
        purged = written.versioned("j3")
        assert purged is not None
        await store.kv.purge("j3")
        written.apply("j3", None, purged.revision + 1)

        # Then the watch's copy has the same records and the same indexes as the writer's
        def same() -> bool:
            return dict(watched.items()) == dict(written.items())

        await eventually(same, timeout=10)
        assert assert_exact(watched) == assert_exact(written)
        assert ids(watched, BY_OWNER, "u9") == {f"j{n}" for n in range(2, 40, 2) if n % 5}

        # And a record the bucket never stored (or lost while the watch was down) leaves every
        # index when the watch re-synchronises
        watched.apply("ghost", job("ghost", owner="u9", device_id="d1"), 1)
        watched.resync()
        await eventually(lambda: watched.get("ghost") is None, timeout=10)
        assert "ghost" not in watched.keys_of(BY_OWNER, "u9")
        assert_exact(watched)
        await watched.stop()
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


def test_what_is_derived_from_a_job_is_made_again_once_it_changes_and_forgotten_when_it_goes() -> (
    None
):
    jobs = detached()
    jobs.apply("j1", job("j1"), 1)
    made: list[str] = []

    def render(record: JobRecord) -> str:
        made.append(record.status.value)
        return f"{record.id}:{record.status.value}"

    held = jobs.get("j1")
    assert held is not None
    assert jobs.derived("j1", held, "render", render) == "j1:queued"
    assert jobs.derived("j1", held, "render", render) == "j1:queued"
    assert made == ["queued"]  # once per stored version

    jobs.apply("j1", changed(held, status=JobStatus.COMPLETED), 2)
    now = jobs.get("j1")
    assert now is not None
    assert jobs.derived("j1", now, "render", render) == "j1:completed"
    # a record that is not the one held (an older copy) is derived for itself, never mixed up
    assert jobs.derived("j1", held, "render", render) == "j1:queued"
    assert jobs.derived("j1", now, "render", render) == "j1:completed"
    assert made == ["queued", "completed", "queued"]

    jobs.apply("j1", None, 3)
    assert jobs._derived["render"] == {}  # nothing kept for a job that is gone


def test_an_answer_kept_for_index_keys_is_made_again_when_any_job_under_them_moves() -> None:
    jobs = detached()
    jobs.apply("j1", job("j1", device_id="phone"), 1)
    jobs.apply("j2", job("j2", device_id="tablet"), 1)
    keys = (("phone", JobStatus.QUEUED), ("phone", JobStatus.COMPLETED))
    made: list[list[str]] = []

    def answer() -> tuple[list[str], bool]:
        found = sorted(record.id for record in jobs.find_any(BY_DEVICE, keys))
        made.append(found)
        return found, True

    assert jobs.derived_under(BY_DEVICE, keys, "list", answer) == ["j1"]
    assert jobs.derived_under(BY_DEVICE, keys, "list", answer) == ["j1"]
    assert len(made) == 1  # kept

    # another device's job changing leaves it kept
    jobs.apply("j2", job("j2", device_id="tablet", status=JobStatus.COMPLETED), 2)
    assert jobs.derived_under(BY_DEVICE, keys, "list", answer) == ["j1"] and len(made) == 1

    # a job coming under one of the keys, one changing under them, one leaving: made again
    jobs.apply("j2", job("j2", device_id="phone", status=JobStatus.COMPLETED), 3)
    assert jobs.derived_under(BY_DEVICE, keys, "list", answer) == ["j1", "j2"]
    jobs.apply("j1", job("j1", device_id="phone", owner="bob"), 2)  # same keys, other owner
    jobs.derived_under(BY_DEVICE, keys, "list", answer)
    assert len(made) == 3
    jobs.apply("j1", None, 3)
    assert jobs.derived_under(BY_DEVICE, keys, "list", answer) == ["j2"]
    assert len(made) == 4

    # an answer its maker says not to keep is made every time
    def moving() -> tuple[str, bool]:
        made.append([])
        return "running", False

    jobs.derived_under(BY_DEVICE, keys, "moving", moving)
    jobs.derived_under(BY_DEVICE, keys, "moving", moving)
    assert len(made) == 6
