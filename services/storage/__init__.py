"""The storage service: blob deletion, orphan sweeps, store summary."""

from services.storage.config import StorageSettings
from services.storage.service import Storage

__all__ = ["Storage", "StorageSettings"]
