"""The one place that opens database connections and applies migrations."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from importlib.resources import files
from pathlib import Path

import psycopg
from alembic.config import Config
from pgvector.psycopg import register_vector
from psycopg_pool import ConnectionPool
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from pgrag.runtime.services import database_url

# The Alembic scripts: the repository's migrations/, installed as the package pgrag.migrations.
MIGRATIONS = Path(str(files("pgrag.migrations")))


def sqlalchemy_url(url: str | None = None) -> str:
    url = url or database_url()
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


POOL_SIZE = 8  # connections a process keeps: its task, the lease heartbeat, the sweeper...


def _reset(conn: psycopg.Connection) -> None:
    """Back to a fresh session before the next borrower: settings (a role included) and
    advisory locks. Not DISCARD ALL: it would drop the prepared statements psycopg keeps."""
    conn.autocommit = True
    conn.execute("RESET ALL; SELECT pg_advisory_unlock_all()")
    conn.autocommit = False


# Pools by (process, URL). A forked child (a Celery pool process) makes its own, and keeps
# the parent's it inherited referenced: collecting them would close sockets the parent uses.
# Threads share their process's pool; the lock keeps two of them from each making one (the
# loser, collected, would stop its pool's threads from a thread of its own and fail).
_pools: dict[tuple[int, str], ConnectionPool] = {}
_pools_lock = threading.Lock()


def _pool(url: str) -> ConnectionPool:
    key = (os.getpid(), url)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = ConnectionPool(
                url,
                min_size=0,
                max_size=POOL_SIZE,
                configure=register_vector,
                reset=_reset,
                check=ConnectionPool.check_connection,  # one after a server restart is replaced
                max_idle=60,
                name=f"pgrag-{os.getpid()}",
                open=True,
            )
        return _pools[key]


@contextmanager
def connect(*, autocommit: bool = False) -> Iterator[psycopg.Connection]:
    """A psycopg connection with the pgvector types registered; commits on success, rolls
    back on an error. Transactional connections come from a per-process pool (a new one
    costs about 13 ms of CPU, PostgreSQL's and ours); autocommit ones are new, and closed
    after, since their session may hold a lock that must go with them."""
    if autocommit:
        with psycopg.connect(database_url(), autocommit=True) as conn:
            register_vector(conn)
            yield conn
        return
    with _pool(database_url()).connection() as conn:
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
