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
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._all_jobs_stub import stub  # noqa: E402
from bench._control_plane_loads import (  # noqa: E402
    JOBS_PER_DEVICE,
    Silent,
    answers,
    device_name,
    native_users,
    poll,
    settled,
    submit,
    submit_native,
    token_of,
)
from bench._control_plane_report import ORIGINAL, SERVICES, report  # noqa: E402
from bench._system import (  # noqa: E402
    BenchError,
    cpu_spent,
    process_cpu_seconds,
    rss_mib,
    run_bench,
    up_env,
    vidmesh_up,
)
from bench._timing import Timed  # noqa: E402
from tests.harness.logs import log_tail  # noqa: E402
from tests.harness.up import Up  # noqa: E402
from tests.jellyfin_standin import JellyfinStandIn  # noqa: E402

WORK = REPO / "bench" / ".work"
RESULT_JSON = WORK / "control_plane.json"
# Native API users whose jobs (`POST /api/jobs`) come after each phase's Streamyfin jobs.
NATIVE_USERS = 8


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
    run_bench(lambda: main(parse()))
