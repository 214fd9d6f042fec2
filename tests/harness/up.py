"""`vidmesh up` as a user runs it: one child process that starts nats-server and every service,
with its output in a log file; ready once its banner names the gateway and the gateway answers
/readyz. The tests of `vidmesh up` and the benchmarks both drive it through `Up`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.config import ALIASES
from tests.harness.environment import REPO
from tests.harness.logs import log_tail, read_log
from tests.harness.procfs import parent_of, processes_with_env
from tests.harness.waiting import eventually, free_port, wait_ready


def module_command() -> list[str]:
    """`vidmesh` run from this checkout's code (`python -m vidmesh.cli`, with cwd the repo)."""
    return [sys.executable, "-m", "vidmesh.cli"]


def vidmesh_command() -> list[str]:
    """The `vidmesh` console script installed beside this Python (else the module)."""
    script = Path(sys.executable).parent / "vidmesh"
    return [str(script)] if script.exists() else module_command()


def without_settings(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less every vidmesh setting (VIDMESH_* and the Streamyfin server's names)."""
    return {
        k: v
        for k, v in environ.items()
        if not k.startswith("VIDMESH_") and k not in ALIASES.values()
    }


def up_env(
    data_dir: Path,
    jellyfin_url: str | None,
    *,
    base: Mapping[str, str] = os.environ,
    **settings: str,
) -> dict[str, str]:
    """`base` plus what `vidmesh up` needs: its data folder, free ports on 127.0.0.1, the
    Jellyfin it serves (none: not configured), and any other `settings`."""
    env = dict(base)
    env.update(
        VIDMESH_DATA_DIR=str(data_dir),
        VIDMESH_PORT=str(free_port()),
        VIDMESH_NATS_PORT=str(free_port()),
        # not the default 8081: two test workers' `vidmesh up` would race for it
        VIDMESH_OPENENCODER_PORT=str(free_port()),
        VIDMESH_HOST="127.0.0.1",  # nothing under test has a reason to listen on every interface
    )
    if jellyfin_url is not None:
        env["JELLYFIN_URL"] = jellyfin_url
    env.update(settings)
    return env


@dataclass
class Up:
    """One `vidmesh up` process, its log, and what it started."""

    env: dict[str, str]
    log_path: Path
    command: list[str] = field(default_factory=vidmesh_command)
    cwd: Path | None = None  # None: the data folder's parent
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def data_dir(self) -> Path:
        return Path(self.env["VIDMESH_DATA_DIR"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['VIDMESH_PORT']}"

    @property
    def marker(self) -> str:
        """In the environment of `vidmesh up` and of every process it starts."""
        return f"VIDMESH_DATA_DIR={self.data_dir}"

    def start(self) -> Up:
        with self.log_path.open("wb") as log:  # this run's log only
            self.process = subprocess.Popen(
                [*self.command, "up"],
                env=self.env,
                cwd=self.cwd or self.data_dir.parent,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return read_log(self.log_path)

    def tail(self, lines: int = 60) -> str:
        return log_tail(self.log_path, lines)

    def alive(self) -> bool:
        """Still running; an exit while it should not have fails with the log."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"vidmesh up exited ({self.process.returncode}):\n{self.log()}")
        return True

    async def ready(self, timeout: float = 60.0) -> None:
        """The banner names the gateway URL, and the gateway answers /readyz with 200."""
        banner = re.compile(rf"Streamyfin API\s+{re.escape(self.url)}\b")
        await eventually(
            lambda: self.alive() and banner.search(self.log()),
            timeout=timeout,
            what=f"the banner with {self.url}",
        )
        await wait_ready(self.url, timeout, alive=self.alive)

    def children(self) -> dict[str, int]:
        """Service name -> pid of each running service process `vidmesh up` started."""
        found: dict[str, int] = {}
        for pid, cmdline in processes_with_env(self.marker).items():
            match = re.search(r"-m services\.(\w+)", cmdline)
            if match and parent_of(pid) == self.pid:
                found[match.group(1)] = pid
        return found

    async def exit_code(self, timeout: float) -> int:
        """Wait (without blocking the event loop) for `vidmesh up` to exit."""
        assert self.process is not None
        popen = self.process
        await eventually(
            lambda: popen.poll() is not None, timeout=timeout, what="vidmesh up to exit"
        )
        assert popen.returncode is not None
        return popen.returncode

    async def interrupt(self, timeout: float) -> bool:
        """Ctrl-C, as a user stops it; SIGKILL only if the orderly stop overruns `timeout`.
        Whether it stopped by itself."""
        if self.process is None or self.process.poll() is not None:
            return True
        self.process.send_signal(signal.SIGINT)
        try:
            await self.exit_code(timeout)
        except AssertionError:
            self.kill_everything()
            return False
        return True

    def kill_everything(self) -> None:
        """Teardown: SIGKILL `vidmesh up` and every process it started that is still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for pid in processes_with_env(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def checkout_up(env: dict[str, str], log_path: Path) -> AsyncIterator[Up]:
    """`vidmesh up` from this checkout's code (an installed `vidmesh` script may be another
    checkout's), ready; killed with everything it started at the end, its log's tail printed
    (pytest shows it when a test failed)."""
    run = Up(env=env, log_path=log_path, command=module_command(), cwd=REPO).start()
    try:
        await run.ready()
        yield run
    finally:
        run.kill_everything()
        print(f"--- vidmesh up ---\n{run.tail(200)}")
