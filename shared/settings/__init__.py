"""Server settings groups stored in NATS and applied without a restart: their types
(`groups`), a running service's view of them (`live`), and partial updates (`update`)."""

from shared.settings.groups import (
    DEFAULTS,
    SETTINGS_KEY,
    GeneralSettings,
    Killswitch,
    KillswitchSettings,
    PathsSettings,
    ProcessingSettings,
    ServerSettings,
    face_of,
)
from shared.settings.killswitches import SwitchedOff, refuse_if_engaged
from shared.settings.live import LiveSettings

__all__ = [
    "DEFAULTS",
    "SETTINGS_KEY",
    "GeneralSettings",
    "Killswitch",
    "KillswitchSettings",
    "LiveSettings",
    "PathsSettings",
    "ProcessingSettings",
    "ServerSettings",
    "SwitchedOff",
    "face_of",
    "refuse_if_engaged",
]
