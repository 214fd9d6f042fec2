"""Live feeds under load: with `--feeds` Server-Sent-Events feeds open on `GET /api/events`,
(1) the latency from a stored job change to each SSE client (goals: p50 20 ms or less, p99 100 ms
or less), and (2) `GET /all-jobs` requests per second with those feeds open divided by the same
with none (goal 0.9 or more).

vidmesh runs as users run it (`vidmesh up`, a Jellyfin stand-in in this process). Events come
from paused jobs created through the native API (`POST /api/jobs/bulk` with `paused`): each is one
stored job record and one `job.accepted` event, and nothing transcodes meanwhile. An event's
`time` is taken right after its record is stored, so latency = receipt time - event time (same
machine clock), the receipt time being when the event's last byte reached the feeds' process
(`bench/_sse_feeds.py`). The figures are measurements: the exit code is 0 whatever they are.

    python bench/feed_load.py [--feeds 1000] [--events 200] [--seconds 5] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._sse_feeds import SseFeeds  # noqa: E402
from bench._system import BenchError, run_bench, up_env, vidmesh_up  # noqa: E402
from bench._timing import pct  # noqa: E402
from tests.harness import procfs  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.harness.up import Up  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402
from tests.media_clips import make_clip  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "feed_load.json"
GOAL = 0.9  # /all-jobs req/s with the feeds open, over without
LATENCY_GOALS_MS = {0.5: 20.0, 0.99: 100.0}  # event latency quantile -> at most this
TOKEN = "bench-feeds"


class AllJobsRun(NamedTuple):
    """One `/all-jobs` load: requests per second, and the gateway's own CPU time per request,
    which other work on a shared machine moves far less than the rate."""

    rps: float
    gateway_cpu_us: float  # NaN where the process's CPU time cannot be read (not Linux)


async def all_jobs_run(up: Up, seconds: float, concurrency: int) -> AllJobsRun:
    """`GET /all-jobs` as fast as `concurrency` clients can for `seconds`."""
    gateway = up.children().get("gateway")
    cpu_before = procfs.cpu_seconds(gateway) if gateway else None
    headers = {"Authorization": TOKEN}
    done = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base_url=up.url, headers=headers, connector=connector) as s:

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                async with s.get("/all-jobs", params={"deviceId": "bench"}) as response:
                    if response.status != 200:
                        raise BenchError(f"GET /all-jobs answered {response.status}")
                    await response.read()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    cpu_after = procfs.cpu_seconds(gateway) if gateway else None
    cpu_us = math.nan
    if cpu_before is not None and cpu_after is not None and done:
        cpu_us = (cpu_after - cpu_before) / done * 1e6
    return AllJobsRun(done / elapsed, cpu_us)


class FeedHolder:
    """The feeds, held by a child process: this one measures /all-jobs, and a client holding
    1,000 connections beside it would measure its own garbage collector as much as the server."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, base: str, token: str, feeds: int, events: int) -> FeedHolder:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--hold", base, token, str(feeds), str(feeds * events),
            stdout=asyncio.subprocess.PIPE, limit=1 << 27,  # the latencies come as one JSON line
        )  # fmt: skip
        holder = cls(process)
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 180)
        if line.strip() != b"open":
            raise BenchError(f"the feed holder failed: {line.decode(errors='replace')}")
        return holder

    async def result(self) -> tuple[int, list[float]]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 300)
        try:
            found = json.loads(line)
        except ValueError as exc:
            raise BenchError(f"the feed holder said {line!r}") from exc
        if found.get("error"):
            raise BenchError(found["error"])
        return int(found["received"]), [float(x) for x in found["latencies"]]

    def stop(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def hold(base: str, token: str, count: int, expected: int) -> None:
    """The child: open the feeds, say "open", then report every latency once all arrived."""
    feeds = SseFeeds(base, token, count, types="job.accepted")
    try:
        await feeds.open()
        print("open", flush=True)
        feeds.expected = expected
        if feeds.received < expected and not feeds.errors:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feeds.all_in.wait(), 240)
        feeds.close()
        if feeds.errors or feeds.received < expected:
            error = feeds.errors[0] if feeds.errors else f"{feeds.received} of {expected} events"
            print(json.dumps({"error": error}), flush=True)
        else:
            latencies = feeds.latencies()
            print(json.dumps({"received": len(latencies), "latencies": latencies}), flush=True)
    except RuntimeError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
    finally:
        feeds.close()


async def sign_in(base: str, data_dir: Path) -> str:
    password = (data_dir / "admin-password").read_text().strip()
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/api/auth/login", json={"username": "admin", "password": password}
        ) as response,
    ):
        if response.status != 200:
            raise BenchError(f"sign-in answered {response.status}")
        return str((await response.json())["access_token"])


async def make_events(base: str, token: str, source: str, count: int) -> None:
    """`count` paused jobs, in bulk requests of 20, one request every 50 ms."""
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(base_url=base, headers=headers) as s:
        left = count
        while left:
            n = min(20, left)
            body = {"paused": True, "jobs": [{"source": source} for _ in range(n)]}
            async with s.post("/api/jobs/bulk", json=body) as response:
                if response.status not in (200, 201, 207):
                    raise BenchError(f"POST /api/jobs/bulk answered {response.status}")
            left -= n
            await asyncio.sleep(0.05)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    clip = make_clip(WORK / "feed-clip.mp4", seconds=1.0)
    standin = JellyfinStandIn()
    standin.add_user(TOKEN, "bench-feeds-user")
    standin.add_media("clip", clip)
    await standin.start()
    run_dir = Path(tempfile.mkdtemp(prefix="feeds-", dir=WORK))
    env = up_env(run_dir / "data", standin.url)
    env["VIDMESH_FEED_QUEUE"] = str(max(1000, args.events * 2))
    results: dict[str, Any] = {"args": vars(args)}
    try:
        async with vidmesh_up(env, run_dir / "up.log") as up:
            token = await sign_in(up.url, run_dir / "data")
            await all_jobs_run(up, 1.0, args.concurrency)  # warm-up
            baseline = [await all_jobs_run(up, args.seconds, args.concurrency) for _ in range(2)]
            holder = await FeedHolder.start(up.url, token, args.feeds, args.events)
            try:
                loaded = [await all_jobs_run(up, args.seconds, args.concurrency) for _ in range(2)]
                source = standin.stream_url("clip", TOKEN)
                load = os.getloadavg()[0]
                await make_events(up.url, token, source, args.events)
                received, latencies = await holder.result()
                load = max(load, os.getloadavg()[0])
            finally:
                holder.stop()
            # and again with the feeds closed: the load of a shared machine drifts
            baseline += [await all_jobs_run(up, args.seconds, args.concurrency) for _ in range(2)]
    except BenchError:
        print(log_tail(run_dir / "up.log"), file=sys.stderr)
        raise
    finally:
        await standin.stop()
    without_rps = statistics.median(run.rps for run in baseline)
    with_rps = statistics.median(run.rps for run in loaded)
    ratio = with_rps / without_rps
    without_cpu = statistics.median(run.gateway_cpu_us for run in baseline)
    with_cpu = statistics.median(run.gateway_cpu_us for run in loaded)
    results.update(
        rps_without_feeds=[run.rps for run in baseline],
        rps_with_feeds=[run.rps for run in loaded],
        ratio=ratio,
        gateway_cpu_us_per_request_without_feeds=[run.gateway_cpu_us for run in baseline],
        gateway_cpu_us_per_request_with_feeds=[run.gateway_cpu_us for run in loaded],
        events_received=received,
        latency_p50_ms=pct(latencies, 0.5) * 1000,
        latency_p99_ms=pct(latencies, 0.99) * 1000,
        latency_max_ms=max(latencies) * 1000,
        load_1min=load,
    )
    print(f"feeds open: {args.feeds}, events: {args.events} ({received} deliveries)")
    print(f"  event latency, stored change -> SSE client (1-minute load {load:.2f}):")
    for q, goal in LATENCY_GOALS_MS.items():
        ms = pct(latencies, q) * 1000
        verdict = "PASS" if ms <= goal else "MISS"
        of_goal = f"{ms / goal:.2f} of it"
        print(f"    p{q * 100:g} {ms:7.1f} ms   goal <= {goal:g} ms   {of_goal}   {verdict}")
    print(f"    max {results['latency_max_ms']:7.1f} ms")
    for name, rps, cpu, runs in (
        ("without feeds:", without_rps, without_cpu, baseline),
        ("with feeds:   ", with_rps, with_cpu, loaded),
    ):
        each = ", ".join(f"{run.rps:.0f}" for run in runs)
        print(f"  GET /all-jobs {name} {rps:8.1f} req/s ({each}), gateway CPU {cpu:.0f} µs/request")
    print(f"  ratio {ratio:.3f}   goal >= {GOAL}   {'PASS' if ratio >= GOAL else 'MISS'}")
    print(f"  (gateway CPU per request, with feeds / without: {with_cpu / without_cpu:.3f})")
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(run_dir)
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feeds", type=int, default=1000, help="SSE feeds open (default 1000)")
    parser.add_argument("--events", type=int, default=200, help="job events made (default 200)")
    parser.add_argument("--seconds", type=float, default=5.0, help="each rps run (default 5)")
    parser.add_argument("--concurrency", type=int, default=8, help="/all-jobs clients (8)")
    return parser.parse_args()


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--hold":
        _, _, url, key, n, total = sys.argv
        asyncio.run(hold(url, key, int(n), int(total)))
        sys.exit(0)
    run_bench(lambda: main(parse()))
