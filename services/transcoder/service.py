"""The transcoder: pulls work for its pool, one message per free slot, and runs ffmpeg on it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from services.transcoder.config import TranscoderSettings
from services.transcoder.names import OutputNames
from services.transcoder.node import NodeState, export_worker
from services.transcoder.runner import WorkRunner
from services.transcoder.source_proxy import SourceAccess, SourceRefused
from shared.blobs.users import Sealer, Stores, UserStore
from shared.errors import BadRequest, SourceError, StoreError
from shared.fleet import Fleet
from shared.jobs.store import RecordStore
from shared.media import default_ffmpeg, ffmpeg_version, is_http, probe_async
from shared.media.capabilities import CapabilityCache
from shared.media.inputs import without_proxy_bypass
from shared.messages import events as ev
from shared.messages import rpc
from shared.messages.fleet import WorkerInfo
from shared.messages.records import OutputNameClaim, Part, Rendition, RenditionState
from shared.messages.work import WORKS_DECODER, Work
from shared.nats.consumer import Consumer, SlotLoops
from shared.nats.kv import TypedKV
from shared.nats.subjects import Names
from shared.nats.topology import (
    announce,
    describe,
    ensure_topology,
    publish_event,
    retention_of,
)
from shared.runtime import Service
from shared.settings import LiveSettings
from shared.sources import check_local_source, is_object_uri, redact, scrub

log = structlog.get_logger("vidmesh.transcoder")

HEARTBEAT_SECONDS = 5.0
# Scratch folders untouched this long belong to transcoders that died.
STALE_SCRATCH_SECONDS = 86_400.0


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def is_dead_local_worker(worker: str | None) -> bool:
    """Whether `worker` ran on this host as a process that no longer exists."""
    parts = (worker or "").rsplit("-", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


class Transcoder(Service):
    name = "transcoder"
    # Work has a long ack_wait: what a slot's last fetch brings is handed back at once.
    wait_for_last_fetch = True

    def __init__(
        self,
        nc: NATS,
        settings: TranscoderSettings,
        *,
        worker_id: str | None = None,
        own_process: bool = False,
    ) -> None:
        # Running transcodes may finish for `drain_seconds` on a stop, then are handed back.
        super().__init__(grace=settings.drain_seconds, deadline=settings.stop_deadline_seconds)
        self.nc = nc
        self.settings = settings
        self.names = Names(settings.namespace)
        self.worker_id = worker_id or new_worker_id()
        data = Path(settings.data_dir)
        scratch_root = Path(settings.scratch_dir or data / "scratch")
        self.scratch_root = scratch_root
        self.scratch = scratch_root / self.worker_id
        self.ffmpeg = settings.ffmpeg or default_ffmpeg()
        # PyAV reads no_proxy in this process, and ffmpeg inherits it: it would skip the proxy
        without_proxy_bypass()
        self.access = SourceAccess.of(settings.source_policy, settings.source_tls, os.environ)
        self._loops: SlotLoops[Work] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._probes: Subscription | None = None
        # PyAV's nested opens that are not handed the probe's options (a VobSub index's .sub,
        # MLV's chunks...) use the process's `http_proxy`: a checking proxy too, never another.
        # Only a transcoder that is its process (`python -m services.transcoder`) may set it:
        # the environment is the whole process's.
        self._fallback = self.access.probe_proxy() if own_process else None
        self._draining = False
        self._event_seq = 0
        self._last_health: tuple[str, str, tuple[str, ...]] | None = None

    async def start(self) -> None:
        if self._fallback is not None:
            await self._fallback.start()
            os.environ["http_proxy"] = self._fallback.url
        js = self.nc.jetstream()
        buckets = await ensure_topology(
            js,
            self.names,
            replicas=self.settings.replicas,
            retention=retention_of(self.settings),
        )
        self.store = RecordStore(js, self.names, buckets)
        self.workers = TypedKV(buckets.workers, WorkerInfo)
        self.parts = TypedKV(buckets.parts, Part)
        self.stores = Stores(
            self.settings,
            TypedKV(buckets.userstores, UserStore),
            Sealer(self.settings.storage_key),
        )
        self.version = await asyncio.to_thread(ffmpeg_version, self.ffmpeg)
        data = Path(self.settings.data_dir)
        cache_file = Path(self.settings.capabilities_file or data / "capabilities.json")
        self.node = NodeState(
            CapabilityCache(cache_file, self.ffmpeg),
            pool=self.settings.pool,
            worker_id=self.worker_id,
        )
        await self.node.start(self.nc, self.names.capabilities_rpc(self.settings.pool))
        await asyncio.to_thread(self._tidy_scratch)
        self.server = LiveSettings(buckets.serversettings, "transcoder.serversettings", nc=self.nc)
        await self.server.start()
        self.runner = WorkRunner(
            self.store,
            self.stores,
            self.settings,
            worker_id=self.worker_id,
            ffmpeg=self.ffmpeg,
            scratch=self.scratch,
            node=self.node,
            fleet=Fleet(buckets),
            output_names=OutputNames(TypedKV(buckets.outputnames, OutputNameClaim)),
            access=self.access,
            parts=self.parts,
            paths=self.server,
        )
        pool = self.settings.pool
        # Slots bound what runs; max_ack_pending only bounds un-acked items of all transcoders.
        consumer = Consumer.durable(
            self.names.work_stream,
            self.names.transcode_consumer(pool),
            self.names.work(pool),
            WORKS_DECODER,
            family="work",
            ack_wait=self.settings.ack_wait,
            # no attempt cap here: a rendition counts its own attempts (`max_attempts`)
        )
        await consumer.declare(js)
        await self._hand_back_orphans()
        self._loops = await consumer.open(
            js, f"transcoder.{pool}", self.runner, slots=self.settings.slots
        )
        self.consume(self._loops)
        await self._announce(
            ev.WorkerOnline(**self._worker_fields(), slots=self.settings.slots, ffmpeg=self.version)
        )
        self._heartbeat = asyncio.create_task(self._beat(), name="transcoder.heartbeat")
        self._probes = await self.nc.subscribe(
            self.names.probe_rpc, queue="transcoders", cb=self._answer_probe
        )
        log.info(
            "transcoder.started",
            worker=self.worker_id,
            pool=pool,
            slots=self.settings.slots,
            ffmpeg=self.version,
        )

    async def _hand_back_orphans(self) -> None:
        """Work a dead transcoder of this host was running goes back to JetStream now.

        Without this it would wait for ack_wait; a transcoder restarted by `vidmesh up` after a
        crash finds its predecessor's work this way.
        """
        for key in await self.store.renditions.keys():
            found = await self.store.renditions.get(key)
            await self._hand_back_orphan(found.value if found else None, rendition=key)
        for key in await self.parts.keys():
            part = await self.parts.get(key)
            await self._hand_back_orphan(part.value if part else None, part=key)

    async def _hand_back_orphan(self, held: Rendition | Part | None, **ids: str) -> None:
        if held is None or held.state is not RenditionState.RUNNING or not held.ack_subject:
            return
        if is_dead_local_worker(held.worker):
            await self.nc.publish(held.ack_subject, b"-NAK")
            log.info("transcoder.orphan_handed_back", worker=held.worker, **ids)

    async def _answer_probe(self, msg: Msg) -> None:
        """`POST /api/metadata`: probe a source for the gateway, without transcoding it; then
        say that it ran (`probe.finished`: the task history shows it)."""
        started = ev.now()
        request: rpc.ProbeRequest | None = None
        try:
            request = rpc.PROBE_REQUEST.decode(msg.data)
            source = request.source
            if is_object_uri(source):
                source = await self.stores.object_source(request.owner, source, 600)
            elif not is_http(source):
                source = check_local_source(source, self.runner.media_roots(), resolve=True)
            async with self.access.probe_proxy() as proxy:
                options = self.access.probe_options(source, proxy)
                limit = self.settings.probe_timeout
                if request.timeout > 0:
                    limit = min(limit, request.timeout)
                probe = probe_async(source, timeout=limit, options=options)
                reply = rpc.ProbeReply(probe=await proxy.guarded(probe))
        except SourceRefused as exc:
            reply = rpc.ProbeReply(error=exc.reason, code="source_refused")
        except (SourceError, BadRequest, StoreError) as exc:
            timed_out = isinstance(exc.details, dict) and exc.details.get("timed_out") is True
            reply = rpc.ProbeReply(
                error=scrub(exc.message),
                retryable=getattr(exc, "retryable_now", exc.retryable),
                code="timed_out" if timed_out else "",
            )
        except msgspec.DecodeError:
            reply = rpc.ProbeReply(error="The probe request was not understood.")
        if msg.reply:
            await msg.respond(rpc.ENCODER.encode(reply))
        if request is not None:
            await self._announce_probe(request, reply, started)

    async def _announce_probe(
        self, request: rpc.ProbeRequest, reply: rpc.ProbeReply, started: datetime
    ) -> None:
        probe_id = uuid.uuid4().hex
        event = ev.ProbeFinished(
            event_id=f"probe:{probe_id}",
            time=ev.now(),
            probe_id=probe_id,
            owner=request.owner,
            source=redact(request.source),
            ok=reply.probe is not None,
            error=reply.error,
            started_at=started,
        )
        await announce(self.nc.jetstream(), self.names, event)

    def _tidy_scratch(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        now = time.time()
        for folder in self.scratch_root.iterdir():
            with contextlib.suppress(OSError):
                if folder != self.scratch and now - folder.stat().st_mtime > STALE_SCRATCH_SECONDS:
                    shutil.rmtree(folder, ignore_errors=True)

    def ready(self) -> bool:
        """Ready to take work the best way it can: its capability probe is done."""
        return self.node.ready

    def info(self) -> WorkerInfo:
        busy = self._loops.busy if self._loops else 0
        gpu_state, gpu_reason = self.node.gpu_state()
        return WorkerInfo(
            id=self.worker_id,
            host=socket.gethostname(),
            pool=self.settings.pool,
            slots=self.settings.slots,
            busy=busy,
            renditions=sorted(self.runner.running_renditions()),
            jobs=sorted(self.runner.running_job_ids()),
            ffmpeg=self.version,
            started_at=self.started_at,
            updated_at=time.time(),
            draining=self._draining,
            gpu_state=gpu_state,
            gpu_reason=gpu_reason,
            gpu=self.node.gpu,
            pipelines=self.node.pipelines(),
            capabilities_probed_at=self.node.probed_at,
            capabilities_ready=self.node.ready,
            features=["parts"],  # runs SegmentWork and JoinWork
        )

    async def _beat(self) -> None:
        while True:
            try:
                await self.node.read_gpu()
                info = self.info()
                await self.workers.put(self.worker_id, info)
                export_worker(info)
                await self._announce_health(info)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("transcoder.heartbeat_failed", **describe(exc))
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _announce(self, event: ev.WorkerEvent) -> None:
        try:
            await publish_event(self.nc.jetstream(), self.names, event)
        except Exception as exc:
            log.debug("transcoder.event_failed", **describe(exc))

    def _worker_fields(self) -> dict[str, Any]:
        self._event_seq += 1
        return {
            "event_id": f"worker:{self.worker_id}:{self._event_seq}",
            "time": ev.now(),
            "worker_id": self.worker_id,
            "host": self.node.host,
            "pool": self.settings.pool,
        }

    async def _announce_health(self, info: WorkerInfo) -> None:
        """A worker.health_changed event when the GPU state or the offered pipelines change."""
        offered = [p.name for p in info.pipelines if p.offered]
        health = (info.gpu_state, info.gpu_reason, tuple(offered))
        if health == self._last_health:
            return
        first = self._last_health is None
        self._last_health = health
        if first:
            return  # worker.online said how it started
        event = ev.WorkerHealthChanged(
            **self._worker_fields(),
            gpu_state=info.gpu_state,
            gpu_reason=info.gpu_reason,
            pipelines=offered,
        )
        await self._announce(event)

    def stopping(self) -> None:
        """Say so in the heartbeat: the slots stop fetching now, running transcodes go on (with
        their heartbeats) for `drain_seconds`, and are handed back after that."""
        self._draining = True

    async def stop(self) -> None:
        """After the slots: stop answering probes, leave the fleet, tidy the scratch folder."""
        if self._probes is not None:
            with contextlib.suppress(Exception):
                await self._probes.unsubscribe()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        with contextlib.suppress(Exception):
            await self.workers.delete(self.worker_id)
        await self._announce(ev.WorkerOffline(**self._worker_fields()))
        await self.node.stop()
        await self.server.stop()
        await asyncio.to_thread(shutil.rmtree, self.scratch, True)
        await asyncio.to_thread(shutil.rmtree, self.runner.scratch_folder(), True)
        if self._fallback is not None:
            await self._fallback.close()
