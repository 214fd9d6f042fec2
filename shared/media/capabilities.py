"""Which encoders, decoders, hardware accelerations and filters really work on this node.

`ffmpeg -encoders` and NVML say what is compiled in or plugged in, not what opens: an H100 lists
h264_nvenc but has no NVENC, and an old driver refuses the NVENC API this build asks for. So each
capability is tried with a tiny real run, and a failure keeps the stderr line that says why.

This module runs the probe and keeps its result; what each check runs is in
`shared.media._probe_cases` and how a failure is put into words in `shared.media._probe_reasons`.
Both are re-exported here: import from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from shared.media._probe_cases import (
    DEFAULT_CHECKS,
    SAMPLE_ENCODERS,
    VAAPI_DEVICE,
    CheckKind,
    check_argv,
    device_of,
    kind_of,
    sample_argv,
)
from shared.media._probe_reasons import REASON_MAX_CHARS, distill_reason, trim_reason
from shared.media.ffmpeg import FfmpegResult, FfmpegRun, ffmpeg_version

__all__ = [
    "DEFAULT_CHECKS",
    "REASON_MAX_CHARS",
    "VAAPI_DEVICE",
    "Capabilities",
    "CapabilityCache",
    "CapabilityCheck",
    "CheckKind",
    "distill_reason",
    "probe_capabilities",
]

_KILL_GRACE_SECONDS = 5.0
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
            device = device_of(name, kind)
            if kind == "hwaccel":
                continue
            if device in down:
                reason = trim_reason(f"{device} unavailable: {down[device]}")
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
        checks.append(CapabilityCheck(name=name, kind=kind_of(name), ok=False, reason=reason))
    return msgspec.structs.replace(capabilities, checks=checks)


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
    result = await _run_with_deadline(check_argv(ffmpeg, name, kind, sample), timeout)
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
        encoder = SAMPLE_ENCODERS.get(codec)
        if encoder is None:
            return f"no {codec} sample: known codecs are {', '.join(SAMPLE_ENCODERS)}"
        path = self._directory / f"{codec}.mkv"
        result = await _run_with_deadline(sample_argv(self._ffmpeg, encoder, path), self._timeout)
        if result is None:
            return f"could not make a {codec} sample: timed out after {self._timeout:g} s"
        if result.returncode != 0:
            why = distill_reason(result.stderr_tail, result.returncode, "encoder")
            return trim_reason(f"could not make a {codec} sample with {encoder}: {why}")
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
