"""The system under test for the benchmarks: `vidmesh up` as a child process, and what its
processes and its JSON log say about where a job's time went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0  # `vidmesh up` gives the transcoder drain + 10 s and the others 10 s each
# Stage boundaries the transcoder logs, in order; used only for the breakdown, never for timing.
STAGE_EVENTS = ("work.claimed", "ffmpeg.start", "ffmpeg.done", "work.succeeded")


class BenchError(Exception):
    """The benchmark could not measure (as opposed to measuring a bad ratio)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def up_env(data_dir: Path, jellyfin_url: str) -> dict[str, str]:
    """This process's environment plus what `vidmesh up` needs: fresh data, free ports."""
    env = dict(os.environ)
    env.update(
        VIDMESH_DATA_DIR=str(data_dir),
        VIDMESH_HOST="127.0.0.1",  # a benchmark has no reason to listen on every interface
        VIDMESH_PORT=str(free_port()),
        VIDMESH_NATS_PORT=str(free_port()),
        JELLYFIN_URL=jellyfin_url,
        VIDMESH_LOG_FORMAT="json",
    )
    return env


@dataclass(frozen=True)
class Up:
    """A running `vidmesh up`."""

    url: str
    pid: int


@contextlib.asynccontextmanager
async def vidmesh_up(env: dict[str, str], log_path: Path) -> AsyncIterator[Up]:
    """`vidmesh up` as a child process, ready. Ctrl-C'd on the way out."""
    url = f"http://127.0.0.1:{env['VIDMESH_PORT']}"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vidmesh.cli",
            "up",
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await wait_ready(process, url, log_path)
        yield Up(url, process.pid)
    finally:
        await stop_up(process)


async def wait_ready(process: asyncio.subprocess.Process, url: str, log_path: Path) -> None:
    """Poll /readyz until 200; fail early if `vidmesh up` exits, or at READY_TIMEOUT."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise BenchError(f"vidmesh up exited ({process.returncode}):\n{log_tail(log_path)}")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise BenchError(f"vidmesh was not ready after {READY_TIMEOUT:g} s:\n{log_tail(log_path)}")


async def stop_up(process: asyncio.subprocess.Process) -> None:
    """Ctrl-C, as a user stops it; kill only if the orderly stop overruns STOP_TIMEOUT."""
    if process.returncode is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        print(f"vidmesh up did not stop within {STOP_TIMEOUT:g} s; killing it", file=sys.stderr)
        process.kill()
        await process.wait()


def process_cpu_seconds(root: int) -> dict[str, float]:
    """User + system CPU seconds of `root` and its descendants, by role, ffmpeg left out."""
    proc = Path("/proc")
    if not proc.is_dir():
        return {}  # not Linux: the breakdown is a diagnostic, the timing does not need it
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            # the command name may hold spaces and parentheses: split after its closing ")"
            fields = stat[stat.rindex(")") + 2 :].split()
            pid = int(entry.name)
            parents[pid] = int(fields[1])
            cpu[pid] = (int(fields[11]) + int(fields[12])) / tick
            names[pid] = role_of((entry / "cmdline").read_bytes())
    totals: dict[str, float] = {}
    for pid in cpu:
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root and names[pid] != "ffmpeg":
            totals[names[pid]] = totals.get(names[pid], 0.0) + cpu[pid]
    return totals


def role_of(cmdline: bytes) -> str:
    """What a process is, from its command line: a service name, "nats-server", "ffmpeg"..."""
    args = [arg.decode(errors="replace") for arg in cmdline.split(b"\0") if arg]
    for arg in args:
        if arg.startswith("services."):
            return arg.removeprefix("services.")
    program = Path(args[0]).name if args else "?"
    if "ffmpeg" in program:
        return "ffmpeg"
    return "up" if "vidmesh.cli" in args else program


def cpu_spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each role spent between two `process_cpu_seconds` readings."""
    return {name: round(after[name] - before.get(name, 0.0), 2) for name in sorted(after)}


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, for error messages."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def read_stages(
    log_path: Path, start: int, end: int, submitted_at: float
) -> tuple[dict[str, float], float | None]:
    """When the transcoder logged each stage (seconds after `submitted_at`) and ffmpeg's own
    time, from the log bytes written between `start` and `end`: one job's lines."""
    with log_path.open("rb") as log:
        log.seek(start)
        lines = log.read(end - start).splitlines()
    stages: dict[str, float] = {}
    ffmpeg_s: float | None = None
    for raw in lines:
        with contextlib.suppress(ValueError):  # the banner and stray stderr are not JSON
            entry = json.loads(raw)
            event = entry.get("event") if isinstance(entry, dict) else None
            if event in STAGE_EVENTS and event not in stages and "timestamp" in entry:
                stamp = datetime.fromisoformat(entry["timestamp"]).timestamp()
                stages[event] = round(stamp - submitted_at, 3)
                if event == "ffmpeg.done":
                    ffmpeg_s = entry.get("seconds")
    return stages, ffmpeg_s
