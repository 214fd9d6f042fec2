"""The timing of a load a benchmark drives: latency percentiles, requests per second, and the
median of alternating runs."""

from __future__ import annotations

import msgspec


def pct(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (NaN for none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Timed(msgspec.Struct):
    """Requests per second and latency of one load."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    load: float

    def line(self) -> str:
        return f"{self.rps:8.1f} req/s  p50 {self.p50_ms:6.1f} ms  p99 {self.p99_ms:6.1f} ms"


def timed(latencies: list[float], seconds: float, load_then: float) -> Timed:
    return Timed(
        requests=len(latencies),
        seconds=round(seconds, 3),
        rps=len(latencies) / seconds,
        p50_ms=pct(latencies, 0.5) * 1000,
        p99_ms=pct(latencies, 0.99) * 1000,
        load=round(load_then, 2),
    )


def median_run(runs: list[Timed]) -> Timed:
    return sorted(runs, key=lambda run: run.rps)[len(runs) // 2]
