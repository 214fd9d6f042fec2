"""`python -m services.storage` (or `vidmesh storage`)."""

from services.storage import Storage, StorageSettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("storage", StorageSettings, Storage)
