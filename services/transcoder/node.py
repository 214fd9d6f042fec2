"""What this transcoder's node can do and how its GPUs are: the capability probe (cached per node,
re-run on request), GPU health read through NVML, and from both the pipelines it offers now."""

from __future__ import annotations

import asyncio
import socket
import time

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import metrics as m
from shared.gpu import GpuMonitor, GpuReport
from shared.media.capabilities import Capabilities, CapabilityCache
from shared.messages.fleet import Capability, GpuState, PipelineState, WorkerInfo
from shared.nats.topology import describe

log = structlog.get_logger("vidmesh.transcoder")

GPU_PIPELINES = ("nvenc", "nvdec")
# how long a pipeline that ran out of room (NVENC sessions) is not offered
FULL_SECONDS = 60.0
# the checks whose failure explains why a pipeline is not there
PIPELINE_NEEDS = {
    "nvenc": ("h264_nvenc", "cuda"),
    "nvdec": ("cuda:h264", "scale_cuda", "cuda"),
    "vaapi": ("h264_vaapi", "vaapi"),
    "qsv": ("h264_qsv", "qsv"),
}


class NodeState:
    """The capability probe and GPU health of this transcoder's node."""

    def __init__(self, cache: CapabilityCache, *, pool: str, worker_id: str) -> None:
        self.cache = cache
        self.pool = pool
        self.worker_id = worker_id
        self.host = socket.gethostname()
        self.gpu_monitor = GpuMonitor()
        self.gpu: GpuReport | None = None
        self.capabilities: Capabilities | None = None
        self._probing: asyncio.Task[None] | None = None
        # pipeline -> (until, why): full for now (NVENC out of sessions), not broken
        self._full: dict[str, tuple[float, str]] = {}
        self._rpc: Subscription | None = None

    async def start(self, nc: NATS, subject: str) -> None:
        """Probe in the background (work runs on the CPU pipeline until it is done) and answer
        re-probe requests for this pool."""
        self._probing = asyncio.create_task(self._probe(refresh=False), name="capabilities")
        self._rpc = await nc.subscribe(subject, cb=self._answer)

    async def stop(self) -> None:
        if self._rpc is not None:
            await self._rpc.unsubscribe()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        self.gpu_monitor.close()

    async def _probe(self, *, refresh: bool) -> None:
        try:
            found = await (self.cache.refresh() if refresh else self.cache.get())
        except Exception as exc:
            log.warning("capabilities.probe_failed", **describe(exc))
            return
        self.capabilities = found
        log.info(
            "capabilities.probed",
            pipelines=found.pipelines(),
            failed=len(found.failed()),
            refresh=refresh,
        )

    async def _answer(self, msg: Msg) -> None:
        await self._probe(refresh=True)
        if msg.reply and self.capabilities is not None:
            reply = Capability(
                host=self.host,
                pool=self.pool,
                worker=self.worker_id,
                capabilities=self.capabilities,
            )
            await msg.respond(msgspec.json.encode(reply))

    async def read_gpu(self) -> GpuReport:
        self.gpu = await self.gpu_monitor.read()
        return self.gpu

    def gpu_state(self) -> tuple[GpuState, str]:
        """none (no GPU: a normal CPU-only node), ok, degraded (throttling), or bad (no GPU
        work is taken)."""
        report = self.gpu
        if report is None or not report.available:
            return "none", report.reason if report else ""
        problems = report.problems()
        if not report.healthy:
            return "bad", "; ".join(problems)
        return ("degraded", "; ".join(problems)) if problems else ("ok", "")

    def pipelines(self) -> list[PipelineState]:
        """Each pipeline the probe found working, and whether it is offered now."""
        if self.capabilities is None:
            return [PipelineState(name="cpu", offered=True, reason="capability probe running")]
        state, reason = self.gpu_state()
        found = self.capabilities.pipelines()
        full = self._full_now()
        offered = []
        for name in found:
            if name in GPU_PIPELINES and state == "bad":
                offered.append(PipelineState(name=name, offered=False, reason=reason))
            elif name in full:
                offered.append(PipelineState(name=name, offered=False, reason=full[name]))
            else:
                offered.append(PipelineState(name=name, offered=True))
        failed = self.capabilities.failed()
        for name, needs in PIPELINE_NEEDS.items():
            if name not in found:
                why = next((f"{n}: {failed[n]}" for n in needs if n in failed), "not found working")
                offered.append(PipelineState(name=name, offered=False, reason=why))
        return offered

    def working(self) -> frozenset[str]:
        """Capability names usable for a job now (GPU ones dropped while the GPU is bad)."""
        if self.capabilities is None:
            return frozenset({"libx264", "libx265", "libsvtav1"})
        working = self.capabilities.working()
        if self.gpu_state()[0] == "bad":
            working = frozenset(n for n in working if "nvenc" not in n and "cuda" not in n)
        if "nvenc" in self._full_now():
            working = frozenset(n for n in working if not n.endswith("_nvenc"))
        return working

    def full_for_now(self, name: str, reason: str, seconds: float = FULL_SECONDS) -> None:
        """The pipeline has no room right now (NVENC out of sessions): not offered for a while,
        then offered again without a re-probe."""
        self._full[name] = (time.monotonic() + seconds, reason)
        log.warning("pipeline.full", name=name, reason=reason, seconds=seconds)

    def _full_now(self) -> dict[str, str]:
        now = time.monotonic()
        self._full = {k: v for k, v in self._full.items() if v[0] > now}
        return {k: why for k, (_, why) in self._full.items()}

    def disable(self, name: str, reason: str) -> None:
        """A pipeline step failed mid-job: stop offering it until the next probe."""
        if self.capabilities is None:
            return  # only the CPU is offered before the probe is done
        self.capabilities = self.cache.disable(name, reason)
        log.warning("capabilities.disabled", name=name, reason=reason)

    @property
    def probed_at(self) -> float | None:
        return self.capabilities.probed_at if self.capabilities else None

    @property
    def ready(self) -> bool:
        return self.capabilities is not None


def export_worker(info: WorkerInfo) -> None:
    """Prometheus gauges from a heartbeat: slots in use and each GPU's health."""
    m.SLOTS_BUSY.labels(info.id, info.pool).set(info.busy)
    for gpu in info.gpu.gpus if info.gpu else []:
        labels = (info.id, str(gpu.index))
        for gauge, value, scale in (
            (m.GPU_UTILIZATION, gpu.utilization_pct, 0.01),
            (m.GPU_ENCODER_UTILIZATION, gpu.encoder_utilization_pct, 0.01),
            (m.GPU_DECODER_UTILIZATION, gpu.decoder_utilization_pct, 0.01),
            (m.GPU_MEMORY_USED, gpu.memory_used_bytes, 1),
            (m.GPU_TEMPERATURE, gpu.temperature_c, 1),
            (m.GPU_POWER, gpu.power_w, 1),
        ):
            if value is not None:
                gauge.labels(*labels).set(value * scale)
        m.GPU_HEALTHY.labels(*labels).set(1 if gpu.healthy else 0)
