"""OpenEncoder's accounts: `POST /api/register` and `POST /api/login`, on the same accounts as
the native API (registration as `VIDMESH_REGISTRATION` allows it, passwords of 8 characters or
more, as on every face: the document's example password "baz" is refused with a 400 naming the
rule). The token goes back as `Authorization: Bearer <token>`."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from services.gateway import accounts
from services.gateway.api import Access
from services.gateway.faces.openencoder.table import ROUTES, Tag
from services.gateway.http import json_response
from shared.messages.accounts import Username

Password = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


NewPassword = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=256,
        description="At least 8 characters: the account rule of every face of this server "
        "(OpenEncoder's example password, 3 characters, is refused with a 400 that says so)",
    ),
]


class Credentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A username (OpenEncoder's are e-mail addresses) and a password of 8 characters or more."""

    username: Username
    password: NewPassword


class LoginCredentials(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Credentials to sign in with."""

    username: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    password: Password


class Registered(msgspec.Struct, kw_only=True):
    """The account that was created."""

    user: str
    message: str


class Token(msgspec.Struct, kw_only=True):
    """The access token, for `Authorization: Bearer <token>`."""

    token: str


@ROUTES.route(
    "POST",
    "/api/register",
    access=Access.PUBLIC,
    tag=Tag.AUTH,
    summary="Register a user (if registration is open on this server)",
    body=Credentials,
    response=Registered,
    statuses=(403, 409),
)
async def register(request: web.Request, body: Credentials) -> web.Response:
    user = await accounts.register(request, body.username, body.password)
    return json_response(Registered(user=user.username, message="User registered"))


@ROUTES.route(
    "POST",
    "/api/login",
    access=Access.PUBLIC,
    tag=Tag.AUTH,
    summary="Log a user in: a token for `Authorization: Bearer`",
    body=LoginCredentials,
    response=Token,
    statuses=(429,),
)
async def login(request: web.Request, body: LoginCredentials) -> web.Response:
    _, pair = await accounts.sign_in(request, body.username, body.password)
    return json_response(Token(token=pair.access_token))
