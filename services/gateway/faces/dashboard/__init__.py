"""The operator's dashboard: a browser page at `/`, a client of the native API and its feeds.

`pages.py` serves the page and its modules (from `static/`, read once at start-up) with cache
and security headers; everything the page shows it asks the API for, as any client would.
"""

from services.gateway.faces.dashboard.pages import ASSETS, DASHBOARD, Dashboard, routes

__all__ = ["ASSETS", "DASHBOARD", "Dashboard", "routes"]
