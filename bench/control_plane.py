"""The control plane under load, as Streamyfin devices drive it: submissions per second
(`POST /optimize-version`, `--submitters` concurrent clients) and `GET /all-jobs?deviceId=` per
second (`--pollers` concurrent clients) with 2,000 jobs held and with 20,000, each device holding
40 jobs; against a stub of the same route serving the same answers from a dict (the ceiling,
measured in the same run), and the original Streamyfin optimize server's figures measured in
issue 15 (printed as the reference). Also the RSS of the gateway, scheduler and statistics
service before and after each load.

Sources never answer (a local TCP listener that accepts and stays silent, allowed through
`VIDMESH_OUTBOUND_ALLOW`), so no encode competes for the cores. Ratios are measurements: the exit
code is 0 whatever they are, non-zero only when the benchmark could not measure.

    python bench/control_plane.py [--jobs 20000] [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._all_jobs_stub import stub  # noqa: E402
from bench._control_plane_report import ORIGINAL, SERVICES, report  # noqa: E402
from bench._system import (  # noqa: E402
    BenchError,
    cpu_spent,
    process_cpu_seconds,
    up_env,
    vidmesh_up,
)
from bench._timing import Timed, timed  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.harness.up import Up  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "control_plane.json"
JOBS_PER_DEVICE = 40
# Native API users whose jobs (`POST /api/jobs`) come after each phase's Streamyfin jobs.
NATIVE_USERS = 8


def load() -> float:
    return os.getloadavg()[0]


def rss_mib(pid: int) -> float | None:
    """Resident set size of `pid` in MiB (None when it is gone or not on Linux)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


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
async def phase(
    args: argparse.Namespace,
    up: Up,
    silent_port: int,
    devices: range,
    held_devices: range,
    run_dir: Path,
    tokens: list[str],
    native_before: int,
) -> dict[str, Any]:
    cpu_before = process_cpu_seconds(up.pid)
    profilers = await profile_submissions(args, up, len(held_devices) * JOBS_PER_DEVICE)
    submitted = await submit(up.url, silent_port, devices, JOBS_PER_DEVICE, args.submitters)
    held = len(held_devices) * JOBS_PER_DEVICE + native_before
    token = token_of(device_name(devices[0]))
    settle_s = await settled(up.url, token, held)
    cpu_submitting = cpu_spent(cpu_before, process_cpu_seconds(up.pid))
    native = await submit_native(
        up.url, silent_port, tokens, args.native, args.submitters, tag=str(held)
    )
    native_settle_s = await settled(up.url, token, held + args.native)
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes what it sampled when interrupted
        await profiler.wait()
    print(f"{held:,} jobs held ({submitted.rps:.1f} submissions/s)", flush=True)
    found = await answers(up.url, held_devices, JOBS_PER_DEVICE)
    names = sorted(found)
    await poll(up.url, names, 1.0, args.pollers)  # warm-up (token cache, connections)
    vidmesh_runs: list[Timed] = []
    stub_runs: list[Timed] = []
    cpu_polling: dict[str, float] = {}
    async with stub(found, run_dir) as stub_url:
        await poll(stub_url, names, 1.0, args.pollers)
        for n in range(args.rounds):  # alternating, vidmesh first
            cpu_before = process_cpu_seconds(up.pid)
            profiler = await profile(args, up, n, len(found) * JOBS_PER_DEVICE)
            vidmesh_runs.append(await poll(up.url, names, args.seconds, args.pollers))
            if profiler is not None:
                await profiler.wait()
            spent = cpu_spent(cpu_before, process_cpu_seconds(up.pid))
            for name, seconds in spent.items():
                cpu_polling[name] = round(cpu_polling.get(name, 0.0) + seconds, 2)
            stub_runs.append(await poll(stub_url, names, args.seconds, args.pollers))
    return {
        "jobs_held": len(held_devices) * JOBS_PER_DEVICE,
        "jobs_total": held + args.native,
        "devices": len(held_devices),
        "submitted": submitted,
        "settle_s": settle_s,
        "native": native,
        "native_settle_s": native_settle_s,
        "cpu_s_submitting": cpu_submitting,
        "vidmesh": vidmesh_runs,
        "stub": stub_runs,
        "cpu_s_polling": cpu_polling,
    }


async def profile(
    args: argparse.Namespace, up: Up, run: int, held: int
) -> asyncio.subprocess.Process | None:
    """With `--profile`, py-spy samples the gateway through the first /all-jobs run of each
    phase (collapsed stacks in bench/.work/; the profiler's cost shows in that run's figure)."""
    if not args.profile or run != 0:
        return None
    pid = up.children()["gateway"]
    out = WORK / f"control_plane-gateway-{held}.txt"
    return await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid),
        "--duration", str(max(1, int(args.seconds))), "--format", "raw", "--output", str(out),
        "--nonblocking", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def profile_submissions(
    args: argparse.Namespace, up: Up, held: int
) -> list[asyncio.subprocess.Process]:
    """With `--profile`, py-spy samples every service while the larger phase's jobs are submitted
    (collapsed stacks in bench/.work/control_plane-submit-<service>.txt)."""
    if not args.profile or held < args.jobs:
        return []
    py_spy = str(Path(sys.executable).parent / "py-spy")
    started = []
    for name, pid in sorted(up.children().items()):
        out = WORK / f"control_plane-submit-{name}.txt"
        started.append(
            await asyncio.create_subprocess_exec(
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "50",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        )
    return started


def rss_now(children: dict[str, int]) -> dict[str, float | None]:
    return {name: rss_mib(children[name]) if name in children else None for name in SERVICES}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    large_devices = args.jobs // JOBS_PER_DEVICE
    small_devices = max(1, large_devices // 10)
    if large_devices <= small_devices:
        raise BenchError(f"--jobs {args.jobs} is too few: at least {JOBS_PER_DEVICE * 20}")
    standin = JellyfinStandIn()
    for d in range(large_devices):
        standin.add_user(token_of(device_name(d)), f"user-{d:04d}")
    await standin.start()
    silent = Silent()
    await silent.start()
    run_dir = Path(tempfile.mkdtemp(prefix="control-plane-", dir=WORK))
    env = up_env(run_dir / "data", standin.url)
    env["VIDMESH_OUTBOUND_ALLOW"] = "127.0.0.1/32"
    env["VIDMESH_REGISTRATION"] = "open"
    results: dict[str, Any] = {
        "args": {**vars(args), "jobs_per_device": JOBS_PER_DEVICE},
        "original": ORIGINAL,
    }
    try:
        async with vidmesh_up(env, run_dir / "up.log") as up:
            children = up.children()
            missing = [name for name in SERVICES if name not in children]
            if missing:
                raise BenchError(f"vidmesh up runs no {', '.join(missing)} process")
            rss = {"0": rss_now(children)}
            tokens = await native_users(up.url, NATIVE_USERS)
            small = await phase(
                args,
                up,
                silent.port,
                range(small_devices),
                range(small_devices),
                run_dir,
                tokens,
                native_before=0,
            )
            rss[str(small["jobs_total"])] = rss_now(children)
            large = await phase(
                args,
                up,
                silent.port,
                range(small_devices, large_devices),
                range(large_devices),
                run_dir,
                tokens,
                native_before=args.native,
            )
            rss[str(large["jobs_total"])] = rss_now(children)
    except BenchError:
        print(log_tail(run_dir / "up.log"), file=sys.stderr)
        raise
    finally:
        await silent.stop()
        await standin.stop()
    results.update(phases=[small, large], rss_mib=rss)
    report(results)
    RESULT_JSON.write_text(json.dumps(msgspec.to_builtins(results), indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=20_000, help="jobs held at the end (default 20000; the first "
        "phase holds a tenth), 40 per device"
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=5.0, help="each /all-jobs run (5)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs per phase (2)")
    parser.add_argument("--submitters", type=int, default=64, help="concurrent submitters (64)")
    parser.add_argument("--pollers", type=int, default=32, help="concurrent pollers (32)")
    parser.add_argument(
        "--native", type=int, default=1000, help="POST /api/jobs submissions after each phase's"
        " Streamyfin ones (1000)"
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="--jobs 2000 --seconds 2 --rounds 1")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the services while the larger phase submits, and the gateway's polls",
    )
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.seconds, args.rounds = 2000, 2.0, 1
    return args


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        sys.exit(2)
