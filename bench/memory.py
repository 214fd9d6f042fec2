"""Memory and start-up as job history piles up (issue 15, goal 4): a fresh nats-server, `--jobs`
job records written straight into the jobs bucket (as a server holds them after months: built
through the state machine, nearly all finished, see bench/_job_records.py), then the gateway,
the scheduler and the statistics service started as `python -m services.<name>` on 0, a tenth
of `--jobs` and `--jobs` records: the gateway's time from start to ready (`GET /readyz` 200),
each service's RSS once it has settled, and again after every Streamyfin device's
`GET /all-jobs?deviceId=` has been served once (each answer checked); KiB per job above idle.

Ratios are measurements: the exit code is 0 whatever they are, non-zero only when the benchmark
could not measure.

    python bench/memory.py [--jobs 100000] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._job_records import (  # noqa: E402
    JOBS_PER_DEVICE,
    device_name,
    device_of,
    job_record,
    owner_of,
)
from bench._system import BenchError, load, rss_mib, run_bench  # noqa: E402
from services.gateway.faces.streamyfin.jobs import SHOWN_TO_DEVICE  # noqa: E402
from shared.nats.subjects import Names  # noqa: E402
from shared.nats.topology import ensure_topology  # noqa: E402
from tests.harness import Deployment, ServiceProcess, fast_env, free_port, new_namespace  # noqa: E402
from tests.harness.procfs import cpu_seconds  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402
from vidmesh.natsserver import NatsServer  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "memory.json"
SERVICES = ("gateway", "scheduler", "statistics")
READY_GOAL_S = 10.0
KIB_PER_JOB_GOAL = 1.5
READY_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0
WRITE_BATCH = 2_000


def rss_of(pid: int) -> float:
    """Resident set size of `pid` in MiB; a benchmark error when it has none."""
    found = rss_mib(pid)
    if found is None:
        raise BenchError(f"no VmRSS for {pid}")
    return found


def token_of(owner: str) -> str:
    return f"token-{owner}"


def new_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


# ---- the history: records straight into the bucket ---------------------------------------------
async def write_jobs(nc: Any, bucket: str, first: int, last: int, now: float) -> float:
    """Jobs `first` .. `last - 1` published to the bucket's KV subjects, pipelined (no reply
    per record), then waited for until the bucket's stream holds them; seconds taken."""
    encoder = msgspec.json.Encoder()
    js = nc.jetstream()
    stream = f"KV_{bucket}"
    started = time.perf_counter()
    for n in range(first, last):
        record = job_record(n, now)
        await nc.publish(f"$KV.{bucket}.{record.id}", encoder.encode(record))
        if (n + 1) % WRITE_BATCH == 0:
            await nc.flush()
    await nc.flush()
    deadline = time.monotonic() + 60
    while (held := (await js.stream_info(stream)).state.messages) < last:
        if time.monotonic() > deadline:
            raise BenchError(f"the jobs bucket holds {held} records, not {last}")
        await asyncio.sleep(0.05)
    return time.perf_counter() - started


def shown_per_device(count: int, now: float) -> dict[int, int]:
    """Device -> how many of its jobs its `/all-jobs?deviceId=` lists."""
    shown: dict[int, int] = {}
    for n in range(count):
        device = device_of(n)
        listed = job_record(n, now).status in SHOWN_TO_DEVICE
        shown[device] = shown.get(device, 0) + listed
    return shown


# ---- one size: start, ready, settle, RSS, every device's list, RSS --------------------------
async def ready_after(deployment: Deployment, process: ServiceProcess) -> float:
    """Seconds from the process's launch until the gateway answers `GET /readyz` with 200."""
    async with aiohttp.ClientSession() as session:
        while True:
            if not process.alive:
                raise BenchError(f"the gateway exited while starting:\n{process.log()[-3000:]}")
            if deployment.age(process) > READY_TIMEOUT:
                raise BenchError(f"the gateway was not ready in {READY_TIMEOUT:g} s")
            try:
                async with session.get(f"{deployment.url}/readyz") as response:
                    if response.status == 200:
                        return deployment.age(process)
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)


async def settled(processes: list[ServiceProcess]) -> None:
    """Until none of `processes` spends more than 3 % of a core over a second (the scheduler
    placing the queued jobs, the statistics service folding events), or SETTLE_TIMEOUT."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    pids = [p.process.pid for p in processes if p.process is not None]
    before = [cpu_seconds(pid) or 0.0 for pid in pids]
    while time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        after = [cpu_seconds(pid) or 0.0 for pid in pids]
        if all(b - a < 0.03 for a, b in zip(before, after, strict=True)):
            return
        before = after


async def every_device_list(url: str, shown: dict[int, int]) -> float:
    """Every device's `/all-jobs?deviceId=` once, as its owner, checked; seconds taken."""
    started = time.perf_counter()
    async with aiohttp.ClientSession(base_url=url) as session:
        for device, expected in shown.items():
            headers = {"Authorization": token_of(owner_of(device))}
            params = {"deviceId": device_name(device)}
            async with session.get("/all-jobs", params=params, headers=headers) as response:
                if response.status != 200:
                    raise BenchError(f"GET /all-jobs answered {response.status}")
                listed = await response.json()
            if len(listed) != expected:
                raise BenchError(f"device {device}: /all-jobs listed {len(listed)}, not {expected}")
    return time.perf_counter() - started


async def measure(env: dict[str, str], root: Path, jobs: int, now: float) -> dict[str, Any]:
    """The three services started on `jobs` records: ready time, RSS settled, RSS after every
    device's list."""
    deployment = Deployment(env=env, root=root)
    try:
        load_then = load()
        gateway = deployment.launch("gateway")
        ready_s = await ready_after(deployment, gateway)
        others = [deployment.launch(name) for name in SERVICES[1:]]
        for process in others:
            await deployment.ready(process, timeout=READY_TIMEOUT)
        processes = [gateway, *others]
        await settled(processes)
        pids = {p.name: p.process.pid for p in processes if p.process is not None}
        rss = {name: rss_of(pid) for name, pid in pids.items()}
        shown = shown_per_device(jobs, now)
        lists_s = await every_device_list(deployment.url, shown)
        rss_lists = {name: rss_of(pid) for name, pid in pids.items()}
        return {
            "jobs": jobs,
            "gateway_ready_s": round(ready_s, 2),
            "load": round(load_then, 2),
            "rss_mib": rss,
            "devices_listed": len(shown),
            "lists_s": round(lists_s, 2),
            "rss_mib_after_lists": rss_lists,
        }
    finally:
        for process in deployment.processes:
            if process.alive:
                process.terminate()


# ---- the report -----------------------------------------------------------------------------
def per_job(idle: dict[str, float], at: dict[str, float], jobs: int) -> dict[str, float]:
    return {name: (at[name] - idle[name]) * 1024 / jobs for name in SERVICES}


# RSS read once settled, and once every device's list has been served
READINGS = (("settled", "rss_mib"), ("+ lists", "rss_mib_after_lists"))


def report(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Prints the table and the goals; returns KiB per job above idle, by size and reading."""
    idle = sizes[0]["rss_mib"]
    heading = "".join(f"{name:>12}" for name in SERVICES)
    print(f"\n{'jobs held':>10} {'ready':>8}   RSS MiB   {heading}   KiB/job above idle")
    verdict: dict[str, Any] = {}
    for size in sizes:
        for label, key in READINGS:
            first = key == "rss_mib"
            held = f"{size['jobs']:>10,}" if first else " " * 10
            ready = f"{size['gateway_ready_s']:6.2f} s" if first else " " * 8
            row = "".join(f"{size[key][name]:12.1f}" for name in SERVICES)
            kib = per_job(idle, size[key], size["jobs"]) if size["jobs"] else None
            if kib is not None:
                verdict.setdefault(str(size["jobs"]), {})[key] = kib
            each = " ".join(f"{kib[name]:5.2f}" for name in SERVICES) if kib else ""
            print(f"{held} {ready}   {label:<8}{row}   {each}")
        print(f"{'':>10} {'':>8}   (load {size['load']:.2f} at its start)")
    largest = sizes[-1]
    for size in sizes[1:]:
        ready = size["gateway_ready_s"]
        verdict_ready = "PASS" if ready <= READY_GOAL_S else "FAIL"
        print(
            f"gateway ready with {size['jobs']:,} jobs: {ready:.2f} s"
            f"   goal <= {READY_GOAL_S:g} s   {verdict_ready}"
        )
    for label, key in READINGS:
        kib = verdict[str(largest["jobs"])][key]["gateway"]
        print(
            f"gateway KiB per job above idle at {largest['jobs']:,} ({label.strip('+ ')}):"
            f" {kib:.2f}   goal <= {KIB_PER_JOB_GOAL:g}"
            f"   {'PASS' if kib <= KIB_PER_JOB_GOAL else 'FAIL'}"
        )
    return verdict


async def main(args: argparse.Namespace) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    sizes = sorted({0, args.jobs // 10, args.jobs})
    devices = (args.jobs + JOBS_PER_DEVICE - 1) // JOBS_PER_DEVICE
    run_dir = Path(tempfile.mkdtemp(prefix="memory-", dir=WORK))
    standin = JellyfinStandIn()
    for owner in sorted({owner_of(device) for device in range(devices)}):
        standin.add_user(token_of(owner), owner)
    await standin.start()
    server = NatsServer(run_dir / "nats", log_file=run_dir / "nats.log")
    await server.start()
    namespace = new_namespace()
    env = fast_env(
        namespace,
        run_dir / "data",
        server.url,
        standin.url,
        VIDMESH_SWEEP_INTERVAL="30",  # the default: fast_env's 0.5 s sweeps are for tests
        VIDMESH_TIME_TO_KEEP_FILES="100000",  # nothing expires or is purged while measured
        VIDMESH_PORT=str(free_port()),
    )
    now = time.time()
    results: dict[str, Any] = {"args": vars(args), "namespace": namespace, "sizes": []}
    nc = await nats.connect(server.url)
    try:
        names = Names(namespace)
        await ensure_topology(nc.jetstream(), names)
        held = 0
        for jobs in sizes:
            write_s = await write_jobs(nc, names.jobs_bucket, held, jobs, now)
            held = jobs
            print(f"{jobs:,} jobs in the bucket (written in {write_s:.1f} s); starting", flush=True)
            size = await measure(env, new_folder(run_dir / f"logs-{jobs}"), jobs, now)
            results["sizes"].append(size)
            print(json.dumps(size), flush=True)
    finally:
        await nc.close()
        await server.stop()
        await standin.stop()
    results["kib_per_job"] = report(results["sizes"])
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--jobs", type=int, default=100_000, help="records at the largest size (100000); the "
        "sizes measured are 0, a tenth of it and it"
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the data folder and logs")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(lambda: main(parse()))
