"""`vidmesh up` as users run it: one command starts nats-server and every service, restarts what
dies, stops everything on Ctrl-C, and keeps jobs across restarts in its data folder."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from shared.config import ALIASES
from tests.conftest import ALICE
from tests.helpers import Client, eventually, free_port, wait_ready
from tests.jellyfin_standin import JellyfinStandIn


def vidmesh_command() -> list[str]:
    """The `vidmesh` console script installed beside this Python (else the module)."""
    script = Path(sys.executable).parent / "vidmesh"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vidmesh.cli"]


def _proc_text(pid: int, name: str) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return None


def running(pid: int) -> bool:
    """The process exists and has not exited (zombies have)."""
    stat = _proc_text(pid, "stat")
    return stat is not None and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def parent_of(pid: int) -> int | None:
    stat = _proc_text(pid, "stat")
    return int(stat.rsplit(b")", 1)[1].split()[1]) if stat else None


def age_of(pid: int) -> float:
    """Seconds since the process started (field 22 of /proc/<pid>/stat, against /proc/uptime)."""
    stat = _proc_text(pid, "stat")
    if stat is None:
        return 0.0
    started_ticks = int(stat.rsplit(b")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started_ticks / os.sysconf("SC_CLK_TCK")


def processes_with_env(marker: str) -> dict[int, str]:
    """Running processes whose environment holds `marker` (pid -> command line)."""
    found: dict[int, str] = {}
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        environ = _proc_text(pid, "environ")
        if environ is None or needle not in environ.split(b"\0") or not running(pid):
            continue
        cmdline = _proc_text(pid, "cmdline") or b""
        found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


@dataclass
class Up:
    """One `vidmesh up` process, its log, and what it started."""

    data_dir: Path
    log_path: Path
    port: int
    jellyfin_url: str | None
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def marker(self) -> str:
        """In the environment of `vidmesh up` and of every process it starts."""
        return f"VIDMESH_DATA_DIR={self.data_dir}"

    def start(self) -> Up:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("VIDMESH_") and k not in ALIASES.values()
        }
        env.update(
            VIDMESH_DATA_DIR=str(self.data_dir),
            VIDMESH_PORT=str(self.port),
            VIDMESH_NATS_PORT=str(free_port()),
            VIDMESH_HOST="127.0.0.1",
        )
        if self.jellyfin_url is not None:
            env["JELLYFIN_URL"] = self.jellyfin_url
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*vidmesh_command(), "up"],
                env=env,
                cwd=self.data_dir.parent,
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
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def ready(self, timeout: float = 60.0) -> None:
        """The banner names the gateway URL, and the gateway answers /readyz with 200."""
        banner = re.compile(rf"Streamyfin API\s+{re.escape(self.url)}\b")

        def announced() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"vidmesh up exited ({self.process.returncode}):\n{self.log()}"
                )
            return bool(banner.search(self.log()))

        await eventually(announced, timeout=timeout, what=f"the banner with {self.url}")
        await wait_ready(self.url, timeout)

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

    def kill_everything(self) -> None:
        """Teardown: SIGKILL `vidmesh up` and every process it started that is still running."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)
        for pid in processes_with_env(self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest_asyncio.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Callable[..., Up]]:
    """Start `vidmesh up` runs; whatever is still running afterwards is killed."""
    runs: list[Up] = []

    def make(data_dir: Path, jellyfin_url: str | None) -> Up:
        data_dir.mkdir(parents=True, exist_ok=True)
        log = tmp_path / f"up-{len(runs)}.log"
        run = Up(data_dir=data_dir, log_path=log, port=free_port(), jellyfin_url=jellyfin_url)
        runs.append(run)
        return run.start()

    yield make
    for run in runs:
        run.kill_everything()
        print(f"--- {run.log_path.name} ---\n{run.tail(200)}")  # shown only when a test failed


async def _completed_job(client: Client, jellyfin: JellyfinStandIn) -> str:
    job_id = await client.submit(jellyfin.stream_url("fits", ALICE), device="phone-1")
    job = await client.wait_status(job_id, "completed", "failed", timeout=60)
    assert job["status"] == "completed", job
    status, body, resp = await client.request("GET", f"/download/{job_id}")
    assert status == 200, (status, body)
    assert hashlib.sha256(body).hexdigest() == resp.headers["X-File-Checksum"]
    return job_id


async def test_up_runs_supervises_stops_and_keeps_jobs(
    launch: Callable[..., Up],
    jellyfin: JellyfinStandIn,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    # Given `vidmesh up` with a Jellyfin
    first = launch(data, jellyfin.url)
    await first.ready()
    alice = Client(http, first.url, ALICE)

    # (a) A Streamyfin job completes and downloads
    job_id = await _completed_job(alice, jellyfin)

    # (b) A service that dies is reported and restarted
    before = first.children()
    assert set(before) == {
        "gateway",
        "scheduler",
        "transcoder",
        "storage",
        "statistics",
        "notifier",
    }, before
    os.kill(before["statistics"], signal.SIGKILL)

    def restarted() -> int | None:
        pid = first.children().get("statistics")
        return pid if pid is not None and pid != before["statistics"] else None

    await eventually(restarted, timeout=15, what="a new statistics process")

    def lines() -> list[str]:
        return first.log().splitlines()

    await eventually(
        lambda: sum('"service.ready"' in line and '"statistics"' in line for line in lines()) == 2,
        timeout=15,
        what="the new statistics process to be ready",
    )
    assert any("up.service_exited" in line and "statistics" in line for line in lines())
    assert any("up.service_restarted" in line and "statistics" in line for line in lines())

    # (c) Ctrl-C, once the services have been running a while as they do for users, stops
    # everything it started, each service by itself, within 30 s, and it exits with 0
    await eventually(
        lambda: all(age_of(pid) >= 6.0 for pid in first.children().values()),
        timeout=10,
        what="every service to have run 6 s",
    )
    started = processes_with_env(first.marker)
    assert any("nats-server" in cmdline for cmdline in started.values()), started
    interrupted = time.monotonic()
    os.kill(first.pid, signal.SIGINT)
    problems: list[str] = []
    try:
        code = await first.exit_code(timeout=30)
    except AssertionError:
        problems.append(
            f"vidmesh up did not exit within 30 s of SIGINT; still running: "
            f"{processes_with_env(first.marker)}\n{first.tail()}"
        )
        first.kill_everything()  # so that the restart below can still be checked
    else:
        left = {pid: cmd for pid, cmd in started.items() if running(pid)}
        if left or code != 0:
            problems.append(f"exit code {code}, still running {left}\n{first.tail()}")
    took = time.monotonic() - interrupted
    # ... each service stopping by itself: none is killed for outliving its grace period
    killed = [line for line in lines() if '"up.kill"' in line]
    if killed:
        problems.append("services killed on the way out:\n" + "\n".join(killed))

    # (d) Started again on the same data folder, it still knows the job and counts it
    second = launch(data, jellyfin.url)
    await second.ready()
    alice = Client(http, second.url, ALICE)
    status, jobs, _ = await alice.request("GET", "/all-jobs")
    assert status == 200, jobs
    assert [(j["id"], j["status"]) for j in jobs] == [(job_id, "completed")], jobs
    status, stats, _ = await alice.request("GET", "/statistics")
    assert status == 200, stats
    assert stats["completedJobs"] >= 1, stats
    assert stats["totalTranscodes"] >= 1, stats
    assert not problems, f"after SIGINT ({took:.1f}s): " + "\n".join(problems)


async def test_up_without_jellyfin_says_so_and_refuses_clearly(
    launch: Callable[..., Up], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # Given `vidmesh up` with no JELLYFIN_URL
    up = launch(tmp_path / "data", None)
    await up.ready()

    # It prints every service's metrics port, and each serves /metrics and /readyz there
    match = re.search(r"Metrics\s+(.*)\(/metrics", up.log())
    assert match, up.tail()
    ports = dict(re.findall(r"(\w+) :(\d+)", match.group(1)))
    assert set(ports) == {"gateway", "scheduler", "transcoder", "storage", "statistics", "notifier"}
    for name, port in ports.items():
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            assert response.status == 200 and "vidmesh_" in await response.text(), name

    # Then it says clearly that Jellyfin is not configured
    jellyfin_lines = [line for line in up.log().splitlines() if "Jellyfin" in line]
    assert any(
        "not configured" in line.lower() and "JELLYFIN_URL" in line for line in jellyfin_lines
    ), up.tail()

    # ... and the Streamyfin API answers with a JSON error, not a crash
    alice = Client(http, up.url, ALICE)
    status, body, resp = await alice.request("GET", "/all-jobs")
    assert status not in (200, 500), (status, body)
    assert resp.content_type == "application/json", body
    error: dict[str, Any] = body["error"]
    assert error["status"] == status and "JELLYFIN_URL" in error["message"], body
