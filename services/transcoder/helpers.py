"""What runs beside ffmpeg for any work item, a whole rendition's or one part's: the heartbeat
that keeps JetStream from handing the work to another transcoder, the watch on a record that says
when the work stopped being ours, the race between the encode and those two, and how an attempt
that did not succeed is settled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import msgspec
import structlog
from nats.js.kv import KV_DEL, KV_PURGE

from services.transcoder.attempt import Lost, TranscodeFailed
from services.transcoder.config import TranscoderSettings
from services.transcoder.limits import time_limit
from services.transcoder.progress import ProgressReporter
from services.transcoder.sessions import SessionRecorder
from services.transcoder.source_proxy import SourceAccess, SourceProxy, SourceRefused
from shared.errors import SourceError
from shared.media import make_plan, probe_async
from shared.media.plan import Plan
from shared.media.probe import ProbeResult
from shared.media.profiles import ContainerSpec, Profile
from shared.messages.fleet import SessionState
from shared.messages.records import Output, Split
from shared.nats.consumer import ABANDON, ACK, Received, Settle
from shared.nats.kv import TypedKV
from shared.nats.topology import describe
from shared.sources import scrub
from shared.tasks import stop_tasks
from shared.wire import JobError

log = structlog.get_logger("vidmesh.transcoder")

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)
# What an attempt that succeeded made: a stored output, or its rendition split into parts.
Made = TypeVar("Made", bound=Output | Split)


async def heartbeat(received: Received[Any], lost: asyncio.Future[str], ack_wait: float) -> None:
    """Tell JetStream we are alive; give up ownership once we could not for a whole ack_wait."""
    interval = ack_wait / 3
    last_ok = time.monotonic()
    while True:
        await asyncio.sleep(interval)
        try:
            await received.in_progress()
            last_ok = time.monotonic()
        except Exception as exc:
            log.warning("work.heartbeat_failed", **describe(exc))
            if time.monotonic() - last_ok > ack_wait and not lost.done():
                lost.set_result("heartbeat lost")
                return


async def watch_key(
    kv: TypedKV[S], key: str, why_not_ours: Callable[[S], str | None], lost: asyncio.Future[str]
) -> None:
    """Settle `lost` when the record at `key` stops being ours: deleted ("cancelled"), or a value
    for which `why_not_ours` gives a reason (None: still ours). Reconnects a broken watch."""
    while not lost.done():
        try:
            watcher = await kv.kv.watch(key)
        except Exception as exc:
            log.debug("work.watch_failed", **describe(exc))
            await asyncio.sleep(1.0)
            continue
        try:
            async for entry in watcher:
                if entry is None:
                    continue
                if entry.operation in (KV_DEL, KV_PURGE) or not entry.value:
                    reason: str | None = "cancelled"
                else:
                    reason = why_not_ours(kv.decode(entry.value))
                if reason is None:
                    continue
                if not lost.done():
                    lost.set_result(reason)
                return
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]


async def outrun(work: asyncio.Task[T], lost: asyncio.Future[str], limit: float | None) -> T:
    """The work's result, unless the work stopped being ours first (Lost) or ran past `limit`
    seconds (TranscodeFailed; the work is stopped, which kills its ffmpeg)."""
    racers: set[asyncio.Future[Any]] = {work, lost}
    done, _ = await asyncio.wait(racers, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
    if not done:
        await stop_tasks([work])  # kills ffmpeg, removes the scratch file
        raise TranscodeFailed(time_limit(limit or 0.0))
    if not work.done():
        raise Lost(lost.result())
    return work.result()


async def probe_source(access: SourceAccess, source: str, timeout: float) -> ProbeResult | None:
    """What the source is; None when the probe could not tell (ffmpeg has the last word on
    whether it is readable). A connection the source policy refuses fails the attempt."""
    try:
        # PyAV's own proxy, which verifies https servers as PyAV does not for nested URLs
        async with access.probe_proxy() as checking:
            options = access.probe_options(source, checking)
            return await checking.guarded(probe_async(source, timeout=timeout, options=options))
    except SourceError as exc:
        log.warning("probe.failed", error=scrub(exc.message))
        return None
    except SourceRefused as exc:
        raise TranscodeFailed(exc.error) from exc


def plan_of(probe: ProbeResult | None, profile: Profile, container: ContainerSpec) -> Plan:
    """What the attempt does with each stream; a source no plan fits fails it for good."""
    try:
        return make_plan(probe, profile, container)
    except SourceError as exc:
        raise TranscodeFailed(
            JobError(code="source_unsuitable", reason=exc.message, retryable=False)
        ) from exc


class Attempt:
    """One attempt at a work item: the encode (`run`, given the attempt's source proxy) raced
    against losing the work, with its helpers beside it; what did not succeed is settled here."""

    def __init__(
        self,
        received: Received[Any],
        settings: TranscoderSettings,
        access: SourceAccess,
        *,
        reporter: ProgressReporter,
        session: SessionRecorder,
        watch: Callable[[asyncio.Future[str]], Coroutine[Any, Any, None]],
        fail: Callable[[JobError], Awaitable[Settle]],
        hand_back: Callable[[], Awaitable[None]],
    ) -> None:
        self.received = received
        self.ack_wait = settings.ack_wait
        self.limit = settings.max_transcode_seconds
        self.access = access
        self.reporter = reporter
        self.session = session
        self.watch = watch
        self.fail = fail
        self.hand_back = hand_back

    async def run(
        self, encode: Callable[[SourceProxy], Coroutine[Any, Any, Made]]
    ) -> Made | Settle:
        """The stored output (or the split), or how to settle the work item when there is
        none."""
        session = self.session
        lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        helpers = [
            asyncio.create_task(heartbeat(self.received, lost, self.ack_wait)),
            asyncio.create_task(self.watch(lost)),
            asyncio.create_task(self.reporter.run()),
            asyncio.create_task(session.run()),
        ]
        proxy = self.access.proxy()  # every connection of this attempt's ffmpeg
        await proxy.start()
        work = asyncio.create_task(encode(proxy))
        try:
            output = await outrun(work, lost, self.limit)
        except Lost as exc:
            log.info("work.stopped", reason=exc.reason)
            state: SessionState = "cancelled" if exc.reason == "cancelled" else "stopped"
            await session.finish(state, error=exc.reason)
            return ACK if exc.reason == "cancelled" else ABANDON
        except TranscodeFailed as exc:
            await session.finish("failed", error=exc.error.reason)
            return await self.fail(exc.error)
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            await asyncio.shield(session.finish("stopped", error="the transcoder stopped"))
            await asyncio.shield(self.hand_back())
            raise
        except Exception as exc:
            log.exception("work.crashed", **describe(exc))
            error = JobError(
                code="internal_error",
                reason="The transcoder hit an unexpected error.",
                detail=f"{type(exc).__name__}: {exc}",
                retryable=True,
            )
            await session.finish("failed", error=error.reason)
            return await self.fail(error)
        finally:
            await stop_tasks([work, *helpers])
            await proxy.close()
        if isinstance(output, Split):
            await session.finish("succeeded", split=output.segments)
        else:
            await session.finish("succeeded", output=msgspec.to_builtins(output))
        return output
