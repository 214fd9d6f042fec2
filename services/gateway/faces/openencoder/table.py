"""The OpenEncoder face's route table (its own: its routes, and its OpenAPI document, are apart
from the native API's), and where its handlers find the face's counters."""

from __future__ import annotations

from aiohttp import web

from services.gateway.api import ApiRoutes
from services.gateway.faces.openencoder.ids import Counters

ROUTES = ApiRoutes()
"""Every route of the OpenEncoder face."""

COUNTERS = web.AppKey("openencoder_counters", Counters)


class Tag:
    """The OpenAPI tags of the OpenEncoder document (the resources of OpenEncoder's API)."""

    AUTH = "auth"
    JOBS = "jobs"
    MACHINES = "machines"
    META = "meta"
    PRESETS = "presets"


def counters(request: web.Request) -> Counters:
    return request.app[COUNTERS]
