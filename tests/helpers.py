"""Test helpers: waiting on conditions with a deadline, and a whole vidmesh in one namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from nats.aio.client import Client as NATS

from services.gateway import GatewayService, GatewaySettings
from services.notifier import Notifier, NotifierSettings
from services.scheduler import Scheduler, SchedulerSettings
from services.statistics import Statistics, StatisticsSettings
from services.storage import Storage, StorageSettings
from services.transcoder import Transcoder, TranscoderSettings
from shared import config
from shared.blobs.store import LocalBlobStore
from shared.config import CommonSettings
from shared.nats.client import connect_with
from shared.nats.subjects import Names
from shared.runtime import Service

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "admin-password-1"
TEST_STORAGE_KEY = "dGVzdC1zdG9yYWdlLWtleS0zMi1ieXRlcy1sb25nISE="  # 32 bytes, tests only


async def eventually(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        last = result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def wait_ready(url: str, timeout: float = 30.0) -> None:
    """Wait until the gateway at `url` answers `GET /readyz` with 200."""
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    return resp.status == 200
            return False

        await eventually(ready, timeout=timeout, what=f"GET {url}/readyz == 200")


# One capability probe per test session: every transcoder the tests start shares its result.
CAPABILITIES_FILE = Path(tempfile.mkdtemp(prefix="vidmesh-capabilities-")) / "capabilities.json"


def new_namespace() -> str:
    return "t" + uuid.uuid4().hex[:10]


def fast_env(
    namespace: str, data_dir: Path, nats_url: str, jellyfin_url: str, **extra: Any
) -> dict[str, str]:
    """Settings for tests: short sweeps, short ack_wait, quick progress."""
    env = {
        "VIDMESH_NATS_URL": nats_url,
        "VIDMESH_NAMESPACE": namespace,
        "VIDMESH_DATA_DIR": str(data_dir),
        "VIDMESH_CAPABILITIES_FILE": str(CAPABILITIES_FILE),
        "VIDMESH_LOG_LEVEL": "info",
        "VIDMESH_LOG_FORMAT": "json",
        "VIDMESH_SWEEP_INTERVAL": "0.5",
        "VIDMESH_ACK_WAIT": "3",
        "VIDMESH_PROGRESS_INTERVAL": "0.25",
        "VIDMESH_COMMAND_TIMEOUT": "5",
        "VIDMESH_AUTH_CACHE_SECONDS": "30",
        "VIDMESH_HOST": "127.0.0.1",
        "VIDMESH_PORT": "0",
        "VIDMESH_DRAIN_SECONDS": "0",
        "VIDMESH_ORPHAN_GRACE": "30",
        "JELLYFIN_URL": jellyfin_url,
        "VIDMESH_JWT_SECRET": f"test-secret-{namespace}-0123456789abcdef0123456789",
        "VIDMESH_ADMIN_USERNAME": "admin",
        "VIDMESH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "VIDMESH_REGISTRATION": "open",
        "VIDMESH_STORAGE_KEY": TEST_STORAGE_KEY,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class System:
    """Every vidmesh service running in this process, in one namespace."""

    env: dict[str, str]
    nc: NATS
    services: dict[str, Service] = field(default_factory=dict)
    url: str = ""

    @property
    def names(self) -> Names:
        return Names(self.env["VIDMESH_NAMESPACE"])

    @property
    def data_dir(self) -> Path:
        return Path(self.env["VIDMESH_DATA_DIR"])

    @property
    def blobs(self) -> LocalBlobStore:
        return LocalBlobStore(self.data_dir / "blobs")

    @property
    def gateway(self) -> GatewayService:
        service = self.services["gateway"]
        assert isinstance(service, GatewayService)
        return service

    @property
    def scheduler(self) -> Scheduler:
        service = self.services["scheduler"]
        assert isinstance(service, Scheduler)
        return service

    async def start(self, *only: str) -> System:
        names = only or ("scheduler", "storage", "statistics", "notifier", "transcoder", "gateway")
        for name in names:
            service = build_service(name, self.nc, self.env)
            await service.start()
            self.services[name] = service
        if "gateway" in self.services:
            self.url = self.gateway.url
        return self

    async def stop(self, *only: str) -> None:
        for name in only or list(reversed(list(self.services))):
            service = self.services.pop(name, None)
            if service is not None:
                await service.shutdown()

    def output_files(self) -> list[Path]:
        return files_under(self.data_dir / "blobs" / "outputs")


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, while the storage service may be deleting some (os.walk skips a
    folder that disappears under it; Path.rglob raises)."""
    return sorted(Path(top) / name for top, _, names in os.walk(root) for name in names)


def build_service(name: str, nc: NATS, env: dict[str, str]) -> Service:
    if name == "gateway":
        return GatewayService(nc, config.load(GatewaySettings, env))
    if name == "scheduler":
        return Scheduler(nc, config.load(SchedulerSettings, env))
    if name == "transcoder":
        return Transcoder(nc, config.load(TranscoderSettings, env))
    if name == "storage":
        return Storage(nc, config.load(StorageSettings, env))
    if name == "notifier":
        return Notifier(nc, config.load(NotifierSettings, env))
    return Statistics(nc, config.load(StatisticsSettings, env))


async def start_system(env: dict[str, str], *only: str) -> System:
    nc = await connect_with(config.load(CommonSettings, env), "vidmesh-test")
    return await System(env=env, nc=nc).start(*only)


async def stop_system(system: System) -> None:
    for step, action in (
        ("stop services", system.stop),
        ("drop namespace", lambda: drop_namespace(system.nc, system.names)),
        ("close NATS", system.nc.close),
    ):
        try:
            await asyncio.wait_for(action(), 30)
        except TimeoutError:
            import io

            out = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(file=out)
            raise AssertionError(
                f"stop_system stuck at {step}:\n{out.getvalue()[-20000:]}"
            ) from None


async def drop_namespace(nc: NATS, names: Names) -> None:
    """Delete a test's streams and buckets, so the shared server stays small."""
    js = nc.jetstream()
    for stream in names.all_streams():
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)


@dataclass
class ServiceProcess:
    """One service as its own process (`python -m services.<name>`), for fault tests."""

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
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

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


def ffmpeg_pids(marker: str) -> list[int]:
    """Running ffmpeg processes whose command line mentions `marker` (a rendition key)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if ") Z" in stat:  # zombies have stopped already
            continue
        is_ffmpeg = bool(cmdline) and "ffmpeg" in Path(cmdline[0].decode(errors="replace")).name
        if is_ffmpeg and any(marker.encode() in part for part in cmdline):
            found.append(int(entry.name))
    return found


class Client:
    """An HTTP client that talks to the gateway as the Streamyfin app does."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": self.token, **extra}

    async def request(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        async with self.session.request(
            method, self.base + path, headers=headers, **kwargs
        ) as resp:
            body = await resp.read()
            data: Any = body
            if resp.content_type == "application/json":
                import json

                data = json.loads(body)
            return resp.status, data, resp

    async def submit(
        self,
        url: str,
        *,
        device: str = "dev-1",
        ext: str | None = None,
        item: dict[str, Any] | None = None,
    ) -> str:
        payload: dict[str, Any] = {
            "url": url,
            "deviceId": device,
            "itemId": (item or {}).get("Id", "item-1"),
        }
        if ext is not None:
            payload["fileExtension"] = ext
        payload["item"] = item or {"Id": payload["itemId"], "Name": "Test clip", "Type": "Movie"}
        status, body, _ = await self.request("POST", "/optimize-version", json=payload)
        assert status == 201, (status, body)
        return str(body["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body, _ = await self.request("GET", f"/job-status/{job_id}")
        assert status == 200, (status, body)
        return body  # type: ignore[no-any-return]

    async def wait_status(
        self, job_id: str, *statuses: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.job(job_id)
            return job if job["status"] in statuses else None

        return await eventually(check, timeout=timeout, what=f"job {job_id} to be {statuses}")


class Api:
    """A client of the native API, signed in with a token or an API key (or anonymous)."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, *, token: str = "", api_key: str = ""
    ) -> None:
        self.session = session
        self.base = base.rstrip("/")
        self.token = token
        self.api_key = api_key

    def headers(self) -> dict[str, str]:
        if self.api_key:
            return {"x-api-key": self.api_key}
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(
        self, method: str, path: str, **kwargs: Any
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {**self.headers(), **kwargs.pop("headers", {})}
        async with self.session.request(
            method, self.base + path, headers=headers, **kwargs
        ) as resp:
            body = await resp.read()
            data: Any = body
            if resp.content_type == "application/json":
                import json

                data = json.loads(body)
            return resp.status, data, resp

    async def ok(self, method: str, path: str, expect: int = 200, **kwargs: Any) -> Any:
        status, body, _ = await self.call(method, path, **kwargs)
        assert status == expect, (method, path, status, body)
        return body

    async def as_user(
        self, username: str, password: str = "password-123", *, register: bool = True
    ) -> Api:
        """A client signed in as `username` (registered first when asked)."""
        anonymous = Api(self.session, self.base)
        if register:
            await anonymous.ok(
                "POST", "/api/auth/register", 201, json={"username": username, "password": password}
            )
        tokens = await anonymous.ok(
            "POST", "/api/auth/login", json={"username": username, "password": password}
        )
        return Api(self.session, self.base, token=tokens["access_token"])

    async def wait_job(self, job_id: str, *statuses: str, timeout: float = 30.0) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            job = await self.ok("GET", f"/api/jobs/{job_id}")
            return job if job["status"] in statuses else None

        return await eventually(check, timeout=timeout, what=f"job {job_id} to be {statuses}")
