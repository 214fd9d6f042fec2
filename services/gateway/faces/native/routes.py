"""Every route of the native face: importing this module registers them on the route table
(services/gateway/api.py)."""

from services.gateway.faces.native import (  # noqa: F401 (imported for their routes)
    accounts,
    admin,
    batches,
    events,
    files,
    fleet,
    fleet_health,
    fleet_settings,
    job_sessions,
    jobs,
    machines,
    presets,
    sessions,
    settings,
    statistics,
    storage,
    storage_admin,
    tasks,
    telemetry,
    telemetry_settings,
    users,
    webhook_deliveries,
    webhooks,
)
