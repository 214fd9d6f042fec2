"""Folding a stream in order, a batch at a time, as the statistics service folds events: every
message is folded once and in stream order, a failed fold is tried again with the same messages
before anything after them, and a consumer that had explicit acks (or two consumers whose folds
one now makes) is taken over from the first message one of them had not acknowledged.

Against a real nats-server: each test has its own limits stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import nats
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from shared.nats.consumer import Consumer, Received
from shared.nats.in_order import InOrderLoops, open_in_order
from tests.harness import eventually, new_namespace
from vidmesh.natsserver import NatsServer


class Note(msgspec.Struct, frozen=True, tag="note"):
    n: int


DECODER = msgspec.json.Decoder(Note)


@pytest_asyncio.fixture
async def js(nats_server: NatsServer) -> AsyncIterator[tuple[NATS, JetStreamContext, str]]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    stream = new_namespace().upper()
    await js.add_stream(StreamConfig(name=stream, subjects=[f"{stream}.>"]))
    yield nc, js, stream
    await js.delete_stream(stream)
    await nc.close()


async def publish(js: JetStreamContext, stream: str, numbers: range) -> None:
    for n in numbers:
        await js.publish(f"{stream}.note", msgspec.json.encode(Note(n)))


def consumer(stream: str, name: str = "folds") -> Consumer[Note]:
    return Consumer.durable(
        stream, name, f"{stream}.>", DECODER, family="event", ack_wait=30.0, max_attempts=3
    )


class Folded:
    """A fold that keeps what it took in, failing the first `fail` times it is called."""

    def __init__(self, fail: int = 0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    async def __call__(self, batch: list[Received[Note]]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("the store is away")
        self.batches.append([received.message.n for received in batch])

    @property
    def numbers(self) -> list[int]:
        return [n for batch in self.batches for n in batch]


async def stopped(loops: InOrderLoops[Note]) -> None:
    loops.stop_fetching()
    await loops.wait_stopped(5)
    await loops.close()


async def test_each_message_is_folded_once_in_order_and_a_batch_acks_them_all(
    js: tuple[NATS, JetStreamContext, str],
) -> None:
    _, jetstream, stream = js
    await publish(jetstream, stream, range(1, 301))
    fold = Folded()
    loops = await open_in_order(consumer(stream), jetstream, "t", fold, batch=64)
    await eventually(lambda: len(fold.numbers) == 300, what="300 notes folded")
    await stopped(loops)

    assert fold.numbers == list(range(1, 301))
    assert max(len(batch) for batch in fold.batches) > 1  # they came together, not one by one
    info = await jetstream.consumer_info(stream, "folds")
    assert info.config.ack_policy == AckPolicy.ALL
    assert info.num_ack_pending == 0 and info.ack_floor.stream_seq == 300


async def test_a_failed_fold_is_tried_again_with_the_same_messages_before_the_next(
    js: tuple[NATS, JetStreamContext, str],
) -> None:
    _, jetstream, stream = js
    await publish(jetstream, stream, range(1, 11))
    fold = Folded(fail=1)
    loops = await open_in_order(consumer(stream), jetstream, "t", fold, batch=64)
    await eventually(lambda: len(fold.numbers) == 10, timeout=15, what="10 notes folded")
    await publish(jetstream, stream, range(11, 21))
    await eventually(lambda: len(fold.numbers) == 20, what="20 notes folded")
    await stopped(loops)

    assert fold.numbers == list(range(1, 21))


async def test_consumers_with_explicit_acks_are_taken_over_from_the_first_one_not_acked(
    js: tuple[NATS, JetStreamContext, str],
) -> None:
    nc, jetstream, stream = js
    await publish(jetstream, stream, range(1, 21))
    # Given two explicit-ack consumers, one that acknowledged 12 messages, one 7
    for name, acked in (("folds", 12), ("history", 7)):
        config = ConsumerConfig(
            durable_name=name,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            filter_subject=f"{stream}.>",
        )
        await jetstream.add_consumer(stream, config=config)
        sub = await jetstream.pull_subscribe_bind(durable=name, stream=stream)
        for msg in await sub.fetch(acked, timeout=5):
            await msg.ack_sync()
        await sub.unsubscribe()

    # When one in-order consumer now folds for both
    fold = Folded()
    loops = await open_in_order(
        consumer(stream), jetstream, "t", fold, batch=64, replaces=["history"]
    )
    await eventually(lambda: fold.numbers[-1:] == [20], what="the last note folded")
    await stopped(loops)

    # Then it starts after what both had acknowledged (folding 8-12 again changes nothing for a
    # fold that remembers what it took in), and the consumer it replaces is gone
    assert fold.numbers == list(range(8, 21))
    try:
        await jetstream.consumer_info(stream, "history")
        raise AssertionError("the replaced consumer is still there")
    except NotFoundError:
        pass
    # ... and a restart goes on from where it got to
    await publish(jetstream, stream, range(21, 24))
    again = Folded()
    loops = await open_in_order(
        consumer(stream), jetstream, "t", again, batch=64, replaces=["history"]
    )
    await eventually(lambda: again.numbers[-1:] == [23], what="the new notes folded")
    await stopped(loops)
    assert again.numbers == [21, 22, 23]
    assert nc.is_connected
