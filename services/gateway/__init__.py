"""The HTTP gateway: authenticates, validates, publishes commands, answers reads from KV
projections, serves downloads."""

from services.gateway.config import GatewaySettings
from services.gateway.service import GatewayService

__all__ = ["GatewayService", "GatewaySettings"]
