"""Who is calling the native API: accounts with argon2 passwords, JWTs (HS256) and API keys.

Access tokens are short-lived; a refresh token mints new ones. Changing a password raises the
account's token version, so every token minted before stops working; signing out revokes the
session's own tokens only (`revocations`). API keys are in `api_keys`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import msgspec
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from nats.js.errors import KeyWrongLastSequenceError

from services.gateway.api_keys import KEY_PREFIX, ApiKeys
from services.gateway.config import GatewaySettings
from services.gateway.revocations import Revocations
from services.gateway.signed_tokens import TokenSigner
from shared.errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from shared.messages.accounts import RANK, ApiKey, Role, User, UsernameClaim
from shared.nats.kv import TypedKV
from shared.nats.projection import Projection

log = structlog.get_logger("vidmesh.gateway.identity")

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller of the native API."""

    user_id: str
    username: str
    role: Role
    via: str  # "token" | "api_key"
    expires_at: float = 0.0  # when the access token expires (0: an API key, no expiry)
    token_id: str = ""  # the access token's `jti` ("": an API key)

    def at_least(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


def username_key(username: str) -> str:
    """KV key of a username claim: case-insensitive, KV-safe."""
    return hashlib.sha256(username.strip().lower().encode()).hexdigest()[:40]


class Identity:
    """Accounts, tokens and keys, backed by KV and read from projections."""

    def __init__(
        self,
        settings: GatewaySettings,
        users: Projection[User],
        usernames: TypedKV[UsernameClaim],
        keys: Projection[ApiKey],
        revocations: Revocations,
        secret: str,
    ) -> None:
        self.settings = settings
        self.users = users
        self.usernames = usernames
        self.keys = keys
        self.api_keys = ApiKeys(keys, users)
        self.revocations = revocations
        self.tokens = TokenSigner(secret)
        self.hasher = PasswordHasher()
        # argon2 is slow and large on purpose: a few at a time, in threads of their own, so a
        # flood of sign-ins waits its turn instead of taking every thread the server has.
        self._hashing = ThreadPoolExecutor(
            max_workers=settings.password_hash_workers, thread_name_prefix="argon2"
        )
        # Open feeds waiting to hear that their caller's account or keys changed.
        self._account_watchers: dict[str, set[asyncio.Event]] = {}
        users.listen(lambda user_id, old, new: self._changed(user_id))
        keys.listen(self._key_changed)
        revocations.listen(self._changed)

    def close(self) -> None:
        self._hashing.shutdown(wait=False, cancel_futures=True)

    # ---- passwords ---------------------------------------------------------------------
    async def _hash_work(self, fn: Callable[..., R], *args: str) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._hashing, functools.partial(fn, *args))

    async def hash_password(self, password: str) -> str:
        return await self._hash_work(self.hasher.hash, password)

    async def password_matches(self, user: User, password: str) -> bool:
        try:
            return await self._hash_work(self.hasher.verify, user.password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # ---- accounts ----------------------------------------------------------------------
    def find_by_username(self, username: str) -> User | None:
        wanted = username.strip().lower()
        for user in self.users.values():
            if user.username.lower() == wanted:
                return user
        return None

    async def create_user(
        self, username: str, password: str, *, role: Role = Role.USER, email: str = ""
    ) -> User:
        """A new account; 409 when the username is taken."""
        check_password(password)
        user_id = str(uuid.uuid4())
        try:
            await self.usernames.create(username_key(username), UsernameClaim(user_id=user_id))
        except KeyWrongLastSequenceError:
            raise Conflict(f"The username {username!r} is taken.") from None
        now = time.time()
        user = User(
            id=user_id,
            username=username.strip(),
            email=email,
            role=role,
            password_hash=await self.hash_password(password),
            created_at=now,
            updated_at=now,
        )
        await self.users.create(user.id, user)
        log.info("account.created", user_id=user.id, role=role.value)
        return user

    async def ensure_admin(self, username: str, password: str) -> User:
        """The configured first administrator exists (created once, never overwritten)."""
        existing = self.find_by_username(username)
        if existing is not None:
            return existing
        try:
            return await self.create_user(username, password, role=Role.ADMIN)
        except Conflict:
            claim = await self.usernames.get(username_key(username))
            found = await self.users.store.get(claim.value.user_id) if claim else None
            if found is None:
                raise
            return found.value

    async def login(self, username: str, password: str) -> User:
        user = self.find_by_username(username)
        if user is None:
            # Spend the same time as a real check, so usernames cannot be probed by timing.
            await self._hash_work(self.hasher.hash, password)
            raise Unauthorized("Wrong username or password.")
        if not await self.password_matches(user, password) or user.disabled:
            raise Unauthorized("Wrong username or password.")
        return user

    async def change_password(self, user: User, current: str, new: str) -> User:
        if not await self.password_matches(user, current):
            raise Forbidden("The current password is wrong.")
        return await self.set_password(user.id, new, missing=Unauthorized)

    async def set_password(
        self, user_id: str, new: str, *, missing: type[Unauthorized | NotFound] = NotFound
    ) -> User:
        """A new password; every token minted before stops working."""
        check_password(new)
        new_hash = await self.hash_password(new)

        def change(found: User) -> User:
            return msgspec.structs.replace(
                found, password_hash=new_hash, token_version=found.token_version + 1
            )

        return await self._change_user(user_id, change, missing=missing)

    async def update_account(
        self, user_id: str, *, disabled: bool | None, role: Role | None
    ) -> User:
        """Disable or enable an account, or change its role. Disabling also revokes its tokens
        (enabled again, it signs in anew). The last active administrator stays one."""

        def change(found: User) -> User:
            new_role = found.role if role is None else role
            new_disabled = found.disabled if disabled is None else disabled
            stays_admin = new_role is Role.ADMIN and not new_disabled
            if _active_admin(found) and not stays_admin and self._active_admins() <= 1:
                raise Conflict("This is the last active administrator; make another one first.")
            version = found.token_version + (1 if new_disabled and not found.disabled else 0)
            return msgspec.structs.replace(
                found, role=new_role, disabled=new_disabled, token_version=version
            )

        return await self._change_user(user_id, change, missing=NotFound)

    def _active_admins(self) -> int:
        return sum(1 for user in self.users.values() if _active_admin(user))

    async def _change_user(
        self,
        user_id: str,
        fn: Callable[[User], User],
        *,
        missing: type[Unauthorized | NotFound],
    ) -> User:
        def change(found: User | None) -> User | None:
            if found is None:
                return None
            return msgspec.structs.replace(fn(found), updated_at=time.time())

        updated, revision, _ = await self.users.store.change(user_id, change)
        if updated is None or revision is None:
            raise missing(f"No account {user_id!r}.")
        self.users.apply(user_id, updated, revision)
        return updated

    # ---- open feeds --------------------------------------------------------------------
    def watch_account(self, user_id: str) -> asyncio.Event:
        """An event set whenever the account or one of its API keys changes, or one of its
        tokens is signed out (in any replica: the projections follow the KV buckets);
        `unwatch_account` when done."""
        changed = asyncio.Event()
        self._account_watchers.setdefault(user_id, set()).add(changed)
        return changed

    def unwatch_account(self, user_id: str, changed: asyncio.Event) -> None:
        watchers = self._account_watchers.get(user_id)
        if watchers is not None:
            watchers.discard(changed)
            if not watchers:
                del self._account_watchers[user_id]

    def _key_changed(self, key_id: str, old: ApiKey | None, new: ApiKey | None) -> None:
        for record in (old, new):
            if record is not None:
                self._changed(record.user_id)

    def _changed(self, user_id: str) -> None:
        for changed in self._account_watchers.get(user_id, ()):
            changed.set()

    # ---- tokens ------------------------------------------------------------------------
    def require_secret(self) -> None:
        self.tokens.require_secret()

    def issue(self, user: User) -> TokenPair:
        self.require_secret()
        now = int(time.time())
        access_seconds = int(self.settings.access_token_minutes * 60)
        access = self.tokens.sign(
            {"sub": user.id, "typ": "access", "role": user.role.value, "ver": user.token_version},
            now,
            access_seconds,
        )
        refresh = self.tokens.sign(
            {"sub": user.id, "typ": "refresh", "ver": user.token_version},
            now,
            int(self.settings.refresh_token_days * 86_400),
        )
        return TokenPair(access_token=access, refresh_token=refresh, expires_in=access_seconds)

    def sign_file_token(
        self, job_id: str, owner: str, minted_by: User, seconds: int
    ) -> tuple[str, int]:
        """A token naming one job and its owner, for a download without headers. It is a
        credential of the account that minted it: it ends with that account's tokens."""
        now = int(time.time())
        claims = {
            "sub": owner,
            "typ": "file",
            "job": job_id,
            "by": minted_by.id,
            "ver": minted_by.token_version,
        }
        token = self.tokens.sign(claims, now, seconds)
        return token, now + seconds

    def file_claims(self, token: str) -> dict[str, object]:
        """Claims of a signed URL's token whose minter still holds the access it had: not
        disabled, no password change since, and still allowed to read the job's owner's jobs."""
        claims = self.tokens.decode(token, "file")
        minter = self.user_of({"sub": claims.get("by", ""), "ver": claims.get("ver")})
        if minter.id != claims.get("sub") and RANK[minter.role] < RANK[Role.MODERATOR]:
            raise Unauthorized("The token no longer grants access (account changed).")
        return claims

    def user_of(self, claims: dict[str, object]) -> User:
        user = self.users.get(str(claims["sub"]))
        if user is None or user.disabled or claims.get("ver") != user.token_version:
            raise Unauthorized("The token no longer grants access (account changed).")
        if self.revocations.is_revoked(claims.get("jti")):
            raise Unauthorized("The token has been signed out.")
        return user

    def refresh(self, refresh_token: str) -> tuple[User, TokenPair]:
        user = self.user_of(self.tokens.decode(refresh_token, "refresh"))
        return user, self.issue(user)

    async def sign_out(self, who: Principal, refresh_token: str | None) -> None:
        """End the caller's session: the access token it called with and, when given, its
        refresh token stop working on every replica. A refresh token that is not the caller's
        own is refused (400) and nothing is revoked."""
        if who.via != "token" or not who.token_id:
            raise BadRequest(
                "API keys are not signed out: delete the key (DELETE /api/account/api-keys/{id})."
            )
        ending = [(who.token_id, who.expires_at)]
        if refresh_token:
            try:
                claims = self.tokens.decode(refresh_token, "refresh")
            except Unauthorized as exc:
                raise BadRequest(f"refresh_token: {exc.message}") from None
            if claims.get("sub") != who.user_id:
                raise BadRequest("refresh_token: this is another account's refresh token.")
            ending.append((str(claims.get("jti", "")), _float(claims["exp"])))
        for token_id, expires_at in ending:
            if token_id:
                await self.revocations.revoke(token_id, who.user_id, expires_at)
        log.info("account.signed_out", user_id=who.user_id, refresh=refresh_token is not None)

    # ---- requests ----------------------------------------------------------------------
    def authenticate(self, authorization: str, api_key: str) -> Principal | None:
        """The caller named by `Authorization: Bearer <JWT or key>` or `x-api-key`, if any."""
        if api_key:
            user = self.api_keys.user_of(api_key.strip())
            return Principal(user.id, user.username, user.role, "api_key")
        scheme, _, value = authorization.strip().partition(" ")
        if not value or scheme.lower() != "bearer":
            return None
        value = value.strip()
        if value.startswith(KEY_PREFIX):
            user = self.api_keys.user_of(value)
            return Principal(user.id, user.username, user.role, "api_key")
        claims = self.tokens.decode(value, "access")
        user = self.user_of(claims)
        token_id = str(claims.get("jti", ""))
        return Principal(
            user.id, user.username, user.role, "token", _float(claims["exp"]), token_id
        )


def _float(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _active_admin(user: User) -> bool:
    return user.role is Role.ADMIN and not user.disabled


def check_password(password: str) -> None:
    if len(password) < 8:
        raise BadRequest("The password must have at least 8 characters.")
    if len(password) > 256:
        raise BadRequest("The password must have at most 256 characters.")
