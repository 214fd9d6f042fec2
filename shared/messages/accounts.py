"""KV records of the native API: accounts, API keys, user presets, batches.

An Idempotency-Key needs no record of its own: it names the job it creates (see
`services/gateway/submit.py`)."""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from shared.media.presets import PresetSpec
from shared.messages.records import Timestamp


class Role(enum.StrEnum):
    """What an account may do: users their own things, moderators read everyone's jobs,
    administrators everything."""

    USER = "user"
    MODERATOR = "moderator"
    ADMIN = "admin"


RANK = {Role.USER: 0, Role.MODERATOR: 1, Role.ADMIN: 2}

Username = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@+-]*$",
        description="3-64 characters: letters, digits and _ . @ + -",
    ),
]


class User(msgspec.Struct, frozen=True, kw_only=True):
    """An account (key: its id)."""

    id: str
    username: str
    email: str = ""
    role: Role = Role.USER
    password_hash: str
    # Raised when the password changes: tokens minted before stop working.
    token_version: int = 1
    disabled: bool = False
    created_at: Timestamp
    updated_at: Timestamp


class UsernameClaim(msgspec.Struct, frozen=True, kw_only=True):
    """Reserves a username (key: the lower-cased username) for one account."""

    user_id: str


class ApiKey(msgspec.Struct, frozen=True, kw_only=True):
    """An API key (key: its id). Only a hash of the secret is kept."""

    id: str
    user_id: str
    name: str = ""
    prefix: str
    secret_sha256: str
    created_at: Timestamp


class LoginFailures(msgspec.Struct, frozen=True, kw_only=True):
    """Failed sign-ins of one username or client address in the window begun at `since`."""

    # Key: `user.<hash>` or `addr.<hash>`; the bucket's TTL forgets idle ones.

    failures: int
    since: Timestamp
    # Makes every write unique, so a compare-and-set never mistakes an equal count for its own.
    nonce: str = ""


class RevokedToken(msgspec.Struct, frozen=True, kw_only=True):
    """A token signed out before its expiry (key: the token's `jti`); refused until it expires."""

    user_id: str
    expires_at: Timestamp


class PresetRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A user's preset (key: its id)."""

    id: str
    owner: str
    name: str
    description: str = ""
    active: bool = True
    spec: PresetSpec
    created_at: Timestamp
    updated_at: Timestamp
    # The options as an OpenEncoder client sent them (its `data`), echoed back to it; the fleet
    # reads only `spec`, the allow-listed reading of them. Empty for native presets.
    data: str = ""


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """Jobs created together by one bulk call (key: its id); paused until started."""

    id: str
    owner: str
    job_ids: list[str] = []
    started: bool = False
    created_at: Timestamp
    started_at: Timestamp | None = None
