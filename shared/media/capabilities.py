"""Which encoders, decoders, hardware accelerations and filters really work on this node.

`ffmpeg -encoders` and NVML say what is compiled in or plugged in, not what opens: an H100 lists
h264_nvenc but has no NVENC, and an old driver refuses the NVENC API this build asks for. So each
capability is tried with a tiny real run, and a failure keeps the stderr line that says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from shared.media.ffmpeg import FfmpegResult, FfmpegRun, ffmpeg_version

CheckKind = Literal["encoder", "decoder", "hwaccel", "filter"]

DEFAULT_CHECKS: tuple[tuple[str, CheckKind], ...] = (
    ("libx264", "encoder"),
    ("libx265", "encoder"),
    ("libsvtav1", "encoder"),
    ("h264_nvenc", "encoder"),
    ("hevc_nvenc", "encoder"),
    ("av1_nvenc", "encoder"),
    ("h264_vaapi", "encoder"),
    ("hevc_vaapi", "encoder"),
    ("h264_qsv", "encoder"),
    ("hevc_qsv", "encoder"),
    ("cuda", "hwaccel"),
    ("vaapi", "hwaccel"),
    ("qsv", "hwaccel"),
    ("cuda:h264", "decoder"),
    ("cuda:hevc", "decoder"),
    ("cuda:av1", "decoder"),
    ("vaapi:h264", "decoder"),
    ("qsv:h264", "decoder"),
    ("scale_cuda", "filter"),
    ("scale_vaapi", "filter"),
    ("scale_qsv", "filter"),
)

VAAPI_DEVICE = "/dev/dri/renderD128"
REASON_MAX_CHARS = 200
_KILL_GRACE_SECONDS = 5.0
_SOURCE = ["-f", "lavfi", "-i", "color=size=256x144:rate=25:duration=0.2"]
# NVDEC refuses HEVC below 144 lines and AV1 below 128: the decode samples are larger
_SAMPLE_SOURCE = "testsrc2=size=320x240:rate=25:duration=0.2"
_SAMPLE_ENCODERS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}
_INIT_DEVICE = {"cuda": "cuda=hw", "vaapi": f"vaapi=hw:{VAAPI_DEVICE}", "qsv": "qsv=hw"}
_UPLOAD = {"cuda": "hwupload_cuda", "vaapi": "hwupload", "qsv": "hwupload=extra_hw_frames=16"}
_SUFFIX_DEVICE = {"nvenc": "cuda", "cuda": "cuda", "vaapi": "vaapi", "qsv": "qsv"}
# the checks a pipeline stands on: disabling the pipeline disables them ("nvenc": every *_nvenc)
_PIPELINE_CHECKS = {
    "nvdec": ("cuda:h264", "scale_cuda"),
    "vaapi": ("h264_vaapi",),
    "qsv": ("h264_qsv",),
    "cpu": ("libx264",),
}

_CheckRunner = Callable[[str, "CheckKind"], Coroutine[Any, Any, "CapabilityCheck"]]


class CapabilityCheck(msgspec.Struct, kw_only=True, frozen=True):
    """One capability tried on this node: whether it worked, and if not, why."""

    name: str  # "libx264", "h264_nvenc", "cuda", "cuda:h264" (<hwaccel>:<codec>), "scale_cuda"
    kind: CheckKind
    ok: bool
    reason: str = ""  # the stderr line that says why it failed, at most REASON_MAX_CHARS
    seconds: float = 0.0


class Capabilities(msgspec.Struct, kw_only=True, frozen=True):
    """What one ffmpeg binary can really do on one node, found by trying each capability."""

    ffmpeg: str
    ffmpeg_version: str
    probed_at: float  # Unix time
    host: str
    checks: list[CapabilityCheck]

    def working(self) -> frozenset[str]:
        """The names of the checks that worked."""
        return frozenset(check.name for check in self.checks if check.ok)

    def failed(self) -> dict[str, str]:
        """Why each failed check failed, by name."""
        return {check.name: check.reason for check in self.checks if not check.ok}

    def pipelines(self) -> list[str]:
        """The usable transcode pipelines, best first; "cpu" (libx264) is always last."""
        ok = self.working()
        found = []
        if any(name.endswith("_nvenc") for name in ok):
            found.append("nvenc")
        # GPU decode and scale, CPU encode: what an H100 (NVDEC, no NVENC) can do
        if {"cuda:h264", "scale_cuda"} <= ok:
            found.append("nvdec")
        if "h264_vaapi" in ok:
            found.append("vaapi")
        if "h264_qsv" in ok:
            found.append("qsv")
        if "libx264" in ok:
            found.append("cpu")
        return found


async def probe_capabilities(
    ffmpeg: str,
    *,
    timeout: float = 20.0,
    parallel: int = 2,
    checks: Sequence[tuple[str, CheckKind]] | None = None,
) -> Capabilities:
    """Try each check (DEFAULT_CHECKS unless given) with a tiny ffmpeg run, `parallel` at a time,
    each killed after `timeout` s. Checks that need a hardware device whose own check failed are
    not run and carry the device's reason. Raises OSError/CalledProcessError if ffmpeg cannot run.
    """
    if timeout <= 0 or parallel < 1:
        raise ValueError("timeout must be positive and parallel at least 1")
    wanted = list(dict.fromkeys(DEFAULT_CHECKS if checks is None else checks))
    version = await asyncio.to_thread(ffmpeg_version, ffmpeg)
    probed_at = time.time()
    slots = asyncio.Semaphore(parallel)
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="vidmesh-capabilities-"))
    samples = _Samples(ffmpeg, workdir, timeout)

    async def in_slot(name: str, kind: CheckKind) -> CapabilityCheck:
        async with slots:
            return await _try_check(ffmpeg, name, kind, samples, timeout)

    try:
        # devices first: on a node without one, what needs it is not worth trying
        devices = await _run_all(in_slot, [(n, k) for n, k in wanted if k == "hwaccel"])
        down = {check.name: check.reason for check in devices if not check.ok}
        skipped: list[CapabilityCheck] = []
        to_run: list[tuple[str, CheckKind]] = []
        for name, kind in wanted:
            device = _device_of(name, kind)
            if kind == "hwaccel":
                continue
            if device in down:
                reason = _trim(f"{device} unavailable: {down[device]}")
                skipped.append(CapabilityCheck(name=name, kind=kind, ok=False, reason=reason))
            else:
                to_run.append((name, kind))
        others = await _run_all(in_slot, to_run)
    finally:
        await asyncio.to_thread(shutil.rmtree, workdir, True)
    done = {(check.name, check.kind): check for check in [*devices, *skipped, *others]}
    return Capabilities(
        ffmpeg=ffmpeg,
        ffmpeg_version=version,
        probed_at=probed_at,
        host=socket.gethostname(),
        checks=[done[key] for key in wanted],
    )


class CapabilityCache:
    """Capabilities of one ffmpeg on this node, kept in a JSON file (e.g. <data>/capabilities.json)
    and valid while the ffmpeg path and version match: `get()` reads it or probes once,
    `refresh()` probes again, `disable()` marks something that failed in a job as not working."""

    def __init__(
        self,
        path: Path,
        ffmpeg: str,
        *,
        timeout: float = 20.0,
        parallel: int = 2,
        checks: Sequence[tuple[str, CheckKind]] | None = None,
    ) -> None:
        self.path = Path(path)
        self.ffmpeg = ffmpeg
        self._timeout, self._parallel, self._checks = timeout, parallel, checks
        self._current: Capabilities | None = None
        self._lock = asyncio.Lock()  # concurrent first get()s probe once

    async def get(self) -> Capabilities:
        """The cached capabilities if they are for this ffmpeg (path and version), else a probe."""
        async with self._lock:
            if self._current is None:
                version = await asyncio.to_thread(ffmpeg_version, self.ffmpeg)
                cached = await asyncio.to_thread(self._read)
                if cached is not None and (cached.ffmpeg, cached.ffmpeg_version) == (
                    self.ffmpeg,
                    version,
                ):
                    self._current = cached
                else:
                    self._current = await self._probe_and_save()
            return self._current

    async def refresh(self) -> Capabilities:
        """Probe again (dropping whatever disable() marked) and store the result."""
        async with self._lock:
            self._current = await self._probe_and_save()
            return self._current

    def disable(self, name: str, reason: str) -> Capabilities:
        """Mark a check, or every check a pipeline ("nvenc", "nvdec", "vaapi", "qsv", "cpu")
        stands on, as not working with `reason`, until the next refresh(); stored at once."""
        current = self._current if self._current is not None else self._read()
        if current is None:
            raise RuntimeError("nothing probed yet: call get() before disable()")
        self._current = _disabled(current, name, reason)
        self._write(self._current)
        return self._current

    async def _probe_and_save(self) -> Capabilities:
        capabilities = await probe_capabilities(
            self.ffmpeg, timeout=self._timeout, parallel=self._parallel, checks=self._checks
        )
        await asyncio.to_thread(self._write, capabilities)
        return capabilities

    def _read(self) -> Capabilities | None:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=Capabilities)
        except (OSError, msgspec.DecodeError):
            return None  # missing or unreadable: probe again

    def _write(self, capabilities: Capabilities) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_bytes(msgspec.json.encode(capabilities))
        os.replace(partial, self.path)  # readers see the old file or the new one, never half


def _disabled(capabilities: Capabilities, name: str, reason: str) -> Capabilities:
    names = {name, *_PIPELINE_CHECKS.get(name, ())}
    if name == "nvenc":
        names |= {check.name for check in capabilities.checks if check.name.endswith("_nvenc")}
    checks = [
        msgspec.structs.replace(check, ok=False, reason=reason) if check.name in names else check
        for check in capabilities.checks
    ]
    if name not in {check.name for check in checks} and name not in _PIPELINE_CHECKS:
        checks.append(CapabilityCheck(name=name, kind=_kind_of(name), ok=False, reason=reason))
    return msgspec.structs.replace(capabilities, checks=checks)


def _kind_of(name: str) -> CheckKind:
    if ":" in name:
        return "decoder"
    if name in _INIT_DEVICE:
        return "hwaccel"
    return "filter" if name.startswith("scale_") else "encoder"


async def _run_all(
    run_one: _CheckRunner, checks: Iterable[tuple[str, CheckKind]]
) -> list[CapabilityCheck]:
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(run_one(name, kind)) for name, kind in checks]
    return [task.result() for task in tasks]


async def _try_check(
    ffmpeg: str, name: str, kind: CheckKind, samples: _Samples, timeout: float
) -> CapabilityCheck:
    started = time.monotonic()
    sample: Path | None = None
    if kind == "decoder":
        made = await samples.get(name.partition(":")[2])
        if isinstance(made, str):
            return CapabilityCheck(name=name, kind=kind, ok=False, reason=made)
        sample = made
    result = await _run_with_deadline(_check_argv(ffmpeg, name, kind, sample), timeout)
    seconds = round(time.monotonic() - started, 3)
    if result is None:
        reason = f"timed out after {timeout:g} s"
    elif result.returncode == 0:
        return CapabilityCheck(name=name, kind=kind, ok=True, seconds=seconds)
    else:
        reason = distill_reason(result.stderr_tail, result.returncode, kind)
    return CapabilityCheck(name=name, kind=kind, ok=False, reason=reason, seconds=seconds)


class _Samples:
    """A tiny clip per codec for the decode checks, made on first use, once per probe."""

    def __init__(self, ffmpeg: str, directory: Path, timeout: float) -> None:
        self._ffmpeg, self._directory, self._timeout = ffmpeg, directory, timeout
        self._locks: dict[str, asyncio.Lock] = {}
        self._made: dict[str, Path | str] = {}

    async def get(self, codec: str) -> Path | str:
        """The sample's path, or why there is none."""
        async with self._locks.setdefault(codec, asyncio.Lock()):
            if codec not in self._made:
                self._made[codec] = await self._make(codec)
            return self._made[codec]

    async def _make(self, codec: str) -> Path | str:
        encoder = _SAMPLE_ENCODERS.get(codec)
        if encoder is None:
            return f"no {codec} sample: known codecs are {', '.join(_SAMPLE_ENCODERS)}"
        path = self._directory / f"{codec}.mkv"
        argv = [*_head(self._ffmpeg), "-f", "lavfi", "-i", _SAMPLE_SOURCE, "-c:v", encoder]
        argv += ["-pix_fmt", "yuv420p", "-frames:v", "5", "-y", str(path)]
        result = await _run_with_deadline(argv, self._timeout)
        if result is None:
            return f"could not make a {codec} sample: timed out after {self._timeout:g} s"
        if result.returncode != 0:
            why = distill_reason(result.stderr_tail, result.returncode, "encoder")
            return _trim(f"could not make a {codec} sample with {encoder}: {why}")
        return path


async def _run_with_deadline(argv: list[str], timeout: float) -> FfmpegResult | None:
    """Run ffmpeg to the end, or kill it after `timeout` s and return None."""
    run = FfmpegRun(argv)
    try:
        async with asyncio.timeout(timeout):
            await run.start()
            return await run.wait()
    except TimeoutError:
        return None
    finally:
        if run.pid is not None and run.returncode is None:
            # SIGKILL cannot interrupt a process stuck in a GPU driver: don't hang the probe on it
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_KILL_GRACE_SECONDS):
                    await run.cancel()


def _head(ffmpeg: str) -> list[str]:
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error"]


def _device_of(name: str, kind: CheckKind) -> str | None:
    """The hardware device a check needs, by its name ("h264_nvenc": cuda, "vaapi:h264": vaapi)."""
    if kind == "hwaccel":
        return None
    if kind == "decoder":
        return name.partition(":")[0]
    return _SUFFIX_DEVICE.get(name.partition("=")[0].rpartition("_")[2])


def _on_device(device: str) -> list[str]:
    return ["-init_hw_device", _INIT_DEVICE.get(device, f"{device}=hw"), "-filter_hw_device", "hw"]


def _check_argv(ffmpeg: str, name: str, kind: CheckKind, sample: Path | None) -> list[str]:
    null = ["-f", "null", "-"]
    device = _device_of(name, kind)
    if kind == "hwaccel":
        init = ["-init_hw_device", _INIT_DEVICE.get(name, f"{name}=hw")]
        return [*_head(ffmpeg), *init, *_SOURCE, "-frames:v", "1", *null]
    if kind == "encoder":
        upload: list[str] = []
        if device in ("vaapi", "qsv"):  # NVENC takes software frames; these need them uploaded
            upload = [*_on_device(device), *_SOURCE, "-vf", f"format=nv12,{_UPLOAD[device]}"]
        return [*_head(ffmpeg), *(upload or _SOURCE), "-c:v", name, "-frames:v", "3", *null]
    if kind == "filter":
        expr = f"{name}=128:72" if name.startswith("scale_") and "=" not in name else name
        if device is None:  # a software filter, used as written ("name=args")
            return [*_head(ffmpeg), *_SOURCE, "-vf", expr, *null]
        chain = f"format=nv12,{_UPLOAD.get(device, 'hwupload')},{expr},hwdownload,format=nv12"
        return [*_head(ffmpeg), *_on_device(device), *_SOURCE, "-vf", chain, *null]
    hwaccel, _, codec = name.partition(":")
    decode = ["-hwaccel", hwaccel, "-hwaccel_output_format", hwaccel]
    if hwaccel == "vaapi":
        decode += ["-hwaccel_device", VAAPI_DEVICE]
    elif hwaccel == "qsv":
        decode += ["-c:v", f"{codec}_qsv"]
    # ffmpeg quietly decodes in software when the hwaccel fails; hwdownload then has no GPU
    # frames to take, so that fallback fails the check instead of passing it
    return [*_head(ffmpeg), *decode, "-i", str(sample), "-vf", "hwdownload,format=nv12", *null]


_LOG_PREFIX = re.compile(r"^(?:\[[^\]]*\]\s*)+")
_NOISE = ("svt[", "x265 [", "link '", "pixel formats:", "src:", "dst:")
# lines that name a cause, not a consequence; the first one in stderr wins
_TELLING = re.compile(
    r"nvenc api|driver|libcuda|cuda_error|cannot load|failed to load|could not dynamically load|"
    r"no va display|libva|\bva_|mfx|no capable devices|openencodesessionex|unknown encoder|"
    r"unknown decoder|no such filter|not supported|unsupported|doesn't support|does not support|"
    r"no device available|device creation failed|hwaccel",
    re.IGNORECASE,
)
_FAILING = re.compile(r"error|failed|invalid|impossible|cannot|could not", re.IGNORECASE)


def distill_reason(stderr: str, returncode: int, kind: CheckKind = "encoder") -> str:
    """The one stderr line that best says why a check failed, at most REASON_MAX_CHARS."""
    lines = [_LOG_PREFIX.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line and not line.lower().startswith(_NOISE)]
    telling = _first_with(lines, _TELLING)
    if telling is not None:
        return _trim(telling)
    if kind == "decoder" and "impossible to convert between the formats" in stderr.lower():
        return "frames were not decoded on the hardware: ffmpeg fell back to software decoding"
    line = _first_with(lines, _FAILING) or (lines[-1] if lines else None)
    if line is not None:
        return _trim(line)
    if returncode < 0:
        return f"ffmpeg was killed by signal {-returncode}"
    return f"ffmpeg exited with code {returncode}"


def _first_with(lines: list[str], pattern: re.Pattern[str]) -> str | None:
    return next((line for line in lines if pattern.search(line)), None)


def _trim(text: str) -> str:
    return text if len(text) <= REASON_MAX_CHARS else text[: REASON_MAX_CHARS - 3] + "..."
