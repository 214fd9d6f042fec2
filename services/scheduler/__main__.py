"""`python -m services.scheduler` (or `vidmesh scheduler`)."""

from services.scheduler import Scheduler, SchedulerSettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("scheduler", SchedulerSettings, Scheduler)
