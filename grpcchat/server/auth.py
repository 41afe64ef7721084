"""Signed bearer tokens (HS256 JWTs via PyJWT): `grpcchat token NAME` mints them, the server
verifies them. The name inside the token is the only name an authenticated client speaks as."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import jwt

from grpcchat.core.errors import InvalidInput, Unauthenticated
from grpcchat.core.records import record
from grpcchat.core.validation import check_name

ALGORITHM = "HS256"
ISSUER = "grpcchat"
# HS256 with a short secret can be brute-forced offline from any token; RFC 7518 (3.2) requires
# a key at least as long as the hash, 256 bits (and PyJWT warns on every use of a shorter one).
MIN_SECRET_LENGTH = 32


@record
class Identity:
    name: str
    expires_at: datetime


class TokenAuthority:
    """Mints and verifies tokens with one shared secret."""

    def __init__(self, secret: str) -> None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"the auth secret must be at least {MIN_SECRET_LENGTH} characters")
        self._secret = secret

    def mint(self, name: str, ttl: timedelta) -> str:
        if ttl <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        now = datetime.now(UTC)
        try:
            expires = now + ttl
        except OverflowError:
            raise ValueError("a token's lifetime is too long") from None
        claims = {"sub": check_name(name), "iss": ISSUER, "iat": now, "exp": expires}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Identity:
        """The identity in a valid token, or Unauthenticated saying what is wrong with it."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                # `iat` is informational: a minting machine whose clock runs a little ahead
                # must not make fresh tokens "not yet valid". Expiry is what is enforced.
                options={"require": ["sub", "exp", "iss"], "verify_iat": False},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired; mint a new one with `grpcchat token`") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature is invalid (wrong secret?)") from None
        except jwt.DecodeError:
            raise Unauthenticated("token is malformed") from None
        except jwt.InvalidTokenError as error:
            raise Unauthenticated(f"token rejected: {error}") from None
        name = claims["sub"]
        if not isinstance(name, str) or not name:
            raise Unauthenticated("token carries no user name")
        # Validly signed but unusable claims are still the token's fault, not the request's.
        try:
            name = check_name(name)
        except InvalidInput as error:
            raise Unauthenticated(f"token carries an invalid user name: {error}") from None
        try:
            # PyJWT checked `exp` is an integer, but a string of digits passes that check.
            expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        except (OverflowError, OSError, ValueError, TypeError):
            raise Unauthenticated("token expiry is out of range or not a number") from None
        return Identity(name, expires_at)

    def verify_header(self, header: str | None) -> Identity:
        """Verify an `authorization` metadata value of the form `Bearer <token>`."""
        if not header:
            raise Unauthenticated("authentication required: pass --token (or GRPCCHAT_TOKEN)")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization must be `Bearer <token>`")
        return self.verify(token.strip())
