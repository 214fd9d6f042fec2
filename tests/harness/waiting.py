"""Waiting on a condition with a deadline, never a bare sleep: `eventually`, and the two things
every harness waits for, a free TCP port and a gateway that answers `GET /readyz` with 200."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


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


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that nothing listens on right now on 127.0.0.1 (all held
    while picking)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """A TCP port nothing listens on right now (on 127.0.0.1)."""
    return free_ports(1)[0]


async def wait_ready(
    url: str, timeout: float = 30.0, *, alive: Callable[[], bool] | None = None
) -> None:
    """Wait until the gateway at `url` answers `GET /readyz` with 200.

    `alive`, when given, says whether the process behind `url` still runs: once it says no, the
    wait fails at once instead of at the deadline."""
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            if alive is not None and not alive():
                raise AssertionError(f"the process serving {url} exited while starting")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(
                    url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    return resp.status == 200
            return False

        await eventually(ready, timeout=timeout, what=f"GET {url}/readyz == 200")
