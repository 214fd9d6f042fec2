"""Statistics service settings."""

from __future__ import annotations

from shared.config import CommonSettings


class StatisticsSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """The statistics service needs only the common settings."""
