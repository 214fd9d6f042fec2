"""Scaling a pool's transcoder Deployment through the Kubernetes API (the `scale` subresource),
with the gateway's service account. Only what the machines routes need: read and set replicas,
and mark one pod to be the one a scale-down removes."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from services.gateway.config import GatewaySettings
from shared.errors import NotFound, Unavailable, VidmeshError

_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
# A pod with the lowest deletion cost goes first when its ReplicaSet scales down.
_DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"


class NotInCluster(VidmeshError):
    """Scaling needs the Kubernetes API, and this gateway has none configured."""

    http_status = 501
    code = "not_implemented"


@dataclass(frozen=True, slots=True)
class Cluster:
    """Where the Kubernetes API is and how to call it."""

    api: str
    namespace: str
    token_file: str
    ca_file: str
    deployment_pattern: str

    @classmethod
    def from_settings(
        cls, settings: GatewaySettings, environ: Mapping[str, str] = os.environ
    ) -> Cluster | None:
        api = settings.kubernetes_api
        if not api and environ.get("KUBERNETES_SERVICE_HOST"):
            host = environ["KUBERNETES_SERVICE_HOST"]
            host = f"[{host}]" if ":" in host else host
            api = f"https://{host}:{environ.get('KUBERNETES_SERVICE_PORT', '443')}"
        if not api:
            return None
        namespace = settings.kubernetes_namespace or _read(_NAMESPACE_FILE) or "default"
        return cls(
            api=api.rstrip("/"),
            namespace=namespace,
            token_file=settings.kubernetes_token_file,
            ca_file=settings.kubernetes_ca_file,
            deployment_pattern=settings.transcoder_deployment,
        )

    def deployment(self, pool: str) -> str:
        return self.deployment_pattern.replace("{pool}", pool)

    async def replicas(self, pool: str) -> int:
        scale = await self._call("GET", self._scale_path(pool))
        return int(scale.get("spec", {}).get("replicas", 0))

    async def scale(self, pool: str, replicas: int) -> int:
        body = {"spec": {"replicas": replicas}}
        scale = await self._call(
            "PATCH",
            self._scale_path(pool),
            json=body,
            content_type="application/merge-patch+json",
        )
        return int(scale.get("spec", {}).get("replicas", replicas))

    async def mark_for_removal(self, pod: str) -> None:
        """Make `pod` the first one its ReplicaSet removes on the next scale-down."""
        body = {"metadata": {"annotations": {_DELETION_COST: "-1000"}}}
        await self._call(
            "PATCH",
            f"/api/v1/namespaces/{self.namespace}/pods/{pod}",
            json=body,
            content_type="application/merge-patch+json",
        )

    def _ssl(self) -> ssl.SSLContext | bool:
        """The cluster's CA when it has one (in-cluster), else the system's."""
        if self.api.startswith("https://") and Path(self.ca_file).is_file():
            return ssl.create_default_context(cafile=self.ca_file)
        return True

    def _scale_path(self, pool: str) -> str:
        return (
            f"/apis/apps/v1/namespaces/{self.namespace}/deployments/{self.deployment(pool)}/scale"
        )

    async def _call(
        self, method: str, path: str, *, json: Any = None, content_type: str = ""
    ) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        token = _read(self.token_file)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        ssl_context = self._ssl()
        timeout = aiohttp.ClientTimeout(total=10)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(
                    method, self.api + path, json=json, headers=headers, ssl=ssl_context
                ) as response,
            ):
                payload = await response.json(content_type=None)
                if response.status == 404:
                    raise NotFound(f"Kubernetes has no {path.rsplit('/', 2)[-2]} here ({path}).")
                if response.status >= 400:
                    message = payload.get("message", "") if isinstance(payload, dict) else ""
                    raise Unavailable(
                        f"The Kubernetes API refused {method} {path} "
                        f"({response.status}): {message}"[:500]
                    )
                return payload if isinstance(payload, dict) else {}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise Unavailable(f"The Kubernetes API could not be reached: {exc}"[:300]) from exc


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""
