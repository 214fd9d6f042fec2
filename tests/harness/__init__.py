"""The one test harness: how the tests and the benchmarks start, reach, wait for and stop vidmesh.

- `waiting`: `eventually` (a condition with a deadline), free ports, a gateway ready on /readyz
- `environment`: the settings of a system under test (`fast_env`), its users and namespace
- `inprocess`: every service in the test's own event loop (`start_system`, `System`)
- `deployment`: every service its own OS process (`ServiceProcess`, `Deployment`)
- `up`: `vidmesh up` as a child process (`Up`), for its tests and for bench/
- `procfs`: what /proc says of those processes (alive, parent, age, CPU, running ffmpeg)
- `logs`: what they wrote to their logs
- `clients`: the gateway's users (`Client`: the Streamyfin app; `Api`: the native API)
- `slow`: which tests start the system and carry the `slow` marker

The names tests use most are re-exported here: `from tests.harness import Client, eventually`.
"""

from tests.harness.clients import Api, Client
from tests.harness.deployment import Deployment, ServiceProcess
from tests.harness.environment import (
    ADMIN,
    ADMIN_PASSWORD,
    ALICE,
    BOB,
    BUCKET,
    REPO,
    TEST_STORAGE_KEY,
    fast_env,
    files_under,
    new_namespace,
)
from tests.harness.inprocess import System, build_service, drop_namespace, start_system, stop_system
from tests.harness.procfs import ffmpeg_pids
from tests.harness.waiting import eventually, free_port, free_ports, wait_ready

__all__ = [
    "ADMIN",
    "ADMIN_PASSWORD",
    "ALICE",
    "BOB",
    "BUCKET",
    "REPO",
    "TEST_STORAGE_KEY",
    "Api",
    "Client",
    "Deployment",
    "ServiceProcess",
    "System",
    "build_service",
    "drop_namespace",
    "eventually",
    "fast_env",
    "ffmpeg_pids",
    "files_under",
    "free_port",
    "free_ports",
    "new_namespace",
    "start_system",
    "stop_system",
    "wait_ready",
]
