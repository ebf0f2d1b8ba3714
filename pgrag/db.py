"""The one place that opens database connections and applies migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import psycopg
from alembic.config import Config
from pgvector.psycopg import register_vector
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from pgrag.services import database_url

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def sqlalchemy_url(url: str | None = None) -> str:
    url = url or database_url()
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def connect(*, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection with the pgvector types registered; commits on success."""
    with psycopg.connect(database_url(), autocommit=autocommit) as conn:
        register_vector(conn)
        yield conn


def _alembic_config(url: str | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = sqlalchemy_url(url)
    return config


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to `revision` (the whole schema comes from Alembic migrations)."""
    from alembic import command

    command.upgrade(_alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(_alembic_config(url), revision)


@cache
def _engine(url: str) -> Engine:
    return create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=2, max_overflow=4)


def session() -> Session:
    """An ORM session (for the small tables); bulk paths use `connect()` and COPY."""
    return Session(_engine(database_url()), expire_on_commit=False)
