"""API keys: created and revoked with `pgrag keys`, checked on every HTTP request.

A key reads `pgrag_<prefix>_<secret>`: the prefix finds its row, and only a SHA-256 of the
whole key is stored. The secret is 256 random bits, so a fast hash is the right one (a slow
password hash defends low-entropy secrets, which these are not); it is compared with
`hmac.compare_digest`, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select, text, update

from pgrag.runtime import db
from pgrag.runtime.errors import UserError
from pgrag.store.schema import ApiKey

SCOPES = ("search", "ask", "ingest", "admin")
TOKEN_PREFIX = "pgrag_"


class UnknownKey(UserError, LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no live API key named {name!r}")


class InvalidKey(UserError, ValueError):
    """A key that cannot be created as asked (its scopes, its name)."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def create_key(
    name: str, scopes: Sequence[str], collections: Sequence[str] | None = None
) -> tuple[ApiKey, str]:
    """A new key and its token (shown once: only its hash is stored). `collections`:
    those it may use; None for all."""
    wrong = sorted(set(scopes) - set(SCOPES))
    if wrong or not scopes:
        raise InvalidKey(f"scopes must be some of {', '.join(SCOPES)} (got {', '.join(wrong)})")
    if not name.strip():
        raise InvalidKey("a key needs a name")
    prefix = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey(
        name=name,
        prefix=prefix,
        hash=_digest(token),
        scopes=sorted(set(scopes)),
        collections=sorted(set(collections)) if collections is not None else None,
    )
    with db.session() as s:
        if s.scalar(select(ApiKey.id).where(ApiKey.name == name, ApiKey.revoked_at.is_(None))):
            raise InvalidKey(f"a live API key named {name!r} exists: revoke it first")
        s.add(key)
        s.commit()
    return key, token


def list_keys() -> list[ApiKey]:
    """Every key, live and revoked, oldest first."""
    with db.session() as s:
        return list(s.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(name: str) -> None:
    """Revoke the live key named `name`: requests with it are refused from now on."""
    with db.session() as s:
        done = s.execute(
            update(ApiKey)
            .where(ApiKey.name == name, ApiKey.revoked_at.is_(None))
            .values(revoked_at=func.now())
            .returning(ApiKey.id)
        ).first()
        s.commit()
    if done is None:
        raise UnknownKey(name)


def authenticate(token: str) -> ApiKey | None:
    """The live key that `token` is, or None (malformed, unknown or revoked)."""
    parts = token.split("_", 2)  # the secret may hold "_" too
    if len(parts) != 3 or f"{parts[0]}_" != TOKEN_PREFIX or len(token) > 200:
        return None
    with db.session() as s:
        key = s.scalar(select(ApiKey).where(ApiKey.prefix == parts[1]))
        if key is None or not hmac.compare_digest(key.hash, _digest(token)):
            return None
        if key.revoked_at is not None:
            return None
        # Bounded writes: at most one per key a minute, however busy the key is.
        s.execute(
            update(ApiKey)
            .where(ApiKey.id == key.id)
            .where(text("coalesce(last_used_at, '-infinity') < now() - interval '1 minute'"))
            .values(last_used_at=func.now())
        )
        s.commit()
    return key
