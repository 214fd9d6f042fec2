"""The notifier service: delivers events to webhook subscriptions, signed, with retries."""

from services.notifier.config import NotifierSettings
from services.notifier.service import Notifier

__all__ = ["Notifier", "NotifierSettings"]
