"""The scheduler service: job state machine, limits, dispatch, retention."""

from services.scheduler.config import SchedulerSettings
from services.scheduler.service import Scheduler

__all__ = ["Scheduler", "SchedulerSettings"]
