"""The statistics service: totals folded from the event stream, and telemetry."""

from services.statistics.config import StatisticsSettings
from services.statistics.service import Statistics

__all__ = ["Statistics", "StatisticsSettings"]
