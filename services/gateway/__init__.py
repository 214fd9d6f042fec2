"""The HTTP gateway: a set of faces over one command vocabulary.

`faces/<face>/` holds one package per API it speaks (`streamyfin/`, `native/`), each module named
by what it serves; no face imports another. `feeds/` holds the live event feeds (hub, connection,
visibility, SSE, WebSocket). What every face shares stays at the top: the app (`app.py`), the route
table that also makes the OpenAPI document (`api.py`, `openapi.py`), the HTTP helpers and error
envelope (`http.py`), identity (`identity.py`, `signed_tokens.py`, `jellyfin.py`), downloads,
presets and the shared state (`state.py`). Faces authenticate, validate and publish commands (a
new job is a `SubmitJob`); reads come from KV projections. The gateway writes no job or rendition
record.
"""

from services.gateway.config import GatewaySettings
from services.gateway.service import GatewayService

__all__ = ["GatewayService", "GatewaySettings"]
