"""Scheduler settings (`VIDMESH_*`, or the Streamyfin optimize-server's own names)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import CommonSettings
from shared.outbound import OutboundPolicy


class SchedulerSettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """How the scheduler queues, limits and retires jobs."""

    # Transcodes started automatically at once (manual starts may go beyond it).
    max_concurrent_jobs: Annotated[int, msgspec.Meta(ge=1)] = 1
    # Finished-but-not-downloaded plus running jobs a device may have; 0 means unlimited.
    max_cached_per_user: Annotated[int, msgspec.Meta(ge=0)] = 10
    # A user's jobs admitted at once (attached to a rendition: waiting for a slot or running),
    # on either face; more wait as `queued` and are admitted in order; 0 means unlimited.
    max_active_jobs_per_user: Annotated[int, msgspec.Meta(ge=0)] = 500
    # Hours an output is kept after its job completed (or after its download was confirmed).
    time_to_keep_files: Annotated[float, msgspec.Meta(gt=0)] = 8.0
    # Delete an output as soon as its client confirms the download (if no other job holds it).
    remove_file_after_right_download: bool = True
    # Seconds between sweeps for expiry, purges and anything a lost message left undone.
    sweep_interval: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    # Commands handled at once.
    command_slots: Annotated[int, msgspec.Meta(ge=1)] = 4
    pool: str = "default"
    # Seconds a share check (the source's answer to a job's own URL) may take; no answer in time
    # gives the job its own rendition instead of another user's output.
    share_check_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # The Jellyfin server (JELLYFIN_URL): share checks may reach it whatever its address.
    jellyfin_url: str = ""

    @property
    def policy(self) -> OutboundPolicy:
        """Where share checks may connect: the outbound policy, and the Jellyfin server."""
        return OutboundPolicy.parse(self.outbound_allow, trust=[self.jellyfin_url])

    @property
    def keep_seconds(self) -> float:
        return self.time_to_keep_files * 3600.0
