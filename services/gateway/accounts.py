"""What every face that has accounts does to register and sign in: registration as
`VIDMESH_REGISTRATION` allows it, and a sign-in counted against the failed-attempt limits.
Each face words the answer its own way (the native API's tokens, OpenEncoder's `{"token"}`)."""

from __future__ import annotations

from aiohttp import web

from services.gateway.identity import TokenPair
from services.gateway.login_limits import client_address
from services.gateway.state import gateway
from shared.errors import Forbidden
from shared.messages.accounts import User
from shared.settings import refuse_if_engaged


async def register(
    request: web.Request, username: str, password: str, *, email: str = "", invite_code: str = ""
) -> User:
    """A new account, if registration is open (or by invite, with a valid code)."""
    gw = gateway(request)
    gw.identity.require_secret()
    refuse_if_engaged(gw.server.switch("registration"), "Registration")
    mode = gw.settings.registration
    if mode == "closed":
        raise Forbidden("Registration is closed on this server; ask an administrator.")
    if mode == "invite" and invite_code not in gw.settings.invite_code_list:
        raise Forbidden("A valid invite code is required to register.")
    return await gw.identity.create_user(username, password, email=email)


async def sign_in(request: web.Request, username: str, password: str) -> tuple[User, TokenPair]:
    """The account and fresh tokens for these credentials (429 after too many failures from
    this username or client address)."""
    gw = gateway(request)
    identity = gw.identity
    identity.require_secret()
    forwarded = request.headers.get("X-Forwarded-For", "")
    address = client_address(request.remote, forwarded, gw.settings.trusted_proxy_list)
    async with gw.login_limits.attempt(username, address):
        user = await identity.login(username, password)
    return user, identity.issue(user)
