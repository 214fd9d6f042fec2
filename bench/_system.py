"""The system under test for the benchmarks: `vidmesh up` as a child process (the tests'
harness, tests/harness/up.py, runs it), and what its processes and its JSON log say about where
a job's time went."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.harness import procfs
from tests.harness.up import Up, module_command
from tests.harness.up import up_env as harness_up_env

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 90.0  # `vidmesh up` gives the transcoder drain + 10 s and the others 10 s each
# Stage boundaries the transcoder logs, in order; used only for the breakdown, never for timing.
STAGE_EVENTS = ("work.claimed", "ffmpeg.start", "ffmpeg.done", "work.succeeded")


class BenchError(Exception):
    """The benchmark could not measure (as opposed to measuring a bad ratio)."""


def up_env(data_dir: Path, jellyfin_url: str | None) -> dict[str, str]:
    """This process's environment (so a VIDMESH_* setting given to the benchmark reaches vidmesh)
    plus what `vidmesh up` needs: fresh data, free ports, the JSON log the stages are read from."""
    return harness_up_env(data_dir, jellyfin_url, VIDMESH_LOG_FORMAT="json")


@contextlib.asynccontextmanager
async def vidmesh_up(env: dict[str, str], log_path: Path) -> AsyncIterator[Up]:
    """`vidmesh up` of this checkout as a child process, ready; Ctrl-C'd on the way out (killed
    only if the orderly stop overruns STOP_TIMEOUT). One that does not start is a BenchError."""
    up = Up(env=env, log_path=log_path, command=module_command(), cwd=REPO)
    up.start()
    try:
        try:
            await up.ready(READY_TIMEOUT)
        except AssertionError as exc:
            raise BenchError(f"vidmesh up did not start: {exc}\n{up.tail(40)}") from None
        yield up
    finally:
        if not await up.interrupt(STOP_TIMEOUT):
            print(f"vidmesh up did not stop within {STOP_TIMEOUT:g} s; killed it", file=sys.stderr)


def process_cpu_seconds(root: int) -> dict[str, float]:
    """User + system CPU seconds of `root` and its descendants, by role, ffmpeg left out."""
    if not procfs.PROC.is_dir():
        return {}  # not Linux: the breakdown is a diagnostic, the timing does not need it
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    names: dict[int, str] = {}
    for pid in procfs.pids():
        parent, seconds = procfs.parent_of(pid), procfs.cpu_seconds(pid)
        if parent is None or seconds is None:
            continue  # gone while we looked
        parents[pid], cpu[pid] = parent, seconds
        names[pid] = role_of(procfs.command_line(pid))
    totals: dict[str, float] = {}
    for pid in cpu:
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == root and names[pid] != "ffmpeg":
            totals[names[pid]] = totals.get(names[pid], 0.0) + cpu[pid]
    return totals


def role_of(args: list[str]) -> str:
    """What a process is, from its command line: a service name, "nats-server", "ffmpeg"..."""
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


def load() -> float:
    """The machine's 1-minute load average."""
    return os.getloadavg()[0]


def rss_mib(pid: int) -> float | None:
    """Resident set size of `pid` in MiB (None when it is gone or not on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def run_bench(main: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """A benchmark's entry point: run it; one that could not measure exits 2 with why."""
    try:
        asyncio.run(main())
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(2)
