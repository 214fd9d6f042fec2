"""The clients `bench/control_plane.py` drives: a source that never answers, Streamyfin devices
submitting (`POST /optimize-version`) and polling (`GET /all-jobs?deviceId=`), native API users
submitting (`POST /api/jobs`), and the wait until the pipeline has taken every job in."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import aiohttp

from bench._system import BenchError, load
from bench._timing import Timed, timed

JOBS_PER_DEVICE = 40


class Silent:
    """A TCP listener that accepts every connection and never answers: a source that keeps a
    transcoder's probe waiting, so nothing is encoded while the control plane is measured."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self._held: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._held.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        for writer in self._held:
            writer.close()
        if self.server is not None:
            self.server.close()


def device_name(n: int) -> str:
    return f"bench-device-{n:04d}"


def token_of(device: str) -> str:
    return f"token-{device}"


async def submit(
    base: str, silent_port: int, devices: range, per_device: int, concurrency: int
) -> Timed:
    """`per_device` jobs for each of `devices`, interleaved, by `concurrency` clients; each must
    be answered 201 (accepted, stored durably)."""
    work = iter(
        (device_name(d), n)
        for n, d in itertools.product(range(per_device), devices)  # device by device, in turns
    )
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as s:

        async def client() -> None:
            for device, n in work:
                item = f"{device}-item-{n}"
                body = {
                    "url": f"http://127.0.0.1:{silent_port}/media/{item}.mkv",
                    "deviceId": device,
                    "itemId": item,
                    "item": {"Id": item, "Name": f"Item {n}", "Type": "Movie"},
                }
                headers = {"Authorization": token_of(device)}
                started = time.perf_counter()
                async with s.post("/optimize-version", json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 201:
                        text = (await response.text())[:300]
                        raise BenchError(
                            f"POST /optimize-version answered {response.status}: {text}"
                        )
                latencies.append(time.perf_counter() - started)

        load_then = load()
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return timed(latencies, time.perf_counter() - started, load_then)


async def native_users(base: str, count: int) -> list[str]:
    """`count` native API users, registered and signed in: their access tokens."""
    tokens = []
    async with aiohttp.ClientSession(base_url=base) as s:
        for n in range(count):
            account = {"username": f"bench-api-{n:02d}", "password": "bench-password"}
            async with s.post("/api/auth/register", json=account) as response:
                if response.status not in (201, 409):
                    raise BenchError(f"POST /api/auth/register answered {response.status}")
            async with s.post("/api/auth/login", json=account) as response:
                if response.status != 200:
                    raise BenchError(f"POST /api/auth/login answered {response.status}")
                tokens.append((await response.json())["access_token"])
    return tokens


async def submit_native(
    base: str, silent_port: int, tokens: list[str], count: int, concurrency: int, tag: str
) -> Timed:
    """`count` jobs through the native API (`POST /api/jobs`) by `concurrency` clients, the users
    in turns; each must be answered 201 (accepted, stored durably)."""
    work = iter(range(count))
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as s:

        async def client() -> None:
            for n in work:
                body = {"source": f"http://127.0.0.1:{silent_port}/media/api-{tag}-{n}.mkv"}
                headers = {"Authorization": f"Bearer {tokens[n % len(tokens)]}"}
                started = time.perf_counter()
                async with s.post("/api/jobs", json=body, headers=headers) as response:
                    await response.read()
                    if response.status != 201:
                        text = (await response.text())[:300]
                        raise BenchError(f"POST /api/jobs answered {response.status}: {text}")
                latencies.append(time.perf_counter() - started)

        load_then = load()
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return timed(latencies, time.perf_counter() - started, load_then)


async def settled(base: str, token: str, total: int) -> float:
    """Seconds from now until the whole pipeline has taken every job in: the scheduler stored
    it and the statistics service counted its acceptance (`GET /statistics`); a 201 comes once
    a job is durable in JetStream, before either."""
    started = time.perf_counter()
    deadline = started + 300
    async with aiohttp.ClientSession(base_url=base, headers={"Authorization": token}) as s:
        while time.perf_counter() < deadline:
            async with s.get("/statistics") as response:
                counted = (await response.json())["totalTranscodes"]
            if counted >= total:
                return time.perf_counter() - started
            await asyncio.sleep(0.05)
    raise BenchError(f"only {counted} of {total} jobs counted after 300 s")


async def answers(base: str, devices: range, per_device: int) -> dict[str, bytes]:
    """Each device's `/all-jobs?deviceId=` answer, checked to list exactly its jobs."""
    found: dict[str, bytes] = {}
    async with aiohttp.ClientSession(base_url=base) as s:
        for d in devices:
            device = device_name(d)
            headers = {"Authorization": token_of(device)}
            async with s.get("/all-jobs", params={"deviceId": device}, headers=headers) as r:
                body = await r.read()
                if r.status != 200:
                    raise BenchError(f"GET /all-jobs answered {r.status}")
            jobs = json.loads(body)
            if len(jobs) != per_device or any(job["deviceId"] != device for job in jobs):
                raise BenchError(
                    f"{device}: /all-jobs listed {len(jobs)} jobs, not its {per_device}"
                )
            found[device] = body
    return found


async def poll(base: str, devices: list[str], seconds: float, concurrency: int) -> Timed:
    """`GET /all-jobs?deviceId=` as fast as `concurrency` clients can for `seconds`, each client
    going round the devices from its own starting point."""
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=base, connector=connector) as s:
        deadline = time.perf_counter() + seconds

        async def client(start: int) -> None:
            for n in itertools.count(start):
                if time.perf_counter() >= deadline:
                    return
                device = devices[n % len(devices)]
                headers = {"Authorization": token_of(device)}
                began = time.perf_counter()
                async with s.get("/all-jobs", params={"deviceId": device}, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise BenchError(f"GET /all-jobs answered {r.status}")
                latencies.append(time.perf_counter() - began)

        load_then = load()
        started = time.perf_counter()
        step = max(1, len(devices) // concurrency)
        await asyncio.gather(*(client(i * step) for i in range(concurrency)))
        return timed(latencies, time.perf_counter() - started, load_then)


# ---- one phase: jobs held -> submissions, answers, /all-jobs against the stub -------------------
