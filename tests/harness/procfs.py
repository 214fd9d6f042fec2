"""What Linux's /proc says about the processes a test or benchmark started: alive or not, whose
child, how old, how much CPU, which ffmpeg encodes for whom. Reads only; a process that exits
while it is read counts as gone."""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")


def _read(pid: int, name: str) -> bytes | None:
    try:
        return (PROC / str(pid) / name).read_bytes()
    except OSError:
        return None


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on: the command name before it may hold spaces
    and parentheses, so the split is after its last ")". None when the process is gone."""
    stat = _read(pid, "stat")
    if stat is None:
        return None
    return stat.rsplit(b")", 1)[1].decode(errors="replace").split()


def pids() -> list[int]:
    """Every process there is right now."""
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def running(pid: int) -> bool:
    """The process exists and has not exited (zombies have)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[1]) if fields else None


def age_of(pid: int) -> float:
    """Seconds since the process started (field 22 of stat, against /proc/uptime)."""
    fields = stat_fields(pid)
    if fields is None:
        return 0.0
    started_ticks = int(fields[19])
    uptime = float((PROC / "uptime").read_text().split()[0])
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds the process has spent (fields 14 and 15 of stat)."""
    fields = stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def command_line(pid: int) -> list[str]:
    """The process's arguments (empty when it is gone)."""
    raw = _read(pid, "cmdline") or b""
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def processes_with_env(marker: str) -> dict[int, str]:
    """Running processes whose environment holds `marker` (pid -> command line)."""
    found: dict[int, str] = {}
    needle = marker.encode()
    for pid in pids():
        environ = _read(pid, "environ")
        if environ is None or needle not in environ.split(b"\0") or not running(pid):
            continue
        found[pid] = " ".join(command_line(pid))
    return found


def ffmpeg_pids(marker: str) -> list[int]:
    """Running ffmpeg processes whose command line mentions `marker` (a rendition key)."""
    found = []
    for pid in pids():
        args = command_line(pid)
        if not args or not running(pid):
            continue
        if "ffmpeg" in Path(args[0]).name and any(marker in arg for arg in args):
            found.append(pid)
    return found
