"""Accounts of the native API: registration by configuration, sign-in with short-lived JWTs,
refresh, password change that revokes old tokens, API keys shown once and stored hashed, and the
first administrator from configuration."""

from __future__ import annotations

import aiohttp
import jwt

from shared.messages.accounts import ApiKey, User
from shared.nats.kv import TypedKV
from tests.harness import ADMIN_PASSWORD, Api, System, eventually, start_system, stop_system


async def test_register_sign_in_read_me_and_refresh(
    system: System, http: aiohttp.ClientSession
) -> None:
    anonymous = Api(http, system.url)
    created = await anonymous.ok(
        "POST",
        "/api/auth/register",
        201,
        json={"username": "Carla", "password": "correct horse", "email": "c@example.com"},
    )
    assert created["user"]["username"] == "Carla" and created["user"]["role"] == "user"
    tokens = await anonymous.ok(
        "POST", "/api/auth/login", json={"username": "carla", "password": "correct horse"}
    )
    assert tokens["token_type"] == "Bearer" and tokens["token"] == tokens["access_token"]
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 15 * 60  # short-lived
    carla = Api(http, system.url, token=tokens["access_token"])
    me = await carla.ok("GET", "/api/users/me")
    assert me["username"] == "Carla" and me["email"] == "c@example.com"
    fresh = await anonymous.ok(
        "POST", "/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
    )
    assert (await Api(http, system.url, token=fresh["access_token"]).ok("GET", "/api/users/me"))[
        "id"
    ] == me["id"]
    # An access token is not a refresh token, and the reverse
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/refresh", json={"refresh_token": tokens["access_token"]}
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"
    refresh_as_bearer = Api(http, system.url, token=tokens["refresh_token"])
    assert (await refresh_as_bearer.call("GET", "/api/users/me"))[0] == 401
    # Odeion's clients refresh with no body, the refresh token as the Bearer token
    again = await refresh_as_bearer.ok("POST", "/api/auth/refresh")
    assert again["refresh_token"] and again["access_token"], again
    status, body, _ = await carla.call("POST", "/api/auth/refresh")
    assert status == 401 and body["error"]["code"] == "unauthorized", body


async def test_openencoder_routes_answer_as_openencoder_clients_expect(
    system: System, http: aiohttp.ClientSession
) -> None:
    anonymous = Api(http, system.url)
    body = await anonymous.ok(
        "POST", "/api/register", json={"username": "foo@bar.com", "password": "bazbazbaz"}
    )
    assert body["user"] == "foo@bar.com" and body["message"] == "User registered"
    login = await anonymous.ok(
        "POST", "/api/login", json={"username": "foo@bar.com", "password": "bazbazbaz"}
    )
    assert (await Api(http, system.url, token=login["token"]).ok("GET", "/api/users/me"))[
        "username"
    ] == "foo@bar.com"


async def test_wrong_credentials_and_taken_usernames_are_refused(
    system: System, http: aiohttp.ClientSession, ann: Api
) -> None:
    anonymous = Api(http, system.url)
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/login", json={"username": "ann", "password": "nope-nope"}
    )
    assert status == 401 and body["error"]["message"] == "Wrong username or password."
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/login", json={"username": "nobody", "password": "nope-nope"}
    )
    assert status == 401 and body["error"]["message"] == "Wrong username or password."
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/register", json={"username": "ANN", "password": "password-123"}
    )
    assert status == 409
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/register", json={"username": "short", "password": "1234"}
    )
    assert status == 400 and "8 characters" in body["error"]["message"]
    status, body, _ = await anonymous.call(
        "POST", "/api/auth/register", json={"username": "x", "password": "password-123"}
    )
    assert status == 400 and body["error"]["details"] == {"path": "$.username"}


async def test_registration_closed_or_by_invite_is_enforced(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    closed = await start_system({**env, "VIDMESH_REGISTRATION": "closed"}, "gateway")
    try:
        status, body, _ = await Api(http, closed.url).call(
            "POST", "/api/auth/register", json={"username": "dan", "password": "password-123"}
        )
        assert status == 403 and "closed" in body["error"]["message"]
        # ...but an administrator still creates accounts, with a role
        admin = await Api(http, closed.url).as_user("admin", ADMIN_PASSWORD, register=False)
        made = await admin.ok(
            "POST",
            "/api/admin/users",
            201,
            json={"username": "mod", "password": "password-123", "role": "moderator"},
        )
        assert made["role"] == "moderator"
    finally:
        await stop_system(closed)
    invite = await start_system(
        {**env, "VIDMESH_REGISTRATION": "invite", "VIDMESH_INVITE_CODES": "abc, xyz"}, "gateway"
    )
    try:
        anonymous = Api(http, invite.url)
        status, _, _ = await anonymous.call(
            "POST",
            "/api/auth/register",
            json={"username": "eve", "password": "password-123", "invite_code": "wrong"},
        )
        assert status == 403
        await anonymous.ok(
            "POST",
            "/api/auth/register",
            201,
            json={"username": "eve", "password": "password-123", "invite_code": "xyz"},
        )
    finally:
        await stop_system(invite)


async def test_changing_the_password_revokes_every_older_token(
    system: System, http: aiohttp.ClientSession, ann: Api
) -> None:
    anonymous = Api(http, system.url)
    old = await anonymous.ok(
        "POST", "/api/auth/login", json={"username": "ann", "password": "password-123"}
    )
    status, body, _ = await ann.call(
        "PUT",
        "/api/users/me/password",
        json={"current_password": "wrong-one", "new_password": "new-password-1"},
    )
    assert status == 403
    new = await ann.ok(
        "PUT",
        "/api/users/me/password",
        json={"current_password": "password-123", "new_password": "new-password-1"},
    )
    assert (await ann.call("GET", "/api/users/me"))[0] == 401
    assert (
        await anonymous.call(
            "POST", "/api/auth/refresh", json={"refresh_token": old["refresh_token"]}
        )
    )[0] == 401
    assert (await Api(http, system.url, token=new["access_token"]).call("GET", "/api/users/me"))[
        0
    ] == 200
    await anonymous.ok(
        "POST", "/api/auth/login", json={"username": "ann", "password": "new-password-1"}
    )


async def test_expired_access_tokens_are_refused(
    env: dict[str, str], http: aiohttp.ClientSession
) -> None:
    system = await start_system({**env, "VIDMESH_ACCESS_TOKEN_MINUTES": "0.02"}, "gateway")
    try:
        frank = await Api(http, system.url).as_user("frank")
        assert (await frank.call("GET", "/api/users/me"))[0] == 200

        async def expired() -> bool:
            status, body, _ = await frank.call("GET", "/api/users/me")
            return status == 401 and "expired" in body["error"]["message"]

        await eventually(expired, timeout=10, interval=0.2, what="the token to expire")
    finally:
        await stop_system(system)


async def test_api_keys_are_shown_once_stored_hashed_and_work_as_header_or_bearer(
    system: System, http: aiohttp.ClientSession, ann: Api, ben: Api, admin_api: Api
) -> None:
    created = await ann.ok("POST", "/api/account/api-keys", 201, json={"name": "ci"})
    key = created["key"]
    assert key.startswith("vmk_") and created["prefix"] in key
    listed = await ann.ok("GET", "/api/account/api-keys")
    assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]
    stored = await TypedKV(
        (await system.nc.jetstream().key_value(system.names.apikeys_bucket)), ApiKey
    ).get(created["id"])
    assert stored is not None and key.split("_", 2)[2] not in stored.value.secret_sha256
    for via in (Api(http, system.url, api_key=key), Api(http, system.url, token=key)):
        assert (await via.ok("GET", "/api/users/me"))["username"] == "ann"
    # Another user cannot see or revoke it; an administrator can see it
    assert (await ben.call("DELETE", f"/api/account/api-keys/{created['id']}"))[0] == 404
    me = await ann.ok("GET", "/api/users/me")
    assert (await ben.call("GET", f"/api/admin/users/{me['id']}/api-keys"))[0] == 403
    seen = await admin_api.ok("GET", f"/api/admin/users/{me['id']}/api-keys")
    assert [k["id"] for k in seen] == [created["id"]]
    await ann.ok("DELETE", f"/api/account/api-keys/{created['id']}", 204)
    assert (await Api(http, system.url, api_key=key).call("GET", "/api/users/me"))[0] == 401


async def test_first_administrator_comes_from_configuration_with_an_argon2_password(
    system: System, admin_api: Api
) -> None:
    me = await admin_api.ok("GET", "/api/users/me")
    assert me["role"] == "admin" and me["username"] == "admin"
    users = TypedKV(await system.nc.jetstream().key_value(system.names.users_bucket), User)
    record = await users.get(me["id"])
    assert record is not None and record.value.password_hash.startswith("$argon2id$")
    assert ADMIN_PASSWORD not in record.value.password_hash
