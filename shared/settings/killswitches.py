"""What a caller is told when a kill switch has a feature off: a 503 whose message carries the
operator's reason."""

from __future__ import annotations

from shared.errors import VidmeshError
from shared.settings.groups import Killswitch


class SwitchedOff(VidmeshError):
    """An operator switched the feature off for now (`/api/admin/settings/killswitches`)."""

    http_status = 503
    code = "switched_off"
    retryable = True


def refuse_if_engaged(switch: Killswitch, what: str) -> None:
    """Raise `SwitchedOff` saying `what` is off, and why, when the switch is engaged."""
    if switch.engaged:
        reason = switch.reason or "no reason given"
        raise SwitchedOff(
            f"{what} is switched off on this server: {reason}", details={"reason": reason}
        )
