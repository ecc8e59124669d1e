"""Users, roles and tokens of the emulated data service.

Tokens are HS256 JWTs signed with a secret kept in the state database, so they stay valid
across an emulator restart, as real DIVA tokens do. Passwords are stored salted and hashed.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from .store import Refusal, Store

__all__ = [
    "DEFAULT_USERS",
    "ROLES",
    "BadToken",
    "Caller",
    "check_role",
    "hash_password",
    "issue_token",
    "read_token",
    "session_seconds",
    "verify_password",
]

#: DIVA's roles, lowest first; each includes the rights of those before it.
ROLES: tuple[str, ...] = ("user", "operator", "advoperator", "admin", "sysadmin")

#: Users created when no ``--user`` is given.
DEFAULT_USERS: tuple[tuple[str, str, str], ...] = (
    ("admin", "admin", "admin"),
    ("sysadmin", "sysadmin", "sysadmin"),
)

#: A user's ``sessionTimeout`` (minutes) when none was given, and the most DIVA allows
#: (the guide's "Authentication Token Workflow").
DEFAULT_SESSION_MINUTES = 1440
MAX_SESSION_MINUTES = 10080

# Cheap on purpose: an emulator must log in thousands of times in benchmarks, and its
# passwords are test passwords; salting still keeps them out of the state file.
_ITERATIONS = 2_000


def hash_password(password: str, salt: str | None = None) -> tuple[str, str]:
    """(salt, hash) for a password."""
    salt = salt or secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), _ITERATIONS)
    return salt, digest.hex()


def verify_password(password: str, salt: str, pwhash: str) -> bool:
    return hmac.compare_digest(hash_password(password, salt)[1], pwhash)


@dataclass(frozen=True)
class Caller:
    """The user a token belongs to, and the token's id and expiry (for logout)."""

    username: str
    role: str
    jti: str
    exp: float


class BadToken(Refusal):
    """A token that is missing, invalid, expired or logged out (HTTP 403).

    A class of its own because the guide profile answers it with Spring's error body, not
    DIVA's (see :mod:`.profiles`).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(1020, 403, detail)


def session_seconds(session_timeout: int, token_ttl: float) -> float:
    """A new token's lifetime: the user's session timeout or the ``token_ttl`` knob,
    whichever is shorter (a timeout of 0 or less is DIVA's default)."""
    minutes = session_timeout if session_timeout > 0 else DEFAULT_SESSION_MINUTES
    return min(float(token_ttl), min(minutes, MAX_SESSION_MINUTES) * 60.0)


def issue_token(secret: str, username: str, role: str, ttl: float) -> str:
    now = time.time()
    claims = {
        "sub": username,
        "role": role,
        "iat": int(now),
        # Fractional expiry so test TTLs of a second or two mean what they say.
        "exp": round(now + ttl, 3),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def read_token(store: Store, secret: str, header: str | None) -> Caller:
    """The caller behind an ``Authorization`` header (raw token or ``Bearer``), or BadToken."""
    if not header:
        raise BadToken("no Authorization header")
    token = header.strip()
    if token[:7].lower() == "bearer ":
        token = token[7:].strip()
    try:
        claims: dict[str, Any] = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["exp", "sub", "jti"]}
        )
    except jwt.ExpiredSignatureError:
        raise BadToken("token expired") from None
    except jwt.InvalidTokenError:
        raise BadToken("invalid token") from None
    jti = str(claims["jti"])
    if store.is_revoked(jti):
        raise BadToken("token logged out")
    row = store.user(str(claims["sub"]))
    if row is None:
        raise BadToken("user no longer exists")
    return Caller(username=row["username"], role=row["role"], jti=jti, exp=float(claims["exp"]))


def check_role(caller: Caller, needed: str) -> None:
    """403/1035 unless the caller's role is at least ``needed``."""
    have = ROLES.index(caller.role) if caller.role in ROLES else -1
    if have < ROLES.index(needed):
        raise Refusal(1035, 403, f"role {needed} or higher required")
