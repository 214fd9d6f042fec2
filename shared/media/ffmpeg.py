"""Run ffmpeg as an asyncio subprocess with live progress (why a run failed: `failures`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import signal
import subprocess
import time
from collections.abc import Callable, Mapping

import imageio_ffmpeg
import msgspec

STDERR_TAIL_CHARS = 4000
_STDERR_KEEP_BYTES = STDERR_TAIL_CHARS * 4  # UTF-8 needs at most 4 bytes a character
_READ_CHUNK = 65536


class FfmpegProgress(msgspec.Struct, frozen=True, kw_only=True):
    """One block of `-progress` output: how far ffmpeg has got."""

    out_time: float  # seconds of output written
    speed: float | None  # multiple of real time; None while ffmpeg reports N/A
    fps: float | None
    frame: int | None
    total_size: int  # bytes written so far
    done: bool  # the last block (progress=end)


class FfmpegResult(msgspec.Struct, frozen=True, kw_only=True):
    """How an ffmpeg run ended."""

    returncode: int
    stderr_tail: str  # the last STDERR_TAIL_CHARS characters of stderr
    cancelled: bool  # stopped on purpose by cancel() or terminate()
    wall_seconds: float


class FfmpegRun:
    """One ffmpeg process: start it, follow its progress, wait for it, or stop it."""

    def __init__(
        self,
        argv: list[str],
        on_progress: Callable[[FfmpegProgress], None] | None = None,
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not argv:
            raise ValueError("argv must name the ffmpeg binary")
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._on_progress = on_progress
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._stderr = bytearray()
        self._cancelled = False
        self._callback_error: Exception | None = None
        self._started_at = 0.0
        self._result: FfmpegResult | None = None

    @property
    def pid(self) -> int | None:
        """The process id once started, else None."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal)."""
        return self._process.returncode if self._process is not None else None

    async def start(self) -> None:
        """Spawn ffmpeg and start draining its stdout (progress) and stderr."""
        if self._process is not None:
            raise RuntimeError("this ffmpeg run was already started")
        if self._cancelled:
            raise RuntimeError("this ffmpeg run was cancelled before it started")
        self._started_at = time.monotonic()
        self._process = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            # own session: a Ctrl-C on the service's terminal must not kill ffmpeg behind its back
            start_new_session=True,
        )
        assert self._process.stdout is not None and self._process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read_progress(self._process.stdout)),
            asyncio.create_task(self._read_stderr(self._process.stderr)),
        ]

    async def wait(self) -> FfmpegResult:
        """Wait for ffmpeg to exit and both pipes to be drained; re-raises an on_progress error."""
        process = self._require_process()
        if self._result is None:
            returncode = await process.wait()
            # asyncio.wait, unlike gather, leaves the readers running if this waiter is cancelled
            await asyncio.wait(self._readers)
            for reader in self._readers:
                reader.result()
            self._result = FfmpegResult(
                returncode=returncode,
                stderr_tail=self.stderr_tail(),
                cancelled=self._cancelled,
                wall_seconds=time.monotonic() - self._started_at,
            )
        if self._callback_error is not None:
            raise self._callback_error
        return self._result

    async def cancel(self) -> None:
        """Stop ffmpeg at once with SIGKILL (a cancelled job) and wait until it has exited."""
        self._cancelled = True
        if self._process is None:
            return
        self._kill()
        await self._process.wait()

    async def terminate(self, grace: float = 2.0) -> None:
        """Ask ffmpeg to stop with SIGTERM; SIGKILL it if it is still running after `grace` s."""
        self._cancelled = True
        if self._process is None:
            return
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await self._process.wait()
        except TimeoutError:
            self._kill()
            await self._process.wait()
        except asyncio.CancelledError:
            # whoever stops us must not leave a half-stopped ffmpeg behind
            self._kill()
            raise

    def stderr_tail(self) -> str:
        """The last STDERR_TAIL_CHARS characters ffmpeg wrote to stderr so far."""
        return self._stderr.decode("utf-8", "replace")[-STDERR_TAIL_CHARS:]

    def _require_process(self) -> asyncio.subprocess.Process:
        if self._process is None:
            raise RuntimeError("start() this ffmpeg run first")
        return self._process

    def _kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            # it may exit between the check and the signal
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def _read_progress(self, stream: asyncio.StreamReader) -> None:
        block: dict[str, str] = {}
        pending = b""
        # chunks, not readline: a pipe must be drained even if a line were absurdly long
        while chunk := await stream.read(_READ_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                key, sep, value = line.decode("utf-8", "replace").strip().partition("=")
                if not sep:
                    continue
                block[key] = value
                if key == "progress":
                    self._emit(parse_progress(block))
                    block = {}

    def _emit(self, progress: FfmpegProgress) -> None:
        if self._on_progress is None or self._callback_error is not None:
            return
        try:
            self._on_progress(progress)
        except Exception as exc:
            # a broken progress consumer must not leave a transcode running unobserved
            self._callback_error = exc
            self._kill()

    async def _read_stderr(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_READ_CHUNK):
            self._stderr += chunk
            if len(self._stderr) > 2 * _STDERR_KEEP_BYTES:
                del self._stderr[:-_STDERR_KEEP_BYTES]


async def run_ffmpeg(
    argv: list[str],
    on_progress: Callable[[FfmpegProgress], None] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> FfmpegResult:
    """Start ffmpeg and wait for it; if the awaiting task is cancelled, kill ffmpeg and re-raise.
    `env`: its environment (None: this process's)."""
    run = FfmpegRun(argv, on_progress, env=env)
    await run.start()
    try:
        return await run.wait()
    except asyncio.CancelledError:
        await run.cancel()
        raise


def parse_progress(block: Mapping[str, str]) -> FfmpegProgress:
    """Turn one `-progress` key=value block into an FfmpegProgress."""
    speed = block.get("speed", "").strip().removesuffix("x")
    return FfmpegProgress(
        out_time=_out_time(block),
        speed=_float(speed),
        fps=_float(block.get("fps", "")),
        frame=_int(block.get("frame", "")),
        total_size=_int(block.get("total_size", "")) or 0,
        done=block.get("progress") == "end",
    )


def _out_time(block: Mapping[str, str]) -> float:
    # out_time_ms is in microseconds too (a long-standing ffmpeg quirk)
    for key in ("out_time_us", "out_time_ms"):
        micros = _int(block.get(key, ""))
        if micros is not None:
            return max(micros / 1_000_000, 0.0)
    match = re.fullmatch(r"(-?)(\d+):(\d+):(\d+(?:\.\d+)?)", block.get("out_time", "").strip())
    if match is None or match.group(1):
        return 0.0
    hours, minutes, seconds = match.group(2, 3, 4)
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


@functools.cache
def ffmpeg_version(ffmpeg: str) -> str:
    """The first line of `ffmpeg -version` for that binary (blocking; cached per path)."""
    done = subprocess.run(
        [ffmpeg, "-version"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.splitlines()[0].strip() if done.stdout else ""


def default_ffmpeg() -> str:
    """The ffmpeg binary shipped in the imageio-ffmpeg wheel."""
    return str(imageio_ffmpeg.get_ffmpeg_exe())
