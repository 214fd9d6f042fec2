"""A stand-in for the Kubernetes API (outside the product): just what /api/machines calls."""

from __future__ import annotations

from aiohttp import web


class KubernetesStandIn:
    """The two Kubernetes API calls the machines routes make: a Deployment's scale
    subresource (GET, merge PATCH) and a pod's annotations (merge PATCH)."""

    def __init__(self, replicas: dict[str, int], *, create_prefix: str | None = None) -> None:
        """`replicas`: the Deployments there are; with `create_prefix`, any Deployment whose name
        starts with it exists too (one replica) when first asked for."""
        self.replicas = dict(replicas)
        self.create_prefix = create_prefix
        self.annotations: dict[str, dict[str, str]] = {}
        self.tokens: set[str] = set()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def scale(self, request: web.Request) -> web.Response:
        self.tokens.add(request.headers.get("Authorization", ""))
        name = request.match_info["name"]
        prefix = self.create_prefix
        if name not in self.replicas and prefix is not None and name.startswith(prefix):
            self.replicas[name] = 1
        if name not in self.replicas:
            return web.json_response({"kind": "Status", "message": "not found"}, status=404)
        if request.method == "PATCH":
            assert request.content_type == "application/merge-patch+json"
            self.replicas[name] = int((await request.json())["spec"]["replicas"])
        return web.json_response({"kind": "Scale", "spec": {"replicas": self.replicas[name]}})

    async def pod(self, request: web.Request) -> web.Response:
        patch = await request.json()
        self.annotations[request.match_info["name"]] = patch["metadata"]["annotations"]
        return web.json_response({"kind": "Pod"})

    async def start(self) -> None:
        app = web.Application()
        base = "/apis/apps/v1/namespaces/media/deployments/{name}/scale"
        app.router.add_route("GET", base, self.scale)
        app.router.add_route("PATCH", base, self.scale)
        app.router.add_route("PATCH", "/api/v1/namespaces/media/pods/{name}", self.pod)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
