"""GPU health for transcoder heartbeats, read through NVML (`nvidia-ml-py`, module `pynvml`).

`GpuMonitor.read()` gives a `GpuReport`: utilisation (including NVENC/NVDEC), memory, temperature,
power, clock-event (throttle) reasons, ECC, encoder sessions and recent XID events per GPU. A node
without a driver or without a GPU gets `available=False` with the reason: that is a normal CPU-only
state, not an error. `assess()` turns the fields into `healthy` and `problems`:

- broken (`healthy=False`): a critical XID (see `CRITICAL_XIDS`) in the last hour, uncorrected
  volatile ECC errors, or a GPU that NVML reports as lost;
- degraded (`healthy=True`, with a problem sentence): clocks slowed by hardware
  (`DEGRADING_CLOCK_EVENTS`); the GPU still works, only slower;
- everything else (idle clocks, software power cap, ...) is reported in `clock_event_reasons` only.

The report types and that verdict live in `shared._gpuhealth` (pure, no NVML reads); this module
reads NVML and re-exports them: import them from here.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pynvml  # type: ignore[import-untyped]
import structlog

from shared._gpuhealth import (
    CRITICAL_XIDS,
    DEGRADING_CLOCK_EVENTS,
    GPU_LOST,
    UNREADABLE,
    XID_WINDOW_S,
    GpuHealth,
    GpuReport,
    XidEvent,
    assess,
    clock_event_names,
)

__all__ = [
    "CRITICAL_XIDS",
    "DEGRADING_CLOCK_EVENTS",
    "GPU_LOST",
    "INIT_RETRY_S",
    "XID_KEEP",
    "XID_WINDOW_S",
    "GpuHealth",
    "GpuMonitor",
    "GpuReport",
    "XidEvent",
    "assess",
    "clock_event_names",
]

log = structlog.get_logger("vidmesh.gpu")

T = TypeVar("T")

XID_KEEP = 20
INIT_RETRY_S = 60.0
_MAX_EVENTS_PER_DRAIN = 256


class GpuMonitor:
    """Reads NVML off the event loop (`asyncio.to_thread`; NVML calls block).

    NVML is initialised once, lazily, on the first read. A failed init is remembered as "not
    available" with its reason, and retried at most every `init_retry_s`. After init it registers
    for critical XID events on every GPU that supports them and drains that event set (0 ms wait)
    on every read, keeping each GPU's XIDs for an hour (at most 20). NVML work is serialised by a
    lock; `close()` shuts NVML down, and a later read initialises it again.
    """

    def __init__(self, *, init_retry_s: float = INIT_RETRY_S) -> None:
        self._lock = threading.Lock()
        self._init_retry_s = init_retry_s
        self._initialised = False
        self._failure = ""
        self._failed_at: float | None = None
        self._driver_version = ""
        self._nvml_version = ""
        self._cuda_driver_version: int | None = None
        self._event_set: Any = None
        self._uuid_by_handle: dict[int, str] = {}
        self._uuid_by_index: dict[int, str] = {}
        self._xids: dict[str, list[XidEvent]] = {}
        self._logged: set[tuple[int, str, int]] = set()

    async def read(self) -> GpuReport:
        """The current report; never raises for a missing driver, GPU or metric."""
        return await asyncio.to_thread(self._read_blocking)

    def close(self) -> None:
        """Free the event set and shut NVML down if this monitor initialised it (idempotent)."""
        with self._lock:
            self._shutdown()

    def _read_blocking(self) -> GpuReport:
        with self._lock:
            if reason := self._ensure_initialised():
                return GpuReport(available=False, reason=reason, read_at=time.time())
            try:
                count = int(pynvml.nvmlDeviceGetCount())
            except pynvml.NVMLError as err:
                self._shutdown()
                self._remember_failure(f"NVML stopped answering ({err})")
                return GpuReport(available=False, reason=self._failure, read_at=time.time())
            self._drain_xid_events()
            gpus = [assess(self._read_gpu(index)) for index in range(count)]
            return GpuReport(
                available=count > 0,
                reason="" if count else "NVIDIA driver loaded, but no GPU found",
                driver_version=self._driver_version,
                nvml_version=self._nvml_version,
                cuda_driver_version=self._cuda_driver_version,
                gpus=gpus,
                read_at=time.time(),
            )

    def _ensure_initialised(self) -> str:
        """Empty when NVML is ready, else why not (a remembered failure until the retry is due)."""
        if self._initialised:
            return ""
        if self._failed_at is not None and time.monotonic() - self._failed_at < self._init_retry_s:
            return self._failure
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            self._remember_failure(_init_failure_reason(err))
            return self._failure
        self._initialised = True
        self._failed_at = None
        self._driver_version = (
            self._metric(-1, "driver_version", pynvml.nvmlSystemGetDriverVersion) or ""
        )
        self._nvml_version = self._metric(-1, "nvml_version", pynvml.nvmlSystemGetNVMLVersion) or ""
        self._cuda_driver_version = self._metric(
            -1, "cuda_driver_version", lambda: int(pynvml.nvmlSystemGetCudaDriverVersion())
        )
        self._register_xid_events()
        log.info("nvml_initialised", driver_version=self._driver_version)
        return ""

    def _remember_failure(self, reason: str) -> None:
        if reason != self._failure:
            log.info("gpu_unavailable", reason=reason)
        self._failure = reason
        self._failed_at = time.monotonic()

    def _shutdown(self) -> None:
        if not self._initialised:
            return
        self._initialised = False
        try:
            if self._event_set is not None:
                pynvml.nvmlEventSetFree(self._event_set)
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.warning("nvml_shutdown_failed", error=str(err))
        self._event_set = None
        self._uuid_by_handle.clear()

    def _register_xid_events(self) -> None:
        try:
            self._event_set = pynvml.nvmlEventSetCreate()
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            log.info("xid_events_unavailable", error=str(err))
            return
        xid_type = pynvml.nvmlEventTypeXidCriticalError
        for index in range(count):
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                uuid = str(pynvml.nvmlDeviceGetUUID(handle))
                if int(pynvml.nvmlDeviceGetSupportedEventTypes(handle)) & xid_type:
                    pynvml.nvmlDeviceRegisterEvents(handle, xid_type, self._event_set)
                    # Events name the device by handle; a GPU off the bus cannot tell its UUID.
                    self._uuid_by_handle[_handle_key(handle)] = uuid
            except pynvml.NVMLError as err:
                log.info("xid_events_unavailable", gpu=index, error=str(err))

    def _drain_xid_events(self) -> None:
        if self._event_set is None:
            return
        for _ in range(_MAX_EVENTS_PER_DRAIN):
            try:
                data = pynvml.nvmlEventSetWait_v2(self._event_set, 0)
            except pynvml.NVMLError_Timeout:
                break
            except pynvml.NVMLError as err:
                log.warning("xid_event_wait_failed", error=str(err))
                break
            if not int(data.eventType) & pynvml.nvmlEventTypeXidCriticalError:
                continue
            xid = int(data.eventData)
            uuid = self._uuid_by_handle.get(_handle_key(data.device), "")
            event = XidEvent(xid=xid, gpu_uuid=uuid, at=time.time(), critical=xid in CRITICAL_XIDS)
            log.warning("gpu_xid", xid=xid, gpu_uuid=uuid, critical=event.critical)
            self._xids.setdefault(uuid, []).append(event)

    def _recent_xids(self, uuid: str) -> list[XidEvent]:
        cutoff = time.time() - XID_WINDOW_S
        kept = [e for e in self._xids.get(uuid, []) if e.at >= cutoff][-XID_KEEP:]
        self._xids[uuid] = kept
        return list(kept)

    def _read_gpu(self, index: int) -> GpuHealth:
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = str(pynvml.nvmlDeviceGetUUID(handle))
            name = str(pynvml.nvmlDeviceGetName(handle))
        except pynvml.NVMLError as err:
            uuid = self._uuid_by_index.get(index, "")
            lost = isinstance(err, pynvml.NVMLError_GpuIsLost)
            problem = GPU_LOST if lost else f"{UNREADABLE} ({err})"
            return GpuHealth(
                index=index,
                uuid=uuid,
                name="",
                xid_events=self._recent_xids(uuid),
                healthy=False,
                problems=[problem],
            )
        self._uuid_by_index[index] = uuid
        gpu = GpuHealth(index=index, uuid=uuid, name=name, xid_events=self._recent_xids(uuid))
        try:
            self._read_metrics(index, handle, gpu)
        except pynvml.NVMLError_GpuIsLost:
            gpu.healthy = False
            gpu.problems = [GPU_LOST]
        return gpu

    def _read_metrics(self, index: int, h: Any, gpu: GpuHealth) -> None:
        """Fill `gpu` one metric at a time; raises only NVMLError_GpuIsLost."""
        nv, metric = pynvml, functools.partial(self._metric, index)
        if (
            rates := metric("utilization", lambda: nv.nvmlDeviceGetUtilizationRates(h))
        ) is not None:
            gpu.utilization_pct = int(rates.gpu)
            gpu.memory_utilization_pct = int(rates.memory)
        # Encoder/decoder utilisation come as [percent, sampling period in microseconds].
        gpu.encoder_utilization_pct = metric(
            "encoder_utilization", lambda: int(nv.nvmlDeviceGetEncoderUtilization(h)[0])
        )
        gpu.decoder_utilization_pct = metric(
            "decoder_utilization", lambda: int(nv.nvmlDeviceGetDecoderUtilization(h)[0])
        )
        if (memory := metric("memory", lambda: nv.nvmlDeviceGetMemoryInfo(h))) is not None:
            gpu.memory_total_bytes = int(memory.total)
            gpu.memory_used_bytes = int(memory.used)
        sensor = nv.NVML_TEMPERATURE_GPU
        gpu.temperature_c = metric(
            "temperature",
            lambda: int(nv.nvmlDeviceGetTemperatureV(h, sensor)),
            lambda: int(nv.nvmlDeviceGetTemperature(h, sensor)),
        )
        # NVML reports power in milliwatts.
        gpu.power_w = metric("power", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000)
        gpu.power_limit_w = metric(
            "power_limit", lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000
        )
        reasons = metric(
            "clock_event_reasons",
            lambda: int(nv.nvmlDeviceGetCurrentClocksEventReasons(h)),
            lambda: int(nv.nvmlDeviceGetCurrentClocksThrottleReasons(h)),
        )
        gpu.clock_event_reasons = clock_event_names(reasons or 0)
        uncorrected, volatile = nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
        gpu.ecc_uncorrected_volatile = metric(
            "ecc", lambda: int(nv.nvmlDeviceGetTotalEccErrors(h, uncorrected, volatile))
        )
        # (session count, average fps, average latency in microseconds)
        if (stats := metric("encoder_stats", lambda: nv.nvmlDeviceGetEncoderStats(h))) is not None:
            gpu.encoder_sessions = int(stats[0])
            gpu.encoder_average_fps = int(stats[1])

    def _metric(self, index: int, name: str, *reads: Callable[[], T]) -> T | None:
        """The first read that the driver has; None when the metric is unavailable.

        Later reads are fallbacks for drivers without the newer function. NVMLError_GpuIsLost
        propagates: the whole GPU is gone, not one metric.
        """
        for read in reads:
            try:
                return read()
            except pynvml.NVMLError_FunctionNotFound:
                continue
            except pynvml.NVMLError_GpuIsLost:
                raise
            except pynvml.NVMLError as err:
                self._log_once(index, name, err)
                return None
        return None

    def _log_once(self, index: int, name: str, err: Any) -> None:
        key = (index, name, int(err.value))
        if isinstance(err, pynvml.NVMLError_NotSupported) or key in self._logged:
            return
        self._logged.add(key)
        log.info("gpu_metric_unavailable", gpu=index, metric=name, error=str(err))


def _handle_key(handle: Any) -> int:
    """A device handle's address, to match event data to a registered GPU."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


def _init_failure_reason(err: Any) -> str:
    if isinstance(err, pynvml.NVMLError_LibraryNotFound):
        return "no NVIDIA driver (NVML library not found)"
    if isinstance(err, pynvml.NVMLError_DriverNotLoaded):
        return "no NVIDIA driver (NVML library found, driver not loaded)"
    if isinstance(err, pynvml.NVMLError_NoPermission):
        return "NVIDIA driver present, but no permission to use NVML"
    return f"NVML could not start ({err})"
