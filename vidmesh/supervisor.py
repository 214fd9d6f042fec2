"""`vidmesh up`: nats-server and every service as separate processes on one machine.

nats-server runs from the wheel with JetStream on and its data under the data folder, so jobs
survive restarts. A child that dies is reported and restarted (with backoff); Ctrl-C stops the
gateway first, then the other services (the transcoder hands back what it cannot finish), then
nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import aiohttp
import msgspec
import structlog

from shared.blobs.users import new_storage_key
from shared.config import CommonSettings
from vidmesh.natsserver import NatsServer, die_with_parent

log = structlog.get_logger("vidmesh.up")

# Start order; stop order is the reverse of `STOP_ORDER`'s position.
SERVICES = ("scheduler", "storage", "statistics", "notifier", "transcoder", "gateway")
# The services whose work may lag a little behind a busy machine without a client waiting on it
# (totals and the task history, webhook fan-out, blob deletion): on one machine they yield the
# CPU to the gateway and the scheduler (`VIDMESH_UP_BACKGROUND_NICE`).
BACKGROUND = ("statistics", "notifier", "storage")
STOP_ORDER = ("gateway", "scheduler", "statistics", "notifier", "storage", "transcoder")


class UpSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """What `vidmesh up` itself needs; every service reads its own settings from the same env."""

    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 3000
    nats_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 4222
    # The OpenEncoder API's own listener (a free port when 8081 is taken and was not asked for).
    openencoder_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8081
    nats_server_bin: str = ""
    jellyfin_url: str = ""
    max_concurrent_jobs: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Seconds the transcoder may spend finishing work on Ctrl-C before handing it back.
    drain_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # The niceness of the BACKGROUND services (0: the same as every other).
    up_background_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 5


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(host: str, wanted: int, *, explicit: bool, what: str) -> int:
    """`wanted` if free; a free one instead when `wanted` was only the default."""
    bind_host = "0.0.0.0" if host in ("", "::") else host
    if wanted == 0:  # "any": choose now, so the banner and every child agree on it
        return free_port(bind_host)
    if port_free(bind_host, wanted):
        return wanted
    if explicit:
        raise SystemExit(f"vidmesh up: {what} port {wanted} is in use; choose another one.")
    chosen = free_port()
    log.warning("up.port_taken", what=what, wanted=wanted, using=chosen)
    return chosen


@dataclass
class Child:
    """One supervised service process."""

    name: str
    env: Mapping[str, str]
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    restarts: int = 0
    stopping: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    nice: int = 0  # added to its niceness (the CPU goes to others first when it is short)

    async def start(self) -> None:
        self.exited.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"services.{self.name}",
            env=dict(self.env),
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches only `vidmesh up`, which stops us in order
            preexec_fn=functools.partial(_child_setup, self.nice),
        )
        self.started = time.monotonic()
        asyncio.create_task(self._watch(self.process))

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        await process.wait()
        self.exited.set()

    async def stop(self, grace: float) -> None:
        self.stopping = True
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            log.warning("up.kill", service=self.name, after_s=grace)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _child_setup(nice: int) -> None:
    """In a service's process before exec: die with `vidmesh up`, at its niceness."""
    die_with_parent()
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)


class Supervisor:
    """Runs nats-server and the services until told to stop."""

    def __init__(self, settings: UpSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        self.environ = dict(environ)
        self.data = Path(settings.data_dir).resolve()
        self.stop_requested = asyncio.Event()
        self.children: dict[str, Child] = {}
        self.metrics_ports: dict[str, int] = {}
        self.nats: NatsServer | None = None
        self.gateway_url = ""
        self.openencoder_url = ""
        self.admin = ("admin", "")
        self.generated: list[Path] = []

    def _explicit(self, *names: str) -> bool:
        return any(name in self.environ for name in names)

    async def run(self) -> int:
        self.data.mkdir(parents=True, exist_ok=True)
        host = self.settings.host
        port = choose_port(
            host,
            self.settings.port,
            explicit=self._explicit("VIDMESH_PORT", "PORT"),
            what="gateway",
        )
        openencoder_port = choose_port(
            host,
            self.settings.openencoder_port,
            explicit=self._explicit("VIDMESH_OPENENCODER_PORT"),
            what="OpenEncoder API",
        )
        if openencoder_port == port:  # free until the gateway binds it: never both on one port
            if self._explicit("VIDMESH_OPENENCODER_PORT"):
                raise SystemExit(f"vidmesh up: the OpenEncoder API port {port} is the gateway's.")
            openencoder_port = free_port()
        nats_port = choose_port(
            "127.0.0.1",
            self.settings.nats_port,
            explicit=self._explicit("VIDMESH_NATS_PORT"),
            what="NATS",
        )
        self.nats = NatsServer(
            self.data / "nats",
            port=nats_port,
            binary=self.settings.nats_server_bin or None,
            log_file=self.data / "nats-server.log",
            detach=True,
        )
        await self.nats.start()
        log.info("up.nats_ready", url=self.nats.url, store=str(self.data / "nats"))
        env = {**self._child_env(port), "VIDMESH_OPENENCODER_PORT": str(openencoder_port)}
        for name in SERVICES:
            child = Child(name, {**env, "VIDMESH_METRICS_PORT": str(self._metrics_port(name))})
            if name in BACKGROUND:
                child.nice = self.settings.up_background_nice
            self.children[name] = child
            await child.start()
        local = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        self.gateway_url = f"http://{local}:{port}"
        self.openencoder_url = f"http://{local}:{openencoder_port}"
        ready = await self._wait_ready(timeout=60.0)
        self._banner(ready)
        await self._supervise()
        await self._stop_all()
        return 0

    def _child_env(self, port: int) -> dict[str, str]:
        assert self.nats is not None
        env = dict(self.environ)
        env.update(
            VIDMESH_NATS_URL=self.nats.url,
            VIDMESH_DATA_DIR=str(self.data),
            VIDMESH_PORT=str(port),
            VIDMESH_HOST=self.settings.host,
            VIDMESH_DRAIN_SECONDS=str(self.settings.drain_seconds),
            PYTHONUNBUFFERED="1",
        )
        # One slot beyond the limit, so `POST /start-job` can start a job at once.
        env.setdefault("VIDMESH_SLOTS", str(self.settings.max_concurrent_jobs + 1))
        if not env.get("VIDMESH_JWT_SECRET"):
            env["VIDMESH_JWT_SECRET"] = self._kept_secret("jwt-secret", 48)
        if not env.get("VIDMESH_STORAGE_KEY"):
            env["VIDMESH_STORAGE_KEY"] = self._kept_secret("storage-key", 0, new_storage_key)
        if not env.get("VIDMESH_ADMIN_PASSWORD"):
            env["VIDMESH_ADMIN_PASSWORD"] = self._kept_secret("admin-password", 18)
        self.admin = (env.get("VIDMESH_ADMIN_USERNAME") or "admin", env["VIDMESH_ADMIN_PASSWORD"])
        return env

    def _metrics_port(self, name: str) -> int:
        """Each service's /metrics port: a free one, or VIDMESH_METRICS_PORT + its index."""
        base = self.environ.get("VIDMESH_METRICS_PORT", "")
        port = int(base) + SERVICES.index(name) if base.isdigit() and int(base) else free_port()
        self.metrics_ports[name] = port
        return port

    def _kept_secret(self, name: str, size: int, make: Callable[[], str] | None = None) -> str:
        """A secret generated once and kept in the data folder (readable by its owner only)."""
        path = self.data / name
        if not path.exists():
            path.write_text((make() if make else secrets.token_urlsafe(size)) + "\n")
            path.chmod(0o600)
            self.generated.append(path)
        return path.read_text().strip()

    async def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline and not self.stop_requested.is_set():
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        f"{self.gateway_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.2)
        return False

    def _banner(self, ready: bool) -> None:
        assert self.nats is not None
        jellyfin = self.settings.jellyfin_url or (
            "NOT CONFIGURED: set JELLYFIN_URL=http://your-jellyfin:8096 "
            "(the Streamyfin API refuses every request until then)"
        )
        lines = [
            "",
            f"vidmesh is up{'' if ready else ' (gateway not ready yet: see the log above)'}",
            f"  Streamyfin API   {self.gateway_url}   <- the optimized versions server URL",
            f"  Jellyfin         {jellyfin}",
            f"  NATS             {self.nats.url}   (scale out: VIDMESH_NATS_URL={self.nats.url} "
            "vidmesh transcoder)",
            f"  Dashboard        {self.gateway_url}/   (in a browser; sign in as below)",
            f"  Native API       {self.gateway_url}/api/  (OpenAPI: /api/openapi.json)",
            f"    sign in        POST /api/auth/login  username {self.admin[0]!r}  password "
            + (
                f"{self.admin[1]!r} (generated, kept in {self.data / 'admin-password'})"
                if "VIDMESH_ADMIN_PASSWORD" not in self.environ
                else "from VIDMESH_ADMIN_PASSWORD"
            ),
            f"  Download jobs    {self.gateway_url}/api  (base URL; x-api-key from "
            "POST /api/account/api-keys)",
            f"  OpenEncoder API  {self.openencoder_url}/api  (OpenAPI: "
            f"{self.openencoder_url}/openapi-openencoder.json; sign in with POST /api/login)",
            "  Metrics          "
            + "  ".join(f"{name} :{port}" for name, port in self.metrics_ports.items())
            + "   (/metrics, /livez, /readyz)",
            f"  Data             {self.data}",
            "Press Ctrl-C to stop.",
            "",
        ]
        print("\n".join(lines), flush=True)

    async def _supervise(self) -> None:
        assert self.nats is not None
        backoff: dict[str, float] = {}
        while not self.stop_requested.is_set():
            waits: dict[asyncio.Task[object], Child] = {
                asyncio.create_task(child.exited.wait()): child for child in self.children.values()
            }
            nats_task = asyncio.create_task(self.nats.wait())
            stop_task = asyncio.create_task(self.stop_requested.wait())
            done, pending = await asyncio.wait(
                {*waits, nats_task, stop_task}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if stop_task in done:
                return
            if nats_task in done:
                log.error(
                    "up.nats_exited",
                    code=self.nats.process.returncode if self.nats.process else None,
                )
                await self._restart_nats()
            for task in done:
                child = waits.get(task)
                if child is None or self.stop_requested.is_set():
                    continue
                code = child.process.returncode if child.process else None
                uptime = time.monotonic() - child.started
                delay = 1.0 if uptime > 60 else min(30.0, backoff.get(child.name, 0.5) * 2)
                backoff[child.name] = delay
                log.error("up.service_exited", service=child.name, code=code, restart_in_s=delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_requested.wait(), delay)
                if not self.stop_requested.is_set():
                    child.restarts += 1
                    await child.start()
                    log.info("up.service_restarted", service=child.name, restarts=child.restarts)

    async def _restart_nats(self) -> None:
        """Start nats-server again on the same port and store, retrying until it comes up."""
        assert self.nats is not None
        delay = 1.0
        while not self.stop_requested.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_requested.wait(), delay)
            if self.stop_requested.is_set():
                return
            try:
                await self.nats.start()
            except (OSError, RuntimeError, TimeoutError) as exc:
                log.error("up.nats_restart_failed", error=str(exc), retry_in_s=delay * 2)
                delay = min(delay * 2, 30.0)
                continue
            log.info("up.nats_restarted", url=self.nats.url)
            return

    async def _stop_all(self) -> None:
        log.info("up.stopping")
        for name in STOP_ORDER:
            child = self.children.get(name)
            if child is not None:
                # the service's own grace, its deadline for what it cancelled, then the drain
                transcoder = name == "transcoder"
                settings = self.settings
                own = settings.drain_seconds if transcoder else settings.stop_grace_seconds
                await child.stop(own + settings.stop_deadline_seconds + 10)
        if self.nats is not None:
            await self.nats.stop(grace=10.0)
        log.info("up.stopped")


async def up(settings: UpSettings, environ: Mapping[str, str]) -> int:
    supervisor = Supervisor(settings, environ)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, supervisor.stop_requested.set)
    return await supervisor.run()
