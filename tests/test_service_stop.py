"""How a service stops, as an operator reads it: one grace and one hard deadline, both from the
settings, for every service (the gateway's requests included), and one summary line that is the
last thing a stop writes, after the NATS connection drained, even when a step of the stop failed.

Most need no NATS: the services are built from their settings and not started; the stop runs
without consumers, with a drain step that writes its own line. The last one stops a real service
process with SIGTERM.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from shared.runtime import Service
from tests.harness import ServiceProcess, build_service, eventually

SERVICES = ("scheduler", "storage", "statistics", "notifier", "transcoder", "gateway")


class Closing(Service):
    """A service whose `stop()` may fail, and whose drain says when it ran."""

    name = "closing"

    def __init__(self, *, fail: bool) -> None:
        super().__init__(grace=0.1, deadline=0.2)
        self.fail = fail

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        structlog.get_logger("test").info("test.stop")
        if self.fail:
            raise RuntimeError("the store would not close")


async def drain() -> None:
    structlog.get_logger("test").info("test.drained")


def events(logs: list[dict[str, Any]]) -> list[str]:
    return [line["event"] for line in logs]


async def test_the_summary_line_comes_last_after_the_connection_drained() -> None:
    service = Closing(fail=False)
    await service.start()
    with capture_logs() as logs:
        await service.shutdown(drain=drain)
        await service.shutdown(drain=drain)  # a second call waits, and writes nothing
    assert events(logs) == ["test.stop", "test.drained", "service.stopped"]
    assert logs[-1]["deadline_s"] == 0.2 and "stop_failed" not in logs[-1]


async def test_a_stop_that_raises_still_drains_and_ends_with_the_summary_line() -> None:
    service = Closing(fail=True)
    await service.start()
    with capture_logs() as logs, pytest.raises(RuntimeError, match="would not close"):
        await service.shutdown(drain=drain)
    assert events(logs) == ["test.stop", "test.drained", "service.stopped"]
    summary = logs[-1]
    assert summary["stop_failed"] is True and summary["error"] == "the store would not close"


async def test_every_service_takes_its_grace_and_deadline_from_the_settings(
    tmp_path: Path,
) -> None:
    env = {
        "VIDMESH_STOP_GRACE_SECONDS": "2.5",
        "VIDMESH_STOP_DEADLINE_SECONDS": "1.5",
        "VIDMESH_DRAIN_SECONDS": "7",
        "VIDMESH_DATA_DIR": str(tmp_path),
    }
    found = {
        name: (service.grace, service.deadline)
        for name in SERVICES
        for service in [build_service(name, cast(NATS, None), env)]
    }
    # the transcoder's running work has its own grace (drain_seconds); the deadline is shared
    assert found == {name: (7.0 if name == "transcoder" else 2.5, 1.5) for name in SERVICES}


async def test_on_sigterm_a_service_process_drains_and_writes_the_summary_line_last(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Given the statistics service running as its own process, with a deadline of 2 s
    settings = {**env, "VIDMESH_STOP_DEADLINE_SECONDS": "2"}
    service = ServiceProcess("statistics", settings, tmp_path / "statistics.log").start()
    assert service.process is not None
    try:
        await eventually(lambda: '"service.ready"' in service.log(), what="statistics to start")

        # When it gets SIGTERM
        service.process.send_signal(signal.SIGTERM)
        await service.exited_at(timeout=30)
    finally:
        if service.alive:
            service.kill()

    # Then it exits cleanly, and its last line is the summary, with the configured deadline
    assert service.process.returncode == 0
    lines = [json.loads(line) for line in service.log().splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "service.stopping" in events and "service.drain_failed" not in events
    last = lines[-1]
    assert (last["event"], last["service"], last["deadline_s"]) == (
        "service.stopped",
        "statistics",
        2.0,
    )
