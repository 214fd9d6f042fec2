"""Accounts face: registration, sign-in, token refresh, the caller's account and API keys.
`/api/register` and `/api/login` answer for OpenEncoder clients; administrators manage accounts
in `users.py`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway import accounts
from services.gateway.api import API, Access, Tag, caller
from services.gateway.faces.native.views import ApiKeyView, UserView, key_view, user_view
from services.gateway.http import json_response
from services.gateway.identity import TokenPair
from services.gateway.state import gateway
from shared.errors import NotFound, Unauthorized
from shared.messages.accounts import User, Username

TAG = Tag.ACCOUNTS
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class RegisterRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new account."""

    username: Username
    password: Password
    email: Annotated[str, msgspec.Meta(max_length=254)] = ""
    invite_code: Annotated[str, msgspec.Meta(max_length=128)] = ""


class LoginRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credentials."""

    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Password


class RefreshRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A refresh token from a sign-in; left out, the one sent as `Authorization: Bearer`."""

    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None


class LogoutRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The session's refresh token, to end it too; left out, only the access token ends."""

    refresh_token: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None


class PasswordChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The current password and the new one (8 characters at least)."""

    current_password: Password
    new_password: Password


class ApiKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A label for a new API key."""

    name: Annotated[str, msgspec.Meta(max_length=100)] = ""


class Registered(msgspec.Struct, kw_only=True):
    """The account that was created."""

    message: str
    user: UserView


class RegisteredCompat(msgspec.Struct, kw_only=True):
    """OpenEncoder's answer to a registration."""

    message: str
    user: str
    id: str


class Tokens(msgspec.Struct, kw_only=True):
    """Tokens for `Authorization: Bearer`; `token` is the access token (OpenEncoder's name)."""

    access_token: str
    refresh_token: str
    token: str
    token_type: str
    expires_in: int
    user: UserView


class ApiKeyCreated(msgspec.Struct, kw_only=True):
    """A new API key: `key` is shown this once and never again."""

    key: str
    id: str
    name: str
    prefix: str


def _tokens(user: User, pair: TokenPair) -> Tokens:
    return Tokens(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        token=pair.access_token,
        token_type="Bearer",
        expires_in=pair.expires_in,
        user=user_view(user),
    )


async def _register(request: web.Request, body: RegisterRequest) -> User:
    return await accounts.register(
        request, body.username, body.password, email=body.email, invite_code=body.invite_code
    )


@API.route(
    "POST",
    "/api/auth/register",
    access=Access.PUBLIC,
    tag=TAG,
    status=201,
    summary="Create an account (if registration is open or by invite)",
    body=RegisterRequest,
    response=Registered,
    statuses=(403, 409),
)
async def register(request: web.Request, body: RegisterRequest) -> web.Response:
    user = await _register(request, body)
    return json_response(Registered(message="User registered", user=user_view(user)), 201)


@API.route(
    "POST",
    "/api/register",
    access=Access.PUBLIC,
    tag=TAG,
    summary="Create an account (OpenEncoder's route and answer)",
    body=RegisterRequest,
    response=RegisteredCompat,
    statuses=(403, 409),
)
async def register_compat(request: web.Request, body: RegisterRequest) -> web.Response:
    user = await _register(request, body)
    return json_response(
        RegisteredCompat(message="User registered", user=user.username, id=user.id)
    )


async def _login(request: web.Request, body: LoginRequest) -> web.Response:
    user, pair = await accounts.sign_in(request, body.username, body.password)
    return json_response(_tokens(user, pair))


@API.route(
    "POST",
    "/api/auth/login",
    access=Access.PUBLIC,
    tag=TAG,
    summary="Sign in: a short-lived access token and a refresh token",
    body=LoginRequest,
    response=Tokens,
    statuses=(429,),
)
async def login(request: web.Request, body: LoginRequest) -> web.Response:
    return await _login(request, body)


@API.route(
    "POST",
    "/api/login",
    access=Access.PUBLIC,
    tag=TAG,
    summary="Sign in (OpenEncoder's route; `token` is the access token)",
    body=LoginRequest,
    response=Tokens,
    statuses=(429,),
)
async def login_compat(request: web.Request, body: LoginRequest) -> web.Response:
    return await _login(request, body)


@API.route(
    "POST",
    "/api/auth/refresh",
    access=Access.PUBLIC,
    tag=TAG,
    summary="New tokens for a refresh token (in the body, or as the Bearer token)",
    body=RefreshRequest,
    response=Tokens,
    body_optional=True,
)
async def refresh(request: web.Request, body: RefreshRequest) -> web.Response:
    identity = gateway(request).identity
    identity.require_secret()
    token = body.refresh_token or _bearer(request)
    if not token:
        raise Unauthorized("Send the refresh token, in the body or as `Authorization: Bearer`.")
    user, pair = identity.refresh(token)
    return json_response(_tokens(user, pair))


@API.route(
    "POST",
    "/api/auth/logout",
    access=Access.USER,
    tag=TAG,
    status=204,
    summary="Sign out: the access token (and the refresh token sent) stop working everywhere",
    body=LogoutRequest,
    body_optional=True,
)
async def logout(request: web.Request, body: LogoutRequest) -> web.Response:
    await gateway(request).identity.sign_out(caller(request), body.refresh_token)
    return web.Response(status=204)


def _bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _me(request: web.Request) -> User:
    user = gateway(request).identity.users.get(caller(request).user_id)
    if user is None:
        raise NotFound("This account no longer exists.")
    return user


@API.route(
    "GET",
    "/api/users/me",
    access=Access.USER,
    tag=TAG,
    summary="The caller's account",
    response=UserView,
)
async def me(request: web.Request) -> web.Response:
    return json_response(user_view(_me(request)))


@API.route(
    "PUT",
    "/api/users/me/password",
    access=Access.USER,
    tag=TAG,
    summary="Change the password; every token minted before stops working",
    body=PasswordChange,
    response=Tokens,
    statuses=(403,),
)
async def change_password(request: web.Request, body: PasswordChange) -> web.Response:
    identity = gateway(request).identity
    user = await identity.change_password(_me(request), body.current_password, body.new_password)
    return json_response(_tokens(user, identity.issue(user)))


@API.route(
    "POST",
    "/api/account/api-keys",
    access=Access.USER,
    tag=TAG,
    status=201,
    summary="Create an API key (its secret is shown once)",
    body=ApiKeyRequest,
    response=ApiKeyCreated,
)
async def create_api_key(request: web.Request, body: ApiKeyRequest) -> web.Response:
    record, plaintext = await gateway(request).identity.api_keys.create(_me(request), body.name)
    created = ApiKeyCreated(key=plaintext, id=record.id, name=record.name, prefix=record.prefix)
    return json_response(created, 201)


@API.route(
    "GET",
    "/api/account/api-keys",
    access=Access.USER,
    tag=TAG,
    summary="The caller's API keys (without secrets)",
    response=list[ApiKeyView],
)
async def list_api_keys(request: web.Request) -> web.Response:
    keys = gateway(request).identity.api_keys.of(caller(request).user_id)
    return json_response([key_view(key) for key in keys])


@API.route(
    "DELETE",
    "/api/account/api-keys/{key_id}",
    access=Access.USER,
    tag=TAG,
    status=204,
    summary="Revoke one of the caller's API keys",
)
async def delete_api_key(request: web.Request) -> web.Response:
    identity = gateway(request).identity
    key = identity.keys.get(request.match_info["key_id"])
    if key is None or key.user_id != caller(request).user_id:
        raise NotFound(f"No API key {request.match_info['key_id']!r}.")
    await identity.api_keys.delete(key)
    return web.Response(status=204)
