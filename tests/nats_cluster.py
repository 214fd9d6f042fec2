"""A NATS JetStream cluster on loopback: three nats-server processes from the wheel, with routes.

Each node keeps its client port and store across restarts, so clients given every node's URL
find it again, and a restarted node catches up from its own data, as a StatefulSet pod does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import nats
from nats.js.errors import APIError, ServiceUnavailableError

from tests.harness import free_port
from vidmesh.natsserver import NatsServer

CLUSTER_NAME = "vidmesh"


class NatsCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        routes = [free_port() for _ in range(size)]
        route_urls = ",".join(f"nats://127.0.0.1:{port}" for port in routes)
        self.nodes = [
            NatsServer(
                root / f"n{i}" / "store",
                port=free_port(),
                log_file=root / f"n{i}.log",
                extra_args=(
                    "--name", f"n{i}",
                    "--cluster_name", CLUSTER_NAME,
                    "--cluster", f"nats://127.0.0.1:{routes[i]}",
                    "--routes", route_urls,
                ),
            )
            for i in range(size)
        ]  # fmt: skip
        self.frozen: set[int] = set()

    @property
    def url(self) -> str:
        """Every node, as services are configured (VIDMESH_NATS_URL)."""
        return ",".join(node.url for node in self.nodes)

    @property
    def servers(self) -> list[str]:
        return [node.url for node in self.nodes]

    def index(self, name: str) -> int:
        return int(name.removeprefix("n"))

    def index_of_url(self, url: object) -> int:
        """The node a client is connected to (`nc.connected_url`)."""
        port = getattr(url, "port", None)
        (index,) = [i for i, node in enumerate(self.nodes) if node.port == port]
        return index

    async def start(self, timeout: float = 30.0) -> None:
        try:
            await asyncio.gather(*(node.start() for node in self.nodes))
            await self.wait_jetstream(timeout)
        except BaseException:
            await self.stop()  # no server outlives a failed start
            raise

    async def wait_jetstream(self, timeout: float = 30.0) -> None:
        """Until the cluster has a JetStream meta leader and answers account requests."""
        deadline = time.monotonic() + timeout
        nc = await nats.connect(self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        try:
            js = nc.jetstream(timeout=2)
            while True:
                try:
                    await js.account_info()
                    return
                except (ServiceUnavailableError, APIError, nats.errors.Error) as exc:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"JetStream cluster not ready: {exc!r}") from exc
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def leader_of(self, stream: str) -> int:
        """The node leading a stream's (or bucket's, KV_<name>) replica group."""
        nc = await nats.connect(self.servers)
        try:
            info = await nc.jetstream(timeout=5).stream_info(stream)
            assert info.cluster is not None and info.cluster.leader, info
            return self.index(info.cluster.leader)
        finally:
            await nc.close()

    async def kill(self, index: int) -> None:
        await self.nodes[index].stop(kill=True)

    async def restart(self, index: int) -> None:
        await self.nodes[index].start()

    def freeze(self, index: int) -> None:
        self._signal(index, signal.SIGSTOP)
        self.frozen.add(index)

    def thaw(self, index: int) -> None:
        self._signal(index, signal.SIGCONT)
        self.frozen.discard(index)

    def _signal(self, index: int, sig: int) -> None:
        process = self.nodes[index].process
        assert process is not None and process.returncode is None
        os.kill(process.pid, sig)

    async def stop(self) -> None:
        for index in list(self.frozen):
            self.thaw(index)
        await asyncio.gather(*(node.stop(grace=5) for node in self.nodes))
