"""Download throughput: `GET /download/{id}` with Range, against references measured alongside.

A job's output (a stream copy of a generated h264 + AAC clip, so it is as big as the clip) is
fetched in `--range-mib` ranges, `--parallel` requests at a time, `--rounds` times over, the way a
resuming download manager fetches it. Three figures:

- local backend: vidmesh (`vidmesh up`, outputs on local disk) / a plain aiohttp `FileResponse`
  server (its own process) serving the same bytes. Goal: 0.9 or more.
- S3 backend: vidmesh (`vidmesh up` with its store in SeaweedFS, bytes proxied by the gateway) /
  the same ranges fetched straight from SeaweedFS through a presigned URL (goal: 0.8 or more),
  and / the local `FileResponse` reference.

Runs alternate, reference first. The medians are reported. The ratio is a measurement: the exit
code is 0 whatever it is; only errors exit non-zero.

    python bench/download_throughput.py [--mib 128] [--rounds 5] [--range-mib 8] [--parallel 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import imageio_ffmpeg

REPO = Path(__file__).resolve().parent.parent
# bench/ and tests/ are not installed; this reuses the tests' Jellyfin stand-in and S3 server
sys.path.insert(0, str(REPO))

from bench._system import BenchError, run_bench, up_env, vidmesh_up  # noqa: E402
from shared.blobs.backends import open_store  # noqa: E402
from tests.harness import free_port, procfs  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402
from tests.storage_servers import SeaweedS3  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "download_throughput.json"
GOAL_LOCAL = 0.9
GOAL_S3 = 0.8  # of the same ranges fetched straight from the store (issue 15, goal 5)
BUCKET = "vidmesh-bench"
# under the "optimized" profile's 8 Mb/s cap, so the job copies the streams: output ~ clip size
VIDEO_KBPS = 7000
AUDIO_KBPS = 128
JOB_DEADLINE_S = 600.0

# The reference: aiohttp's own static file serving, nothing else, in its own process.
FILE_SERVER = """
import sys
from aiohttp import web
path, port = sys.argv[1], int(sys.argv[2])
async def serve(request):
    return web.FileResponse(path)
app = web.Application()
app.router.add_get("/file", serve)
web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
"""


def make_source(mib: int) -> Path:
    """A cached h264 + AAC mp4 of about `mib` MiB: noise at a capped rate, so it stays that size."""
    seconds = mib * 8 * 1024 * 1024 / ((VIDEO_KBPS + AUDIO_KBPS) * 1000)
    path = WORK / f"download-source-{mib}mib.mp4"
    if path.exists():
        return path
    WORK.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    argv = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"nullsrc=s=640x360:r=25:d={seconds:.1f},geq=random(1)*255:128:128",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds:.1f}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-b:v", f"{VIDEO_KBPS}k", "-maxrate", f"{VIDEO_KBPS}k", "-bufsize", f"{VIDEO_KBPS}k",
        "-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ac", "2", "-movflags", "+faststart",
        str(partial),
    ]  # fmt: skip
    print(f"generating a {seconds:.0f} s source clip (~{mib} MiB) ...", flush=True)
    subprocess.run(argv, check=True)
    partial.rename(path)
    return path


def seaweed_pids(seaweed: SeaweedS3) -> list[int]:
    """The SeaweedFS processes serving from `seaweed`'s folder."""
    root = str(seaweed.root)
    return [pid for pid in procfs.pids() if any(root in arg for arg in procfs.command_line(pid))]


def ranges_of(size: int, range_bytes: int) -> list[tuple[int, int]]:
    return [(start, min(start + range_bytes, size) - 1) for start in range(0, size, range_bytes)]


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    ranges: list[tuple[int, int]],
    parallel: int,
    headers: dict[str, str] | None = None,
) -> float:
    """Fetch every range (`parallel` at a time); return the throughput in MiB/s."""
    queue = list(reversed(ranges))
    received = 0

    async def worker() -> None:
        nonlocal received
        while queue:
            start, end = queue.pop()
            ask = {**(headers or {}), "Range": f"bytes={start}-{end}"}
            async with session.get(url, headers=ask) as response:
                if response.status != 206:
                    raise BenchError(f"GET {url.split('?')[0]} answered {response.status}")
                async for chunk in response.content.iter_chunked(1 << 20):
                    received += len(chunk)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    elapsed = time.perf_counter() - started
    expected = sum(end - start + 1 for start, end in ranges)
    if received != expected:
        raise BenchError(f"received {received} bytes of {expected}")
    return received / (1 << 20) / elapsed


@contextlib.asynccontextmanager
async def file_server(path: Path) -> AsyncIterator[str]:
    """The reference server in its own process; yields the file's URL once it answers."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FILE_SERVER, str(path), str(port)
    )
    url = f"http://127.0.0.1:{port}/file"
    try:
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.head(url) as response:
                        if response.status == 200:
                            break
                if time.monotonic() > deadline or process.returncode is not None:
                    raise BenchError("the reference file server did not start")
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def transcode(
    up_url: str, standin: JellyfinStandIn, item: str, token: str, copy_to: Path
) -> dict[str, Any]:
    """One Streamyfin job for `item`; waits until it is downloadable, saves the output to
    `copy_to` (checking its SHA-256) and returns the job."""
    headers = {"Authorization": f'MediaBrowser Token="{token}"'}
    async with aiohttp.ClientSession(base_url=up_url, headers=headers) as session:
        body = {
            "url": standin.stream_url(item, token),
            "fileExtension": "mp4",
            "deviceId": "bench",
            "itemId": item,
            "item": {"Id": item, "Name": item},
        }
        async with session.post("/optimize-version", json=body) as response:
            if response.status != 201:
                raise BenchError(f"POST /optimize-version answered {response.status}")
            job_id = (await response.json())["id"]
        deadline = time.monotonic() + JOB_DEADLINE_S
        while True:
            async with session.get(f"/job-status/{job_id}") as response:
                job: dict[str, Any] = await response.json()
            if job["status"] == "completed":
                break
            if job["status"] in ("failed", "cancelled") or time.monotonic() > deadline:
                raise BenchError(f"job {job_id} did not complete: {job}")
            await asyncio.sleep(0.2)
        digest = hashlib.sha256()
        async with session.get(f"/download/{job_id}") as response:
            with copy_to.open("wb") as out:
                async for chunk in response.content.iter_chunked(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != job["checksum"]:
            raise BenchError("the downloaded output does not match the job's checksum")
        return job


class CpuMeter:
    """CPU milliseconds each process spent per MiB fetched, summed over the timed rounds of each
    label: on a machine with few cores the client, the store and the gateway share them, so
    what the gateway adds per MiB (and what it makes the others spend) bounds the ratio."""

    def __init__(self, processes: dict[str, list[int]]) -> None:
        self.processes = processes
        self.spent: dict[str, dict[str, float]] = {}
        self.mib: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        return {
            name: sum(procfs.cpu_seconds(pid) or 0.0 for pid in pids)
            for name, pids in self.processes.items()
        }

    def wrap(self, label: str, measure: Any, mib: float) -> Any:
        async def metered() -> float:
            before = self._now()
            rate: float = await measure()
            after = self._now()
            spent = self.spent.setdefault(label, dict.fromkeys(self.processes, 0.0))
            for name in self.processes:
                spent[name] += after[name] - before[name]
            self.mib[label] = self.mib.get(label, 0.0) + mib
            return rate

        return metered

    def report(self) -> dict[str, dict[str, float]]:
        per_mib = {
            label: {name: round(1000 * s / self.mib[label], 3) for name, s in spent.items()}
            for label, spent in self.spent.items()
        }
        names = list(self.processes)
        print(f"  CPU ms per MiB fetched       {''.join(f'{n:>11}' for n in names)}")
        for label, row in per_mib.items():
            print(f"    {label:<26} {''.join(f'{row[n]:11.2f}' for n in names)}")
        return per_mib


async def alternate(
    label_a: str,
    measure_a: Any,
    label_b: str,
    measure_b: Any,
    rounds: int,
) -> dict[str, list[float]]:
    """`rounds` pairs, a then b; each call returns MiB/s. One untimed warm-up of each first."""
    await measure_a()
    await measure_b()
    results: dict[str, list[float]] = {label_a: [], label_b: []}
    for _ in range(rounds):
        results[label_a].append(await measure_a())
        results[label_b].append(await measure_b())
    return results


def report(title: str, results: dict[str, list[float]], vidmesh: str, reference: str) -> float:
    mid = {label: statistics.median(values) for label, values in results.items()}
    ratio = mid[vidmesh] / mid[reference]
    print(f"\n{title}")
    for label, values in results.items():
        runs = " ".join(f"{v:7.1f}" for v in values)
        print(f"  {label:<28} median {mid[label]:8.1f} MiB/s   runs {runs}")
    print(f"  ratio {vidmesh} / {reference} = {ratio:.3f}")
    return ratio


async def main(args: argparse.Namespace) -> dict[str, Any]:
    source = make_source(args.mib)
    run_dir = Path(tempfile.mkdtemp(prefix="download-", dir=WORK))
    standin = JellyfinStandIn()
    standin.add_user("bench-local", "bench-user-local")
    standin.add_user("bench-s3", "bench-user-s3")
    standin.add_media("bench-local", source)
    standin.add_media("bench-s3", source)
    await standin.start()
    seaweed = SeaweedS3(run_dir / "seaweed")
    results: dict[str, Any] = {"args": vars(args)}
    try:
        local_copy = run_dir / "output-local.mp4"
        env = up_env(run_dir / "data-local", standin.url)
        async with vidmesh_up(env, run_dir / "up-local.log") as up:
            job = await transcode(up.url, standin, "bench-local", "bench-local", local_copy)
            size = int(job["size"])
            ranges = ranges_of(size, args.range_mib << 20)
            print(f"output: {size / (1 << 20):.1f} MiB in {len(ranges)} ranges of "
                  f"{args.range_mib} MiB, {args.parallel} at a time")  # fmt: skip
            results["output_bytes"] = size
            vidmesh_url = f"{up.url}/download/{job['id']}"
            auth = {"Authorization": 'MediaBrowser Token="bench-local"'}
            async with file_server(local_copy) as ref_url, aiohttp.ClientSession() as session:
                local = await alternate(
                    "aiohttp FileResponse",
                    lambda: fetch(session, ref_url, ranges, args.parallel),
                    "vidmesh local",
                    lambda: fetch(session, vidmesh_url, ranges, args.parallel, auth),
                    args.rounds,
                )
        results["local"] = local
        results["local_ratio"] = report(
            "local backend", local, "vidmesh local", "aiohttp FileResponse"
        )
        print(
            f"  goal >= {GOAL_LOCAL}   {'PASS' if results['local_ratio'] >= GOAL_LOCAL else 'MISS'}"
        )

        await seaweed.start()
        await seaweed.create_bucket(BUCKET)
        env = up_env(run_dir / "data-s3", standin.url)
        env.update(
            VIDMESH_STORE=f"s3://{BUCKET}/service",
            VIDMESH_STORE_ENDPOINT=seaweed.endpoint,
            VIDMESH_STORE_REGION="us-east-1",
            VIDMESH_STORE_ACCESS_KEY_ID=seaweed.access_key,
            VIDMESH_STORE_SECRET_ACCESS_KEY=seaweed.secret_key,
        )
        s3_copy = run_dir / "output-s3.mp4"
        async with vidmesh_up(env, run_dir / "up-s3.log") as up:
            job = await transcode(up.url, standin, "bench-s3", "bench-s3", s3_copy)
            ranges = ranges_of(int(job["size"]), args.range_mib << 20)
            store = open_store(seaweed.config(BUCKET, "service"))
            presigned = await store.presign(job["outputPath"], 3600)
            if presigned is None:
                raise BenchError("the S3 store offered no presigned URL")
            vidmesh_url = f"{up.url}/download/{job['id']}"
            auth = {"Authorization": 'MediaBrowser Token="bench-s3"'}
            meter = CpuMeter(
                {
                    "gateway": [up.children()["gateway"]],
                    "SeaweedFS": seaweed_pids(seaweed),
                    "client": [os.getpid()],
                }
            )
            mib = int(job["size"]) / (1 << 20)
            async with file_server(s3_copy) as ref_url, aiohttp.ClientSession() as session:
                s3 = await alternate(
                    "SeaweedFS presigned",
                    meter.wrap(
                        "SeaweedFS presigned",
                        lambda: fetch(session, presigned, ranges, args.parallel),
                        mib,
                    ),
                    "vidmesh S3",
                    meter.wrap(
                        "vidmesh S3",
                        lambda: fetch(session, vidmesh_url, ranges, args.parallel, auth),
                        mib,
                    ),
                    args.rounds,
                )
                s3["aiohttp FileResponse"] = [
                    await fetch(session, ref_url, ranges, args.parallel) for _ in range(args.rounds)
                ]
        results["s3"] = s3
        results["s3_ratio_presigned"] = report(
            "S3 backend (SeaweedFS)", s3, "vidmesh S3", "SeaweedFS presigned"
        )
        verdict = "PASS" if results["s3_ratio_presigned"] >= GOAL_S3 else "MISS"
        print(f"  goal >= {GOAL_S3}   {verdict}")
        results["s3_cpu_ms_per_mib"] = meter.report()
        mid_s3 = statistics.median(s3["vidmesh S3"])
        results["s3_ratio_local_reference"] = mid_s3 / statistics.median(s3["aiohttp FileResponse"])
        print(
            f"  ratio vidmesh S3 / aiohttp FileResponse = {results['s3_ratio_local_reference']:.3f}"
        )
    except BenchError:
        for log in (run_dir / "up-local.log", run_dir / "up-s3.log"):
            print(f"--- {log.name}\n{log_tail(log)}", file=sys.stderr)
        raise
    finally:
        await seaweed.stop()
        await standin.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    RESULT_JSON.write_text(json.dumps(results, indent=2))
    print(f"\nresults: {RESULT_JSON.relative_to(REPO)}")
    return results


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="output size in MiB (default 128)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds of each (default 5)")
    parser.add_argument("--range-mib", type=int, default=8, help="range size (default 8 MiB)")
    parser.add_argument("--parallel", type=int, default=2, help="ranges at a time (default 2)")
    parser.add_argument("--keep", action="store_true", help="keep the run folder")
    return parser.parse_args()


if __name__ == "__main__":
    run_bench(lambda: main(parse()))
