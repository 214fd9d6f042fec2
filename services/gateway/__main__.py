"""`python -m services.gateway` (or `vidmesh gateway`)."""

from services.gateway import GatewayService, GatewaySettings
from shared.runtime import run_service

if __name__ == "__main__":
    run_service("gateway", GatewaySettings, GatewayService)
