"""Administrators' face for accounts: list and create them, change their role, disable them,
set their password and revoke their API keys. A change reaches every request and open feed of
the account at once (the gateways follow the accounts bucket)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway.api import API, Access, Tag
from services.gateway.faces.native.accounts import Password
from services.gateway.faces.native.views import ApiKeyView, UserView, key_view, user_view
from services.gateway.http import json_response
from services.gateway.state import gateway
from shared.errors import BadRequest, NotFound
from shared.messages.accounts import Role, User, Username

TAG = Tag.ADMIN


class NewUserRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An account an administrator creates."""

    username: Username
    password: Password
    role: Role = Role.USER
    email: Annotated[str, msgspec.Meta(max_length=254)] = ""


class AccountChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to change: `disabled` (tokens, keys and feeds stop at once) and `role`."""

    disabled: bool | None = None
    role: Role | None = None


class NewPassword(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The account's new password (8 characters at least); older tokens stop working."""

    password: Password


def _account(request: web.Request) -> User:
    user_id = request.match_info["user_id"]
    user = gateway(request).identity.users.get(user_id)
    if user is None:
        raise NotFound(f"No account {user_id!r}.")
    return user


@API.route(
    "GET",
    "/api/admin/users",
    access=Access.ADMIN,
    tag=TAG,
    summary="Every account",
    response=list[UserView],
)
async def list_users(request: web.Request) -> web.Response:
    users = sorted(gateway(request).identity.users.values(), key=lambda u: u.created_at)
    return json_response([user_view(user) for user in users])


@API.route(
    "POST",
    "/api/admin/users",
    access=Access.ADMIN,
    tag=TAG,
    status=201,
    summary="Create an account with a role",
    body=NewUserRequest,
    response=UserView,
    statuses=(409,),
)
async def create_user(request: web.Request, body: NewUserRequest) -> web.Response:
    user = await gateway(request).identity.create_user(
        body.username, body.password, role=body.role, email=body.email
    )
    return json_response(user_view(user), 201)


@API.route(
    "PATCH",
    "/api/admin/users/{user_id}",
    access=Access.ADMIN,
    tag=TAG,
    summary="Disable or enable an account, or change its role (409 for the last active "
    "administrator)",
    body=AccountChange,
    response=UserView,
    statuses=(409,),
)
async def update_user(request: web.Request, body: AccountChange) -> web.Response:
    if body.disabled is None and body.role is None:
        raise BadRequest("Name what to change: `disabled`, `role` or both.")
    user = _account(request)
    changed = await gateway(request).identity.update_account(
        user.id, disabled=body.disabled, role=body.role
    )
    return json_response(user_view(changed))


@API.route(
    "POST",
    "/api/admin/users/{user_id}/password",
    access=Access.ADMIN,
    tag=TAG,
    summary="Set an account's password; every token minted before stops working",
    body=NewPassword,
    response=UserView,
)
async def set_user_password(request: web.Request, body: NewPassword) -> web.Response:
    user = _account(request)
    changed = await gateway(request).identity.set_password(user.id, body.password)
    return json_response(user_view(changed))


@API.route(
    "GET",
    "/api/admin/users/{user_id}/api-keys",
    access=Access.ADMIN,
    tag=TAG,
    summary="An account's API keys (without secrets)",
    response=list[ApiKeyView],
)
async def user_api_keys(request: web.Request) -> web.Response:
    user = _account(request)
    return json_response([key_view(key) for key in gateway(request).identity.api_keys.of(user.id)])


@API.route(
    "DELETE",
    "/api/admin/users/{user_id}/api-keys/{key_id}",
    access=Access.ADMIN,
    tag=TAG,
    status=204,
    summary="Revoke an account's API key (it and the feeds it opened stop working at once)",
)
async def delete_user_api_key(request: web.Request) -> web.Response:
    identity = gateway(request).identity
    user = _account(request)
    key_id = request.match_info["key_id"]
    key = identity.keys.get(key_id)
    if key is None or key.user_id != user.id:
        raise NotFound(f"No API key {key_id!r} on this account.")
    await identity.api_keys.delete(key)
    return web.Response(status=204)
