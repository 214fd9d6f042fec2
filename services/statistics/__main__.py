"""`python -m services.statistics` (or `vidmesh statistics`)."""

from services.statistics import Statistics, StatisticsSettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("statistics", StatisticsSettings, Statistics)
