"""What the processes under test wrote to their log files, read while they may still write."""

from __future__ import annotations

from pathlib import Path


def read_log(path: Path) -> str:
    """The whole log so far ("" before the process wrote anything)."""
    return path.read_text(errors="replace") if path.exists() else ""


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log, for failure messages."""
    return "\n".join(read_log(path).splitlines()[-lines:])
