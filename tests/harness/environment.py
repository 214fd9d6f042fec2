"""What a vidmesh under test runs with: its settings (`fast_env`, one namespace each), the
users the Jellyfin stand-in knows, and where a running system keeps its files."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from shared.nats.subjects import Names

REPO = Path(__file__).resolve().parents[2]  # services run as `python -m services.<name>` here
# Streamyfin users of the Jellyfin stand-in (their Jellyfin tokens) and the tests' object bucket.
ALICE = "token-alice"
BOB = "token-bob"
ADMIN = "token-admin"
BUCKET = "vidmesh-test"
# The native API's first administrator (VIDMESH_ADMIN_USERNAME "admin").
ADMIN_PASSWORD = "admin-password-1"
TEST_STORAGE_KEY = "dGVzdC1zdG9yYWdlLWtleS0zMi1ieXRlcy1sb25nISE="  # 32 bytes, tests only

# One capability probe per test session: every transcoder the tests start shares its result.
CAPABILITIES_FILE = Path(tempfile.mkdtemp(prefix="vidmesh-capabilities-")) / "capabilities.json"


def new_namespace() -> str:
    """A fresh namespace: its own streams and buckets on a shared nats-server."""
    return "t" + uuid.uuid4().hex[:10]


def fast_env(
    namespace: str, data_dir: Path, nats_url: str, jellyfin_url: str, **extra: Any
) -> dict[str, str]:
    """Settings for tests: short sweeps, short ack_wait, quick progress."""
    env = {
        "VIDMESH_NATS_URL": nats_url,
        "VIDMESH_NAMESPACE": namespace,
        "VIDMESH_DATA_DIR": str(data_dir),
        "VIDMESH_CAPABILITIES_FILE": str(CAPABILITIES_FILE),
        "VIDMESH_LOG_LEVEL": "info",
        "VIDMESH_LOG_FORMAT": "json",
        "VIDMESH_SWEEP_INTERVAL": "0.5",
        "VIDMESH_ACK_WAIT": "3",
        "VIDMESH_PROGRESS_INTERVAL": "0.25",
        "VIDMESH_COMMAND_TIMEOUT": "5",
        "VIDMESH_AUTH_CACHE_SECONDS": "30",
        "VIDMESH_HOST": "127.0.0.1",
        "VIDMESH_PORT": "0",
        "VIDMESH_DRAIN_SECONDS": "0",
        "VIDMESH_ORPHAN_GRACE": "30",
        "JELLYFIN_URL": jellyfin_url,
        "VIDMESH_JWT_SECRET": f"test-secret-{namespace}-0123456789abcdef0123456789",
        "VIDMESH_ADMIN_USERNAME": "admin",
        "VIDMESH_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "VIDMESH_REGISTRATION": "open",
        "VIDMESH_STORAGE_KEY": TEST_STORAGE_KEY,
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def files_under(root: Path) -> list[Path]:
    """Every file below `root`, while the storage service may be deleting some (os.walk skips a
    folder that disappears under it; Path.rglob raises)."""
    return sorted(Path(top) / name for top, _, names in os.walk(root) for name in names)


class Configured:
    """What a system's settings (`env`) say about it: its namespace and its data folder."""

    env: dict[str, str]

    @property
    def names(self) -> Names:
        return Names(self.env["VIDMESH_NAMESPACE"])

    @property
    def data_dir(self) -> Path:
        return Path(self.env["VIDMESH_DATA_DIR"])

    def output_files(self) -> list[Path]:
        """Every stored output of this system (local blob store)."""
        return files_under(self.data_dir / "blobs" / "outputs")
