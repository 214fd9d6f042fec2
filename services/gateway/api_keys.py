"""API keys: `vmk_<id>_<secret>`, shown once; only the SHA-256 of the secret is stored (the secret
is random, so a fast hash is enough). A key acts as its account for as long as both exist and
the account is enabled."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from shared.errors import Unauthorized
from shared.messages.accounts import ApiKey, User
from shared.nats.projection import Projection

KEY_PREFIX = "vmk_"


class ApiKeys:
    """Every account's keys, as the gateway's projection of the keys bucket holds them."""

    def __init__(self, keys: Projection[ApiKey], users: Projection[User]) -> None:
        self.keys = keys
        self.users = users

    async def create(self, user: User, name: str) -> tuple[ApiKey, str]:
        """A new key; the plaintext is returned here and never again."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        plaintext = f"{KEY_PREFIX}{key_id}_{secret}"
        record = ApiKey(
            id=key_id,
            user_id=user.id,
            name=name,
            prefix=f"{KEY_PREFIX}{key_id}",
            secret_sha256=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=time.time(),
        )
        await self.keys.create(key_id, record)
        return record, plaintext

    def of(self, user_id: str) -> list[ApiKey]:
        """An account's keys, oldest first."""
        found = [key for key in self.keys.values() if key.user_id == user_id]
        return sorted(found, key=lambda key: key.created_at)

    async def delete(self, key: ApiKey) -> None:
        await self.keys.store.delete(key.id)
        known = self.keys.versioned(key.id)
        self.keys.apply(key.id, None, (known.revision if known else 0) + 1)

    def user_of(self, plaintext: str) -> User:
        """The account a key in plaintext acts as; 401 for a key that is not (or no more) valid."""
        if not plaintext.startswith(KEY_PREFIX) or plaintext.count("_") < 2:
            raise Unauthorized("The API key is not valid.")
        key_id, _, secret = plaintext[len(KEY_PREFIX) :].partition("_")
        key = self.keys.get(key_id)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if key is None or not hmac.compare_digest(key.secret_sha256, digest):
            raise Unauthorized("The API key is not valid.")
        user = self.users.get(key.user_id)
        if user is None or user.disabled:
            raise Unauthorized("The API key's account no longer exists.")
        return user
