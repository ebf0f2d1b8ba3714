"""`GET /healthz`: can the API reach PostgreSQL and Redis?"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from pgrag.runtime import db, streaming

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str  # "ok" or "unavailable"
    postgres: str  # "ok" or why not
    redis: str


def _check(probe: Callable[[], object]) -> str:
    try:
        probe()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def _postgres() -> None:
    with db.connect() as conn:
        conn.execute("SELECT 1")


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "PostgreSQL or Redis is unreachable"}},
)
def healthz() -> JSONResponse:
    """200 when PostgreSQL and Redis both answer, 503 (saying which failed) otherwise."""
    postgres, redis = _check(_postgres), _check(lambda: streaming.connection().ping())
    ok = postgres == redis == "ok"
    health = Health(status="ok" if ok else "unavailable", postgres=postgres, redis=redis)
    return JSONResponse(health.model_dump(), status_code=200 if ok else 503)
