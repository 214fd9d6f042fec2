"""Signed tokens: HS256 JWTs with vidmesh as issuer, their signing and their checking (signature,
issuer, expiry, type). What a token grants is `identity`'s to say."""

from __future__ import annotations

import uuid

import jwt

from shared.errors import NotConfigured, Unauthorized

_ALGORITHM = "HS256"
_ISSUER = "vidmesh"


class TokenSigner:
    """Signs and checks the gateway's tokens with VIDMESH_JWT_SECRET."""

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def require_secret(self) -> None:
        if not self.secret:
            raise NotConfigured(
                "The native API is not configured on this server (set VIDMESH_JWT_SECRET)."
            )

    def sign(self, claims: dict[str, object], now: int, seconds: int) -> str:
        body = {**claims, "iss": _ISSUER, "iat": now, "exp": now + seconds, "jti": uuid.uuid4().hex}
        return jwt.encode(body, self.secret, algorithm=_ALGORITHM)

    def decode(self, token: str, typ: str) -> dict[str, object]:
        """Claims of a valid, unexpired token of type `typ`; 401 otherwise."""
        self.require_secret()
        try:
            claims: dict[str, object] = jwt.decode(
                token,
                self.secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.InvalidTokenError:
            raise Unauthorized("The token is not valid.") from None
        if claims.get("typ") != typ:
            raise Unauthorized(f"This is not {'an' if typ[0] in 'aeiou' else 'a'} {typ} token.")
        return claims
