"""Which tests start the system, so that `pytest -m "not slow"` runs every test that needs none.

The rule (applied by tests/conftest.py):
- a test that uses, directly or through other fixtures, a fixture that starts a process of the
  system (`SYSTEM_FIXTURES`: nats-server, SeaweedFS, Azurite, service processes, `vidmesh up`)
  is marked `slow`; every in-process system needs the session's nats-server, so it is slow too;
- a module or test that starts such a process itself says so: `pytestmark = pytest.mark.slow`;
- and so that neither can be forgotten: a test not marked `slow` that starts a process of the
  system anyway (during its setup or its call) fails, naming the program and this rule.
Tools the tests run on their own (ffmpeg, ffprobe, kubectl, openssl, a Python snippet) are not
the system: tests that run them stay fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

# Fixtures that start a process of the system (the fixtures that use them inherit the mark).
SYSTEM_FIXTURES = frozenset({"nats_server", "seaweed", "azurite", "deploy", "launch"})
# Programs that are the system, by the name of the file that is run.
SYSTEM_PROGRAMS = frozenset({"nats-server", "weed", "azurite", "azurite-blob", "vidmesh"})
SYSTEM_MODULES = ("services.", "vidmesh.cli")


def starts_the_system(item: pytest.Item) -> bool:
    """The test uses a fixture that starts the system."""
    return not SYSTEM_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))


def system_program(args: Sequence[str]) -> str | None:
    """The part of the system a command line starts, or None when it starts a tool. The
    program is the first argument, or the second after an interpreter (`node azurite-blob`)."""
    for arg in args[:2]:
        if Path(arg).name in SYSTEM_PROGRAMS:
            return Path(arg).name
    for flag, module in zip(args, args[1:], strict=False):
        if flag == "-m" and module.startswith(SYSTEM_MODULES):
            return f"python -m {module}"
    return None


class SpawnWatch:
    """Remembers what parts of the system this process starts while `watching`: every
    `subprocess.Popen` (asyncio's subprocesses too) raises the "subprocess.Popen" audit event."""

    def __init__(self) -> None:
        self.started: list[str] | None = None
        sys.addaudithook(self._audit)

    def _audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event != "subprocess.Popen" or self.started is None:
            return
        _executable, argv = args[0], args[1]
        command = [argv] if isinstance(argv, str | bytes) else list(argv or ())
        program = system_program([str(part) for part in command])
        if program is not None:
            self.started.append(program)

    @contextmanager
    def watching(self, item: pytest.Item, phase: str) -> Iterator[None]:
        """Fail a test that is not marked `slow` when `phase` starts a process of the system."""
        self.started = [] if item.get_closest_marker("slow") is None else None
        try:
            yield
        finally:
            started, self.started = self.started, None
        if started:
            pytest.fail(
                f"{item.nodeid} is not marked slow, but its {phase} started "
                f"{', '.join(sorted(set(started)))}: mark it `@pytest.mark.slow` (or its "
                f"module `pytestmark = pytest.mark.slow`), or add the fixture that started it "
                f"to SYSTEM_FIXTURES in tests/harness/slow.py",
                pytrace=False,
            )
