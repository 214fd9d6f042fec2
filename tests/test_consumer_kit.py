"""The consumer kit as a service's handlers and its operator see it: handlers get typed messages
and return a settlement; poison and errors that cannot pass are terminated with one error line,
failing messages stop at the attempt cap, retries wait what the handler asked, every message
gets one info line, and a stop hands back what it cancelled and says so in one summary line.

Against a real nats-server: each test has its own work-queue stream and durable consumer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
import pytest_asyncio
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StreamConfig
from structlog.testing import capture_logs

from shared.errors import NotFound
from shared.messages import commands, webhooks
from shared.nats.consumer import ACK, Consumer, Outcome, Received, Settle, SlotLoops
from shared.nats.subjects import Names
from shared.nats.topology import ensure_topology
from shared.runtime import Service
from tests.harness import drop_namespace, eventually, new_namespace
from vidmesh.natsserver import NatsServer


class KitCommand(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """A command of the test family."""

    command_id: str


class Touch(KitCommand, frozen=True, kw_only=True, tag="kit.touch"):
    """Touch a job; `mode` says how the handler behaves."""

    job_id: str
    mode: str = "ok"


class Forget(KitCommand, frozen=True, kw_only=True, tag="kit.forget"):
    """Another kind the family knows."""

    batch_id: str


DECODER = msgspec.json.Decoder(Touch | Forget)
ENCODER = msgspec.json.Encoder()


@dataclass
class Kit:
    """A stream, a consumer on it, and a handler that records what it was given."""

    nc: NATS
    js: JetStreamContext
    names: Names
    calls: list[tuple[str, int, float]] = field(default_factory=list)  # (job, attempt, when)
    bound: list[dict[str, Any]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def stream(self) -> str:
        return f"{self.names.namespace.upper()}_KIT"

    @property
    def subject(self) -> str:
        return f"{self.names.namespace}.kit.in"

    def consumer(
        self, *, max_attempts: int | None = 3, skip_unknown: bool = False
    ) -> Consumer[Any]:
        return Consumer.durable(
            self.stream,
            "kit",
            f"{self.names.namespace}.kit.>",
            DECODER,
            family="command",
            ack_wait=30.0,
            max_attempts=max_attempts,
            skip_unknown=skip_unknown,
        )

    async def open(self, **options: Any) -> SlotLoops[Any]:
        return await self.consumer(**options).open(self.js, "kit", self.handle)

    async def handle(self, received: Received[Touch | Forget]) -> Settle:
        self.bound.append(structlog.contextvars.get_contextvars())
        match received.message:
            case Forget():
                return ACK
            case Touch(job_id=job_id, mode=mode):
                self.calls.append((job_id, received.attempt, time.monotonic()))
                if mode == "missing":
                    raise NotFound(f"No job {job_id!r}.")
                if mode == "flaky":
                    raise RuntimeError("the store is having a moment")
                if mode == "later" and received.attempt == 1:
                    return Settle(Outcome.RETRY, delay=0.6)
                if mode == "block":
                    self.started.set()
                    await self.release.wait()
                return ACK

    async def send(self, data: bytes | msgspec.Struct) -> None:
        raw = data if isinstance(data, bytes) else ENCODER.encode(data)
        await self.js.publish(self.subject, raw)

    async def drained(self) -> bool:
        """Nothing pending, nothing waiting for an ack (or a delayed redelivery)."""
        info = await self.js.consumer_info(self.stream, "kit")
        return info.num_pending == 0 and info.num_ack_pending == 0

    def of(self, job_id: str) -> list[tuple[str, int, float]]:
        return [call for call in self.calls if call[0] == job_id]


@pytest_asyncio.fixture
async def kit(nats_server: NatsServer) -> AsyncIterator[Kit]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    made = Kit(nc, js, Names(new_namespace()))
    await js.add_stream(
        StreamConfig(
            name=made.stream,
            subjects=[f"{made.names.namespace}.kit.>"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    try:
        yield made
    finally:
        await js.delete_stream(made.stream)
        await nc.close()


def touch(job_id: str, mode: str = "ok") -> Touch:
    return Touch(command_id=f"c-{job_id}", job_id=job_id, mode=mode)


def lines(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_a_message_that_does_not_decode_is_terminated_once_with_one_error_line(
    kit: Kit,
) -> None:
    # Given a consumer
    loops = await kit.open()
    try:
        with capture_logs() as logs:
            # When garbage arrives, then a good message
            await kit.send(b"\x00\xffnot a command{")
            await kit.send(touch("j1"))

            # Then the garbage is gone for good, the good one is handled
            await eventually(lambda: kit.of("j1"), what="the good message")
            await eventually(kit.drained, what="nothing pending")
    finally:
        await loops.cancel(1.0)
        await loops.close()
    (poison,) = lines(logs, "command.poison")
    assert poison["log_level"] == "error" and poison["consumer"] == "kit"
    # ... and only the good one reached the handler, with one info line
    assert [call[0] for call in kit.calls] == ["j1"]
    (handled,) = lines(logs, "command.handled")
    assert handled["outcome"] == "ack" and handled["job_id"] == "j1"


async def test_every_handled_message_gets_one_info_line_with_its_ids_bound_for_the_handler(
    kit: Kit,
) -> None:
    loops = await kit.open()
    try:
        with capture_logs() as logs:
            await kit.send(touch("j2"))
            await kit.send(Forget(command_id="c-b", batch_id="b7"))
            await eventually(
                lambda: len(lines(logs, "command.handled")) == 2, what="two handled lines"
            )
    finally:
        await loops.cancel(1.0)
        await loops.close()
    first, second = lines(logs, "command.handled")
    assert first["log_level"] == "info"
    assert first["outcome"] == "ack" and first["attempt"] == 1 and first["duration_ms"] >= 0
    assert first["job_id"] == "j2" and first["tag"] == "kit.touch" and first["command_id"] == "c-j2"
    assert second["batch_id"] == "b7" and second["tag"] == "kit.forget"
    # ... and the handler's own log lines carry the same ids
    assert kit.bound[0]["job_id"] == "j2" and kit.bound[0]["tag"] == "kit.touch"
    assert kit.bound[1]["batch_id"] == "b7"


async def test_an_error_that_is_not_retryable_is_terminated_not_redelivered(kit: Kit) -> None:
    loops = await kit.open()
    try:
        with capture_logs() as logs:
            # When the handler raises an error that says retrying cannot help (a 404's NotFound)
            await kit.send(touch("gone", "missing"))
            await eventually(lambda: kit.of("gone"), what="the first attempt")

            # Then the message leaves the consumer at once, after one attempt
            await eventually(kit.drained, timeout=5, what="the message terminated")
    finally:
        await loops.cancel(1.0)
        await loops.close()
    assert [attempt for _, attempt, _ in kit.of("gone")] == [1]
    (error,) = lines(logs, "command.not_retryable")
    assert error["log_level"] == "error" and error["error_type"] == "NotFound"
    (handled,) = lines(logs, "command.handled")
    assert handled["outcome"] == "term" and handled["job_id"] == "gone"


async def test_a_message_whose_handler_keeps_failing_stops_at_the_attempt_cap(kit: Kit) -> None:
    # Given a consumer that allows 3 attempts, and a handler that fails every time
    loops = await kit.open(max_attempts=3)
    try:
        with capture_logs() as logs:
            await kit.send(touch("flaky", "flaky"))

            # Then it is tried 3 times (with backoff), then terminated with one error line
            await eventually(lambda: len(kit.of("flaky")) == 3, timeout=15, what="3 attempts")
            await eventually(kit.drained, timeout=5, what="the message terminated")
    finally:
        await loops.cancel(1.0)
        await loops.close()
    assert [attempt for _, attempt, _ in kit.of("flaky")] == [1, 2, 3]
    assert len(lines(logs, "command.failed")) == 2
    (gave_up,) = lines(logs, "command.gave_up")
    assert gave_up["log_level"] == "error" and gave_up["attempts_allowed"] == 3
    outcomes = [entry["outcome"] for entry in lines(logs, "command.handled")]
    assert outcomes == ["retry", "retry", "term"]


async def test_a_retry_waits_the_delay_its_handler_asked_for(kit: Kit) -> None:
    loops = await kit.open()
    try:
        # When the handler asks for the message again in 0.6 s
        await kit.send(touch("later", "later"))
        await eventually(lambda: len(kit.of("later")) == 2, timeout=10, what="the retry")
        await eventually(kit.drained, what="the message acked")
    finally:
        await loops.cancel(1.0)
        await loops.close()
    # Then it came back as the second attempt, no sooner than asked
    (_, first, at_first), (_, second, at_second) = kit.of("later")
    assert (first, second) == (1, 2)
    assert at_second - at_first >= 0.55


async def test_a_kind_this_version_does_not_know_is_skipped_where_newer_producers_may_add_some(
    kit: Kit,
) -> None:
    loops = await kit.open(skip_unknown=True)
    try:
        with capture_logs() as logs:
            await kit.send(b'{"type": "kit.from_the_future", "command_id": "x"}')
            await kit.send(touch("after"))
            await eventually(lambda: kit.of("after"), what="the next message")
            await eventually(kit.drained, what="nothing pending")
    finally:
        await loops.cancel(1.0)
        await loops.close()
    assert not lines(logs, "command.poison")


class KitService(Service):
    """A service whose one consumer is the kit's."""

    name = "kit"

    def __init__(self, kit: Kit, grace: float) -> None:
        super().__init__(grace=grace)
        self.kit = kit

    async def start(self) -> None:
        self.consume(await self.kit.open())


async def test_a_stop_hands_back_what_it_cancelled_and_ends_with_one_summary_line(
    kit: Kit,
) -> None:
    # Given a service handling a message that does not finish within the grace period
    service = KitService(kit, grace=0.3)
    await service.start()
    await kit.send(touch("quick"))
    await eventually(lambda: kit.of("quick"), what="a first message handled")
    await kit.send(touch("stuck", "block"))
    await asyncio.wait_for(kit.started.wait(), 10)

    # When it stops
    with capture_logs() as logs:
        await service.shutdown()

    # Then one summary line says how the stop went
    (summary,) = lines(logs, "service.stopped")
    assert summary["service"] == "kit" and summary["finished_in_time"] is False
    assert (summary["handled"], summary["handed_back"], summary["cancelled"]) == (1, 1, 1)

    # ... and the stuck message was handed back: a new service gets it at once, not after the
    # consumer's ack_wait (30 s)
    kit.release.set()
    successor = KitService(kit, grace=5.0)
    await successor.start()
    await eventually(lambda: len(kit.of("stuck")) == 2, timeout=5, what="the stuck message")
    await eventually(kit.drained, what="the message acked")
    with capture_logs() as logs:
        await successor.shutdown()
    (summary,) = lines(logs, "service.stopped")
    assert summary["finished_in_time"] is True and summary["cancelled"] == 0


async def test_topology_is_ensured_once_per_connection_and_namespace(
    nats_server: NatsServer,
) -> None:
    nc = await nats.connect(nats_server.url)
    names = Names(new_namespace())
    try:
        first, second = await asyncio.gather(
            ensure_topology(nc.jetstream(), names), ensure_topology(nc.jetstream(), names)
        )
        assert first is second
        assert await ensure_topology(nc.jetstream(), names) is first
    finally:
        await drop_namespace(nc, names)
        await nc.close()


def test_a_commands_subject_comes_from_its_tag_and_the_service_that_consumes_it() -> None:
    names = Names("vm")
    cancel = commands.CancelJob(command_id="c", at=0, job_id="j")
    blobs = commands.DeleteBlobs(command_id="c", at=0, blobs=[])
    retry = webhooks.RetryDelivery(command_id="c", at=0, delivery_id="d")
    assert names.command_subject(cancel) == "vm.cmd.scheduler.job_cancel"
    assert names.command_subject(blobs) == "vm.cmd.storage.blobs_delete"
    assert names.command_subject(retry) == "vm.cmd.notifier.webhook_retry_delivery"
