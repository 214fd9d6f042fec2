"""vidmesh as it runs in production: every service its own OS process (`python -m
services.<name>`), in one namespace against one nats-server, for tests that send real signals
to real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.environment import REPO, Configured
from tests.harness.logs import log_tail, read_log
from tests.harness.procfs import ffmpeg_pids, parent_of
from tests.harness.waiting import eventually, wait_ready


@dataclass
class ServiceProcess:
    """One service as its own process (`python -m services.<name>`), its output in `log_path`."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def log(self) -> str:
        return read_log(self.log_path)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def exited_at(self, timeout: float) -> float:
        """Wait (without blocking the event loop) until the process exits; when it did
        (time.monotonic())."""
        popen = self.process
        assert popen is not None
        await eventually(
            lambda: popen.poll() is not None, timeout=timeout, what=f"{self.name} to exit"
        )
        return time.monotonic()


@dataclass
class Deployment(Configured):
    """Every vidmesh service as its own process, in one namespace, against one nats-server."""

    env: dict[str, str]
    root: Path
    processes: list[ServiceProcess] = field(default_factory=list)
    launched: dict[int, float] = field(default_factory=dict)  # pid -> time.monotonic()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['VIDMESH_PORT']}"

    @property
    def marker(self) -> str:
        """On the command line of every ffmpeg this deployment runs (its scratch path)."""
        return str(self.data_dir)

    def launch(self, name: str, **overrides: str) -> ServiceProcess:
        log = self.root / f"{name}-{len(self.processes)}.log"
        process = ServiceProcess(name, {**self.env, **overrides}, log).start()
        assert process.process is not None
        self.launched[process.process.pid] = time.monotonic()
        self.processes.append(process)
        return process

    def age(self, process: ServiceProcess) -> float:
        """Seconds since the process was launched."""
        assert process.process is not None
        return time.monotonic() - self.launched[process.process.pid]

    async def start(self, *names: str, **overrides: str) -> list[ServiceProcess]:
        """Launch the services together, then wait until each says it is ready."""
        started = [self.launch(name, **overrides) for name in names]
        for process in started:
            await self.ready(process)
        return started

    async def ready(self, process: ServiceProcess, timeout: float = 30.0) -> None:
        def check() -> bool:
            if not process.alive:
                raise AssertionError(f"{process.name} exited while starting:\n{process.log()}")
            return '"service.ready"' in process.log()

        await eventually(check, timeout=timeout, what=f"{process.name} to be ready")
        if process.name == "gateway":
            await wait_ready(self.url, timeout)

    def alive(self, name: str) -> list[ServiceProcess]:
        return [p for p in self.processes if p.name == name and p.alive]

    async def transcoder_running_ffmpeg(self, timeout: float = 20.0) -> tuple[ServiceProcess, int]:
        """The transcoder process whose ffmpeg is encoding for this deployment, and that ffmpeg."""
        pids = await eventually(
            lambda: ffmpeg_pids(self.marker), timeout=timeout, what="an ffmpeg to run"
        )
        assert len(pids) == 1, f"one transcode should run, found ffmpeg pids {pids}"
        parent = parent_of(pids[0])
        owners = [p for p in self.alive("transcoder") if p.process and p.process.pid == parent]
        assert owners, f"ffmpeg {pids[0]} (parent {parent}) belongs to none of our transcoders"
        return owners[0], pids[0]

    def report(self, lines: int = 40) -> str:
        """The last lines of every service log, for failure messages."""
        return "\n".join(
            f"--- {process.log_path.name} ---\n{log_tail(process.log_path, lines)}"
            for process in self.processes
        )

    async def close(self) -> None:
        """Kill every service still running, and any ffmpeg left behind.

        SIGKILL, not SIGTERM: the graceful stop has its own test, and the namespace is thrown away.
        """
        for process in self.processes:
            if process.alive:
                process.kill()
        for pid in ffmpeg_pids(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
