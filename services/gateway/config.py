"""Gateway settings (`VIDMESH_*`, or the Streamyfin optimize-server's own names)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.config import CommonSettings


class GatewaySettings(CommonSettings, kw_only=True, forbid_unknown_fields=True):
    """How the HTTP gateway listens, authenticates and serves."""

    host: str = "0.0.0.0"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 3000
    # The Jellyfin server that vouches for Streamyfin clients' tokens (`/Users/Me`).
    jellyfin_url: str = ""
    # Point Jellyfin media URLs that clients send at `jellyfin_url` (the server may reach
    # Jellyfin on another address than the client does).
    rebase_jellyfin_urls: bool = True
    # Seconds a token Jellyfin accepted is trusted before asking again.
    auth_cache_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0
    # Seconds a request that changes a job waits to see the change before answering.
    command_timeout: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # Largest request body accepted, in bytes (a job record must fit in one NATS message).
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 19)] = 1 << 18
    # Seconds a request body has to arrive whole (408 after), so a slow client cannot hold one.
    body_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    # Only Jellyfin administrators may call `DELETE /delete-cache`.
    delete_cache_admin_only: bool = False

    # ---- native API (/api/) ------------------------------------------------------------
    # Signs access, refresh and download tokens (HS256); without it /api/ refuses sign-ins.
    jwt_secret: str = ""
    access_token_minutes: Annotated[float, msgspec.Meta(gt=0, le=1440)] = 15.0
    refresh_token_days: Annotated[float, msgspec.Meta(gt=0, le=365)] = 7.0
    # "closed" (only administrators create accounts), "open", or "invite" (an invite code).
    registration: Literal["closed", "open", "invite"] = "closed"
    # Invite codes accepted when registration is "invite", separated by commas.
    invite_codes: str = ""
    # The first administrator, created at start-up when it does not exist yet.
    admin_username: str = "admin"
    admin_password: str = ""
    # Lifetime of a signed download URL, in seconds.
    signed_url_seconds: Annotated[int, msgspec.Meta(ge=10, le=7 * 86_400)] = 900
    # Failed sign-ins allowed per username and per client address within the window; more
    # are answered 429 with Retry-After (counted in NATS, shared by every gateway replica).
    login_attempts: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    login_window_minutes: Annotated[float, msgspec.Meta(gt=0, le=1440)] = 15.0
    # Proxies (addresses or CIDR ranges, separated by commas) whose X-Forwarded-For is believed
    # when they are the peer; otherwise the client address is the peer's.
    trusted_proxies: str = ""
    # Password hashes (argon2) computed at once; more sign-ins wait their turn.
    password_hash_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Seconds `POST /api/metadata` waits for a transcoder to probe the source.
    metadata_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0

    # ---- event feeds (/api/events, /api/ws) ------------------------------------------------
    # Events one feed client may have waiting; a client further behind is disconnected with the
    # reason (it reconnects with its last event id and catches up from the stream).
    feed_queue: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    # Seconds between keepalive comments on an idle SSE feed, and between WebSocket pings.
    feed_keepalive: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0
    # Bytes a feed client that stops reading may hold in the socket's send buffer (and as much in
    # the event loop's) before events wait in its queue; small keeps a stalled client cheap.
    feed_send_buffer: Annotated[int, msgspec.Meta(ge=4096, le=1 << 24)] = 1 << 16
    # Seconds a WebSocket client has to send its c2s_auth frame.
    ws_auth_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 5.0
    # Seconds between checks that an open feed's caller is still allowed (an expired token);
    # an account or API key change ends the feed at once.
    feed_recheck_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0

    # ---- machines (transcoder Deployments on Kubernetes) ---------------------------------
    # The Kubernetes API; default: the in-cluster one (KUBERNETES_SERVICE_HOST/PORT). Unset and
    # not in a cluster: /api/machines can list but not scale (501).
    kubernetes_api: str = ""
    # The service account's token, CA and namespace (the in-cluster files by default).
    kubernetes_token_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    kubernetes_ca_file: str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    kubernetes_namespace: str = ""
    # The transcoder Deployment of a pool; "{pool}" is replaced by the pool's id.
    transcoder_deployment: str = "vidmesh-transcoder-{pool}"
    # The most transcoders one pool may be scaled to through /api/machines.
    max_transcoders_per_pool: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 20

    # ---- OpenEncoder API (its own listener) ---------------------------------------------
    # The port where `/api/` speaks OpenEncoder's shapes (unset: no such listener; 0: any).
    openencoder_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    # The price of one transcoder that OpenEncoder's /api/machines/sizes shows (0: none set).
    machine_price_monthly: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    machine_price_hourly: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    @property
    def trusted_proxy_list(self) -> list[str]:
        return [item.strip() for item in self.trusted_proxies.split(",") if item.strip()]

    @property
    def invite_code_list(self) -> list[str]:
        return [code.strip() for code in self.invite_codes.split(",") if code.strip()]
