"""Horizontal scale on one machine: N `vidmesh transcoder` processes against the same NATS share
N jobs. Prints (1) the throughput of N transcoders on N jobs divided by N x the throughput of one
transcoder on one job (goal 0.9 or more, for N up to the cores available), and (2) the
queued-to-encoding latency with a free slot (goal p50 50 ms or less), from the events vidmesh
publishes: `job.started` time minus `job.accepted` time, both stamped by the services.

vidmesh runs as `vidmesh up` (its own transcoder, one slot) plus N-1 more `vidmesh transcoder`
processes (one slot each) against its NATS; MAX_CONCURRENT_JOBS = N; each transcoder runs on a
core of its own (VIDMESH_CPUS) with cores / N threads per transcode (VIDMESH_FFMPEG_THREADS), as
an operator sizes a machine's transcoders; the other services run on any core. Jobs go through
the Streamyfin API from the Jellyfin stand-in, each on its own item (no shared renditions). The
ratio is a measurement: the exit code is 0 whatever it is.

    python bench/scale.py [--transcoders 2] [--seconds 8] [--latency-jobs 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._system import BenchError, run_bench, up_env, vidmesh_up  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402
from tests.media_clips import make_clip  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "scale.json"
TOKEN = "bench-scale"


class Events:
    """job.accepted and job.started times per job, from the events stream."""

    def __init__(self) -> None:
        self.accepted: dict[str, float] = {}
        self.started: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def follow(self, url: str) -> nats.NATS:
        nc = await nats.connect(url)

        async def on_event(msg: Any) -> None:
            event = json.loads(msg.data)
            at = datetime.fromisoformat(event["time"]).timestamp()
            kind = {"job.accepted": self.accepted, "job.started": self.started}.get(event["type"])
            if event["type"] == "job.completed":
                kind = self.completed
            if kind is not None:
                kind.setdefault(event["job_id"], at)
                self.changed.set()

        await nc.subscribe("vidmesh.evt.job.>", cb=on_event)
        return nc

    async def wait(self, table: dict[str, float], ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not all(i in table for i in ids):
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(
                    f"only {sum(i in table for i in ids)} of {len(ids)} jobs got there"
                )
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                continue


async def submit(session: aiohttp.ClientSession, base: str, url: str, item: str) -> str:
    body = {"url": url, "fileExtension": "mp4", "deviceId": f"dev-{item}", "itemId": item}
    async with session.post(f"{base}/optimize-version", json=body) as response:
        if response.status != 201:
            raise BenchError(f"POST /optimize-version answered {response.status}")
        return str((await response.json())["id"])


async def batch(
    session: aiohttp.ClientSession,
    base: str,
    standin: JellyfinStandIn,
    events: Events,
    items: list[str],
) -> float:
    """Submit every item at once; seconds from the first acceptance to the last completion."""
    ids = await asyncio.gather(
        *(submit(session, base, standin.stream_url(i, TOKEN), i) for i in items)
    )
    await events.wait(events.completed, list(ids), timeout=600)
    return max(events.completed[i] for i in ids) - min(events.accepted[i] for i in ids)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    n = args.transcoders
    clip = make_clip(
        WORK / f"scale-{args.seconds:g}s.mp4",
        seconds=args.seconds,
        width=1280,
        height=720,
        fps=30,
        vcodec="mpeg4",  # the default profile must re-encode it
    )
    standin = JellyfinStandIn()
    standin.add_user(TOKEN, "bench-scale-user")
    rounds = args.rounds
    items = [f"item-{k}" for k in range(1 + rounds * (1 + n) + args.latency_jobs)]
    for item in items:
        standin.add_media(item, clip)
    await standin.start()
    run_dir = Path(tempfile.mkdtemp(prefix="scale-", dir=WORK))
    env = up_env(run_dir / "data", standin.url)
    cores = sorted(os.sched_getaffinity(0))
    # one core's share of threads per transcoder, for the one-transcoder reference too
    threads = max(1, len(cores) // n)
    env.update(
        MAX_CONCURRENT_JOBS=str(n),
        VIDMESH_SLOTS="1",
        MAX_CACHED_PER_USER="0",
        VIDMESH_FFMPEG_THREADS=str(threads),
        VIDMESH_CPUS=str(cores[0]),  # `vidmesh up`'s transcoder
    )
    extra: list[asyncio.subprocess.Process] = []
    results: dict[str, Any] = {"args": vars(args), "cores": os.cpu_count(), "threads": threads}
    try:
        async with vidmesh_up(env, run_dir / "up.log") as up:
            nats_url = f"nats://127.0.0.1:{env['VIDMESH_NATS_PORT']}"
            for k in range(n - 1):
                # each transcoder on cores of its own, as a static CPU manager would place them
                transcoder_env = {
                    **env,
                    "VIDMESH_NATS_URL": nats_url,
                    "VIDMESH_CPUS": str(cores[(k + 1) % len(cores)]),
                }
                log = (run_dir / f"transcoder-{k}.log").open("wb")
                extra.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "vidmesh.cli",
                        "transcoder",
                        env=transcoder_env,
                        stdout=log,
                        stderr=log,
                        cwd=REPO,
                    )  # fmt: skip
                )
            events = Events()
            nc = await events.follow(nats_url)
            try:
                headers = {"Authorization": TOKEN}
                async with aiohttp.ClientSession(headers=headers) as session:
                    await batch(session, up.url, standin, events, items[:1])  # warm-up
                    # rounds alternate, so a slow spell of the machine hits both sides
                    ones, manys, next_item = [], [], 1
                    for _ in range(rounds):
                        single = items[next_item : next_item + 1]
                        group = items[next_item + 1 : next_item + 1 + n]
                        next_item += 1 + n
                        ones.append(await batch(session, up.url, standin, events, single))
                        manys.append(await batch(session, up.url, standin, events, group))
                    # latency with a free slot: one job at a time, each after the last completed
                    waits = []
                    for item in items[next_item : next_item + args.latency_jobs]:
                        job_id = await submit(
                            session, up.url, standin.stream_url(item, TOKEN), item
                        )
                        await events.wait(events.completed, [job_id], timeout=300)
                        waits.append(events.started[job_id] - events.accepted[job_id])
            finally:
                await nc.close()
    except BenchError:
        print(log_tail(run_dir / "up.log"), file=sys.stderr)
        raise
    finally:
        for process in extra:
            if process.returncode is None:
                process.terminate()
                await process.wait()
        await standin.stop()
    one, many = statistics.median(ones), statistics.median(manys)
    ratio = one / many  # (n jobs / many) / (n * 1 job / one)
    results.update(
        one_transcoder_one_job_s=one,
        n_transcoders_n_jobs_s=many,
        rounds_one_s=ones,
        rounds_n_s=manys,
        ratio=ratio,
        queue_to_encoding_ms=[round(w * 1000, 1) for w in waits],
        p50_ms=statistics.median(waits) * 1000,
        p90_ms=sorted(waits)[int(0.9 * (len(waits) - 1))] * 1000,
    )
    print(f"clip: {args.seconds:g} s 1280x720 30 fps MPEG-4 (re-encoded to H.264)")
    each = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(ones, manys, strict=True))
    print(f"  rounds (1 job / {n} jobs, s):     {each}")
    print(f"  1 transcoder, 1 job (median):   {one:7.2f} s")
    print(f"  {n} transcoders, {n} jobs (median): {many:7.2f} s")
    print(
        f"  throughput ratio (N jobs/N x 1): {ratio:.3f}   goal >= 0.9  (cores: {os.cpu_count()})"
    )
    print(f"  queued -> encoding, free slot:  p50 {results['p50_ms']:.1f} ms, "
          f"p90 {results['p90_ms']:.1f} ms over {len(waits)} jobs   goal p50 <= 50 ms")  # fmt: skip
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"results: {RESULT_JSON.relative_to(REPO)}")
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transcoders", type=int, default=2, help="N (default 2)")
    parser.add_argument("--seconds", type=float, default=8.0, help="clip length (default 8)")
    parser.add_argument("--latency-jobs", type=int, default=20, help="jobs for the latency")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (median)")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(lambda: main(parse()))
