"""GPU health as data: the report types and the pure verdict drawn from their fields.

No NVML reads here (only its clock-event bit constants); `shared.gpu` reads the GPUs and
re-exports every public name here: import them from there.
"""

from __future__ import annotations

import time

import msgspec
import pynvml  # type: ignore[import-untyped]

XID_WINDOW_S = 3600.0
GPU_LOST = "GPU is lost"
UNREADABLE = "GPU unreadable"

CRITICAL_XIDS: dict[int, str] = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint/warning",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remap recorded, reset needed",
    64: "ECC page retirement or row remap failed",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
}
"""XIDs that make a GPU unhealthy for an hour, with a short meaning (NVIDIA's XID catalogue)."""

DEGRADING_CLOCK_EVENTS: dict[str, str] = {
    "hw_slowdown": "clocks slowed by hardware (hw_slowdown)",
    "hw_thermal_slowdown": "clocks slowed by hardware: GPU too hot (hw_thermal_slowdown)",
    "hw_power_brake_slowdown": "clocks slowed by an external power brake (hw_power_brake_slowdown)",
}
"""Clock-event reasons that add a problem sentence but leave the GPU healthy (degraded)."""

_CLOCK_EVENT_BITS: tuple[tuple[int, str], ...] = (
    (pynvml.nvmlClocksEventReasonGpuIdle, "gpu_idle"),
    (pynvml.nvmlClocksEventReasonApplicationsClocksSetting, "applications_clocks_setting"),
    (pynvml.nvmlClocksEventReasonSwPowerCap, "sw_power_cap"),
    (pynvml.nvmlClocksEventReasonHwSlowdown, "hw_slowdown"),
    (pynvml.nvmlClocksEventReasonSyncBoost, "sync_boost"),
    (pynvml.nvmlClocksEventReasonSwThermalSlowdown, "sw_thermal_slowdown"),
    (pynvml.nvmlClocksEventReasonHwThermalSlowdown, "hw_thermal_slowdown"),
    (pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown, "hw_power_brake_slowdown"),
    (pynvml.nvmlClocksEventReasonDisplayClockSetting, "display_clock_setting"),
    (pynvml.nvmlClocksThrottleReasonBoardLimit, "board_limit"),
    (pynvml.nvmlClocksThrottleReasonReliability, "reliability"),
)
_KNOWN_CLOCK_EVENTS = sum(bit for bit, _ in _CLOCK_EVENT_BITS)  # distinct single bits


class XidEvent(msgspec.Struct, kw_only=True, frozen=True):
    """An XID error NVML reported for a GPU; `critical` when the XID is in `CRITICAL_XIDS`."""

    xid: int
    gpu_uuid: str
    at: float
    critical: bool


class GpuHealth(msgspec.Struct, kw_only=True):
    """One GPU as last read. A metric the GPU or driver does not support stays None."""

    index: int
    uuid: str
    name: str
    utilization_pct: int | None = None
    memory_utilization_pct: int | None = None
    encoder_utilization_pct: int | None = None
    decoder_utilization_pct: int | None = None
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    temperature_c: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    clock_event_reasons: list[str] = []
    ecc_uncorrected_volatile: int | None = None
    encoder_sessions: int | None = None
    encoder_average_fps: int | None = None
    xid_events: list[XidEvent] = []
    healthy: bool = True
    problems: list[str] = []


class GpuReport(msgspec.Struct, kw_only=True):
    """What NVML says about this node's GPUs; `available=False` (see `reason`) is CPU-only."""

    available: bool
    reason: str = ""
    driver_version: str = ""
    nvml_version: str = ""
    cuda_driver_version: int | None = None
    gpus: list[GpuHealth] = []
    read_at: float = 0.0

    @property
    def healthy(self) -> bool:
        """True when GPUs are available and every one of them is healthy."""
        return self.available and all(gpu.healthy for gpu in self.gpus)

    def problems(self) -> list[str]:
        """Every GPU's problems, prefixed with the GPU; a CPU-only node has none (see `reason`)."""
        return [f"GPU {gpu.index} ({gpu.name}): {p}" for gpu in self.gpus for p in gpu.problems]


def assess(gpu: GpuHealth, *, now: float | None = None) -> GpuHealth:
    """A copy of `gpu` with `healthy` and `problems` derived from its fields (see `shared.gpu`).

    Pure given `now` (default: the current time). "GPU is lost" and "GPU unreadable" sentences,
    which come from reading rather than from fields, are kept, so assessing twice changes nothing.
    """
    now = time.time() if now is None else now
    problems = [p for p in gpu.problems if p == GPU_LOST or p.startswith(UNREADABLE)]
    healthy = not problems
    recent: dict[int, int] = {}
    for event in gpu.xid_events:
        if event.critical and now - event.at <= XID_WINDOW_S:
            recent[event.xid] = recent.get(event.xid, 0) + 1
    for xid, count in recent.items():
        meaning = CRITICAL_XIDS.get(xid, "see NVIDIA's XID catalogue")
        times = f", {count} times in the last hour" if count > 1 else ""
        problems.append(f"critical XID {xid} ({meaning}){times}")
        healthy = False
    if gpu.ecc_uncorrected_volatile:
        problems.append(
            f"{gpu.ecc_uncorrected_volatile} uncorrected ECC errors since the driver loaded"
        )
        healthy = False
    problems += [
        DEGRADING_CLOCK_EVENTS[r] for r in gpu.clock_event_reasons if r in DEGRADING_CLOCK_EVENTS
    ]
    return msgspec.structs.replace(gpu, healthy=healthy, problems=problems)


def clock_event_names(mask: int) -> list[str]:
    """Readable names for an NVML clock-event (throttle) reason bitmask; unknown bits as hex."""
    names = [name for bit, name in _CLOCK_EVENT_BITS if mask & bit]
    if unknown := mask & ~_KNOWN_CLOCK_EVENTS:
        names.append(f"unknown_{unknown:#x}")
    return names
