"""`python -m services.notifier` (or `vidmesh notifier`)."""

from services.notifier import Notifier, NotifierSettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("notifier", NotifierSettings, Notifier)
