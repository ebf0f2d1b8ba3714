"""Who may call a route: a bearer API key with the route's scope, within its rate limit.

    def search(body: SearchRequest, key: Annotated[ApiKey, Depends(requires("search"))]):

No key, or an unknown or revoked one: 401. A key without the scope: 403. A collection the
key may not use answers 404, exactly as one that does not exist, so that a key cannot learn
which collections others have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pgrag.runtime import streaming
from pgrag.runtime.settings import get_settings
from pgrag.store import keys
from pgrag.store.collections import UnknownCollection
from pgrag.store.schema import ApiKey

from .validation import refusal

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="api_key",
    description="An API key from `pgrag keys create NAME --scope ...`: "
    "`Authorization: Bearer pgrag_...`",
)
UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}

# The OpenAPI responses of these refusals: KEY_REFUSALS for every route that needs a key.
KEY_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: refusal("No API key, or an unknown or revoked one", {"WWW-Authenticate": "Bearer"}),
    403: refusal("A key without the route's scope"),
}
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: refusal(
        "Over this key's rate limit (PGRAG_RATE_*_PER_MIN)",
        {"Retry-After": "Seconds until the key may try again"},
    )
}


def signed_in(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> ApiKey:
    """Any live key, whatever its scopes (401 otherwise)."""
    if credentials is None:
        raise HTTPException(401, "an API key is required", headers=UNAUTHORIZED)
    key = keys.authenticate(credentials.credentials)
    if key is None:
        raise HTTPException(401, "unknown or revoked API key", headers=UNAUTHORIZED)
    return key


@cache  # one callable per scope, so FastAPI resolves it once per request
def requires(*scopes: str) -> Callable[..., ApiKey]:
    """A key with one of `scopes` (admin has them all)."""

    def dependency(key: Annotated[ApiKey, Depends(signed_in)]) -> ApiKey:
        if not any(key.allows(scope) for scope in scopes):
            raise HTTPException(403, f"this key lacks the {' or '.join(map(repr, scopes))} scope")
        return key

    return dependency


def check_collection(key: ApiKey, collection: str) -> None:
    """404, worded as for a collection that does not exist, unless the key may use it."""
    if not key.sees(collection):
        raise HTTPException(404, str(UnknownCollection(collection)).strip("'\""))


# GCRA (a token bucket kept as one timestamp): `per_minute` requests may come at once, then
# one every 60/per_minute seconds. Atomic in Redis, on Redis's clock, so every API process
# shares the budget. Returns 0 when the request may go, else the seconds until it may.
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local period, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local wait = tat + period / limit - period - now
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(tat + period / limit), 'PX', math.ceil(period * 1000))
return '0'
"""


def rate_limit(key: ApiKey, action: str) -> None:
    """429 with Retry-After when the key is over its PGRAG_RATE_<ACTION>_PER_MIN ("ask" or
    "ingest"). Only new requests are refused: work already queued runs at full speed."""
    per_minute: int = getattr(get_settings(), f"rate_{action}_per_min")
    if per_minute <= 0:
        return
    redis = streaming.connection()
    wait = float(redis.eval(GCRA, 1, f"pgrag:rate:{action}:{key.id}", 60, per_minute))
    if wait > 0:
        raise HTTPException(
            429,
            f"rate limit: {per_minute} {action} requests a minute for this key",
            headers={"Retry-After": str(math.ceil(wait))},
        )
