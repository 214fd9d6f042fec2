"""Webhook signing secrets (Standard Webhooks `whsec_...`), kept sealed at rest under the
operator's storage key and bound to their subscription."""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag

from shared.blobs.users import Sealer

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(os.urandom(24)).decode()


class SecretUnavailable(Exception):
    """A stored secret cannot be opened (the storage key changed)."""


class SecretSealer(Sealer):
    """Keeps signing secrets sealed under the operator's storage key, bound to their
    subscription; without a key they are kept as they are (the notifier must sign with them)."""

    def seal_secret(self, secret: str, subscription_id: str) -> str:
        if not self.configured:
            return "plain:" + secret
        nonce = os.urandom(12)
        sealed = self._require().encrypt(nonce, secret.encode(), _binding(subscription_id))
        return "sealed:" + base64.b64encode(nonce + sealed).decode()

    def open_secret(self, stored: str, subscription_id: str) -> str:
        kind, _, value = stored.partition(":")
        if kind == "plain":
            return value
        if kind != "sealed" or not self.configured:
            raise SecretUnavailable("the secret is sealed and no storage key is configured")
        raw = base64.b64decode(value)
        try:
            plain = self._require().decrypt(raw[:12], raw[12:], _binding(subscription_id))
        except InvalidTag:
            raise SecretUnavailable("the secret does not open with this storage key") from None
        return plain.decode()


def _binding(subscription_id: str) -> bytes:
    return f"webhook:{subscription_id}".encode()
