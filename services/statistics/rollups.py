"""Minute and hour averages of the raw telemetry samples, so a long window is read from a few
messages. Held in memory: a window a restart interrupts is averaged from what came after it."""

from __future__ import annotations

import math

from shared.messages.telemetry import Reading, TelemetrySample

_SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class Rollup:
    """Averages every series over consecutive windows of `period` seconds."""

    def __init__(self, level: str, period: float) -> None:
        self.level = level
        self.period = period
        self._window: float | None = None
        self._sums: dict[_SeriesKey, tuple[float, int]] = {}

    def add(self, sample: TelemetrySample) -> TelemetrySample | None:
        """Take a raw sample; returns the averages of the window it closes, if it closes one."""
        window = math.floor(sample.at / self.period) * self.period
        closed = None
        if self._window is None or window > self._window:
            if self._window is not None and self._sums:
                closed = self._averages(self._window)
            self._window = window
            self._sums = {}
        elif window < self._window:
            return None  # the clock stepped back: the open window keeps its samples
        for reading in sample.readings:
            key = (reading.metric, tuple(sorted(reading.labels.items())))
            total, count = self._sums.get(key, (0.0, 0))
            self._sums[key] = (total + reading.value, count + 1)
        return closed

    def _averages(self, window: float) -> TelemetrySample:
        readings = [
            Reading(metric, dict(labels), round(total / count, 3))
            for (metric, labels), (total, count) in self._sums.items()
        ]
        return TelemetrySample(at=window, period=self.period, readings=readings)
