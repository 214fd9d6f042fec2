"""Typed KV buckets: reading every record at once gives each key's latest value, never a deleted
one, whatever the bucket's history; a compare-and-set change started from a guess is decided on
the bucket's record whenever the guess was wrong."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from shared.nats.kv import Stale, TypedKV, Versioned
from tests.harness import new_namespace
from vidmesh.natsserver import NatsServer


class Note(msgspec.Struct):
    text: str


class Notes(NamedTuple):
    notes: TypedKV[Note]
    js: JetStreamContext
    bucket: str


@pytest_asyncio.fixture
async def bucket(nats_server: NatsServer) -> AsyncIterator[Notes]:
    """A bucket of notes of its own, keeping 5 revisions of each."""
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    bucket = f"{new_namespace()}-notes"
    try:
        yield Notes(TypedKV(await js.create_key_value(bucket=bucket, history=5), Note), js, bucket)
    finally:
        await js.delete_key_value(bucket)
        await nc.close()


async def test_values_are_each_keys_latest_record_without_the_deleted(
    bucket: Notes,
) -> None:
    notes, js, name = bucket
    # more keys than one read batch, some rewritten, some deleted, one deleted then written
    for n in range(600):
        await notes.put(f"n{n}", Note(text=f"first {n}"))
    for n in range(0, 600, 3):
        await notes.put(f"n{n}", Note(text=f"second {n}"))
    for n in range(0, 600, 10):
        await notes.delete(f"n{n}")
    await notes.put("n0", Note(text="back"))

    found = await notes.values()

    expected = {f"n{n}": Note(text=f"first {n}") for n in range(600)}
    expected.update({f"n{n}": Note(text=f"second {n}") for n in range(0, 600, 3)})
    for n in range(0, 600, 10):
        expected.pop(f"n{n}")
    expected["n0"] = Note(text="back")
    assert found == expected
    # ... and the reader it used is gone
    assert [c.name for c in await js.consumers_info(f"KV_{name}")] == []


async def test_a_write_sent_again_after_it_landed_is_recognised_not_a_conflict(
    bucket: Notes,
) -> None:
    notes, js, name = bucket
    # (what a failover does: the write lands, its answer is lost, and it is sent again)
    first = await notes.create("a", Note(text="one"))
    assert await notes.create("a", Note(text="one")) == first
    with pytest.raises(Stale):
        await notes.create("a", Note(text="other"))
    second = await notes.update("a", Note(text="two"), first)
    assert await notes.update("a", Note(text="two"), first) == second
    with pytest.raises(Stale):
        await notes.update("a", Note(text="three"), first)
    await notes.delete("a", second)
    await notes.delete("a", second)
    assert await notes.get("a") is None


async def test_a_change_from_a_stale_guess_is_decided_on_the_bucket_as_it_is(
    bucket: Notes,
) -> None:
    notes, js, name = bucket
    first = await notes.create("n", Note(text="draft"))
    stale = Versioned(Note(text="draft"), first)
    await notes.update("n", Note(text="ready"), first)  # another writer moved it on

    def publish(note: Note | None) -> Note | None:
        if note is None or note.text != "ready":
            raise ValueError("only a ready note is published")
        return Note(text="published")

    # a refusal on the stale copy is not the answer: the bucket's record is
    done = await notes.replace("n", publish, known=stale)
    assert done.changed and done.record == Note(text="published")
    # "nothing to change" on a stale copy is not the answer either
    unchanged = await notes.replace("n", lambda _note: None, known=stale)
    assert not unchanged.changed and unchanged.record == Note(text="published")
    # and a guess that there is none, when there is one, costs a read, not the record
    guessed = await notes.replace("n", lambda _note: Note(text="new"), absent=True)
    assert guessed.changed and guessed.before is not None
    assert guessed.before.value == Note(text="published")
