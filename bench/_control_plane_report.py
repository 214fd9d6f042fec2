"""How `bench/control_plane.py` reads its results: each phase's figures against the stub and
the original server's, the /all-jobs rate at 10x the jobs against 1x, and RSS per job held; the
ratios are printed with their goals and kept in the results."""

from __future__ import annotations

import os
from typing import Any

from bench._timing import Timed, median_run

SCALE_GOAL = 0.9  # /all-jobs req/s with 10x the jobs held / with 1x
STUB_GOAL = 0.7  # vidmesh /all-jobs req/s / the stub's
ORIGINAL_GOAL = 2.0  # vidmesh /all-jobs req/s / the original's
# The original Streamyfin optimize server (in-memory jobs), 2,000 jobs from 50 devices, measured
# in issue 15 on the 2-core development machine: (low, high) of its runs.
ORIGINAL = {
    "submit_rps": (830.0, 936.0),
    "submit_p99_ms": (133.0, 162.0),
    "all_jobs_rps": (1523.0, 1539.0),
    "all_jobs_p99_ms": (34.0, 36.0),
}
# The services whose RSS is reported.
SERVICES = ("gateway", "scheduler", "statistics")


def _cpu(spent: dict[str, float]) -> str:
    busy = sorted(spent.items(), key=lambda item: -item[1])
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in busy if seconds >= 0.01)


def _submissions(route: str, sub: Timed, settle_s: float, original: dict[str, Any]) -> None:
    """A submission load's figures, against the original's best run, and through the pipeline."""
    print(
        f"  {route:<22} {sub.rps:8.1f} /s     p50 {sub.p50_ms:6.1f} ms  "
        f"p99 {sub.p99_ms:6.1f} ms  ({sub.requests} jobs, load {sub.load:.2f})"
    )
    low, high = original["submit_rps"]
    best_p99, worst_p99 = original["submit_p99_ms"]
    rate, p99 = sub.rps / high, sub.p99_ms / best_p99
    print(
        f"    / original {rate:.2f}-{sub.rps / low:.2f}   "
        f"p99 / original's {sub.p99_ms / worst_p99:.2f}-{p99:.2f}   "
        f"goal rate >= 1 and p99 <= 1 of its best run: "
        f"{'PASS' if rate >= 1 and p99 <= 1 else 'MISS'}"
    )
    print(
        f"    every job stored and counted {settle_s:.2f} s after the last 201: "
        f"{sub.requests / (sub.seconds + settle_s):.1f} jobs/s through the whole pipeline"
    )


def verdict(ratio: float, goal: float) -> str:
    return f"goal >= {goal:g}   {'PASS' if ratio >= goal else 'MISS'}"


def report(results: dict[str, Any]) -> None:
    small, large = results["phases"]
    original = results["original"]
    low_submit, high_submit = original["submit_rps"]
    low_poll, high_poll = original["all_jobs_rps"]
    args = results["args"]
    print(
        f"control plane: {args['submitters']} submitters, {args['pollers']} pollers, "
        f"{args['jobs_per_device']} jobs per device, {os.cpu_count()} cores"
    )
    print(
        f"original (issue 15, same 2-core machine): submissions {low_submit:g}-{high_submit:g}/s "
        f"(p99 {original['submit_p99_ms'][0]:g}-{original['submit_p99_ms'][1]:g} ms), "
        f"/all-jobs {low_poll:g}-{high_poll:g} req/s "
        f"(p99 {original['all_jobs_p99_ms'][0]:g}-{original['all_jobs_p99_ms'][1]:g} ms)"
    )
    medians = {}
    for held in (small, large):
        sub: Timed = held["submitted"]
        mine, ceiling = median_run(held["vidmesh"]), median_run(held["stub"])
        medians[held["jobs_held"]] = mine
        print(
            f"\n{held['jobs_held']:,} jobs held, {held['devices']} devices "
            f"({held['jobs_total']:,} with the native API's)"
        )
        _submissions("POST /optimize-version", sub, held["settle_s"], original)
        print(f"    CPU s while submitting and settling: {_cpu(held['cpu_s_submitting'])}")
        _submissions("POST /api/jobs", held["native"], held["native_settle_s"], original)
        print(f"  GET /all-jobs vidmesh  {mine.line()}  (load {mine.load:.2f})")
        runs = len(held["vidmesh"])
        print(f"    CPU s while polled ({runs} runs): {_cpu(held['cpu_s_polling'])}")
        print(f"  GET /all-jobs stub     {ceiling.line()}  (load {ceiling.load:.2f})")
        of_stub = mine.rps / ceiling.rps
        print(f"    vidmesh / stub {of_stub:.3f}   {verdict(of_stub, STUB_GOAL)}")
        versus = mine.rps / high_poll
        print(
            f"    vidmesh / original {versus:.2f}-{mine.rps / low_poll:.2f}   "
            f"{verdict(versus, ORIGINAL_GOAL)} (the original's best run)"
        )
    small_rps, large_rps = medians[small["jobs_held"]].rps, medians[large["jobs_held"]].rps
    scale = large_rps / small_rps
    print(
        f"\n/all-jobs at {large['jobs_held']:,} / at {small['jobs_held']:,} jobs: "
        f"{scale:.3f}   {verdict(scale, SCALE_GOAL)}"
    )
    stub_scale = median_run(large["stub"]).rps / median_run(small["stub"]).rps
    print(
        f"  the stub's own: {stub_scale:.3f}; vidmesh's over the stub's (the machine's pace at "
        f"each size taken out): {scale / stub_scale:.3f}"
    )
    print("\nRSS (MiB)      " + "".join(f"{name:>12}" for name in SERVICES))
    rss = results["rss_mib"]
    for held, values in rss.items():
        cells = "".join(f"{v:12.1f}" if v is not None else f"{'-':>12}" for v in values.values())
        print(f"  {int(held):>6,} jobs" + cells)
    idle, full = rss["0"], rss[str(large["jobs_total"])]
    per_job = {
        name: (full[name] - idle[name]) * 1024 * 1024 / large["jobs_total"]
        for name in SERVICES
        if full[name] is not None and idle[name] is not None
    }
    print(
        "  per job above idle: "
        + ", ".join(f"{name} {value / 1024:.2f} KiB" for name, value in per_job.items())
    )
    results["ratios"] = {
        "all_jobs_large_over_small": scale,
        "stub_large_over_small": stub_scale,
        "per_job_bytes": per_job,
        **{
            f"all_jobs_over_stub_{held['jobs_held']}": median_run(held["vidmesh"]).rps
            / median_run(held["stub"]).rps
            for held in (small, large)
        },
    }
