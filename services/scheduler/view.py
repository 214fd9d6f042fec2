"""The scheduler's in-memory view of jobs and renditions, with the indexes its decisions need."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from shared import jobstate
from shared.messages.records import JobRecord, JobStatus, Rendition
from shared.projection import Projection


class View:
    """Projections of both buckets, indexed by rendition and by device."""

    def __init__(self, jobs: Projection[JobRecord], renditions: Projection[Rendition]) -> None:
        self.jobs = jobs
        self.renditions = renditions
        self._by_rendition: dict[str, set[str]] = defaultdict(set)
        self._by_device: dict[str, set[str]] = defaultdict(set)
        jobs.listen(self._index)

    def _index(self, key: str, old: JobRecord | None, new: JobRecord | None) -> None:
        if old is not None:
            if old.rendition:
                self._by_rendition[old.rendition].discard(key)
            self._by_device[old.device_id].discard(key)
        if new is not None:
            if new.rendition:
                self._by_rendition[new.rendition].add(key)
            self._by_device[new.device_id].add(key)

    def jobs_of_rendition(self, key: str) -> list[JobRecord]:
        found = (self.jobs.get(job_id) for job_id in self._by_rendition.get(key, ()))
        return [job for job in found if job is not None]

    def followers(self, r: Rendition) -> list[JobRecord]:
        """Active jobs attached to this generation of the rendition."""
        return [job for job in self.jobs_of_rendition(r.key) if jobstate.follows(job, r)]

    def needs_output(
        self, r: Rendition, now: float, *, ignoring: Callable[[JobRecord], bool] | None = None
    ) -> bool:
        """Whether any job (apart from those `ignoring` passes) still wants this rendition's
        output stored."""
        for job in self.jobs_of_rendition(r.key):
            if job.generation != r.generation or (ignoring is not None and ignoring(job)):
                continue
            if jobstate.follows(job, r) or jobstate.holds_output(job, now):
                return True
        return False

    def device_jobs(self, device_id: str) -> list[JobRecord]:
        found = (self.jobs.get(job_id) for job_id in self._by_device.get(device_id, ()))
        return [job for job in found if job is not None]

    def device_load(self, device_id: str) -> int:
        """How many of the device's jobs count toward its cache limit."""
        return sum(
            1 for job in self.device_jobs(device_id) if jobstate.counts_toward_device_limit(job)
        )

    def held_in_order(self, device_id: str) -> list[JobRecord]:
        held = [job for job in self.device_jobs(device_id) if job.status is JobStatus.HELD]
        return sorted(held, key=lambda job: job.created_at)
