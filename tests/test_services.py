"""The embedded PostgreSQL's configuration: shared_buffers from the setting, or a quarter of
the machine's memory (at most 8GB), applied at its start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg

from pgrag.runtime import db
from pgrag.runtime import services as svc
from pgrag.runtime.settings import get_settings

SHOW = """
from pgrag.runtime import services
from pgrag.runtime.settings import get_settings
import psycopg
url = services.start_postgres(get_settings())
print(psycopg.connect(url).execute("SHOW shared_buffers").fetchone()[0])
services.stop_postgres(get_settings())
"""


def running_shared_buffers(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_size_bytes(current_setting('shared_buffers'))").fetchone()
    assert row is not None
    return int(row[0])


def test_embedded_postgres_gets_a_quarter_of_memory(services: Path) -> None:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert svc.shared_buffers(get_settings()) == f"{min(memory // 4, 8 << 30) >> 20}MB"
    with db.connect() as conn:
        assert running_shared_buffers(conn) == min(memory // 4, 8 << 30) >> 20 << 20


def test_shared_buffers_setting_applies_at_the_next_start(tmp_path: Path) -> None:
    """A new home starts with the setting; a later start with another value restarts the
    server once with it."""
    env = {**os.environ, "PGRAG_HOME": str(tmp_path), "PGRAG_PG_SHARED_BUFFERS": "64MB"}
    for var in ("PGRAG_DATABASE_URL", "PGRAG_REDIS_URL"):
        env.pop(var, None)

    def show(value: str) -> str:
        env["PGRAG_PG_SHARED_BUFFERS"] = value
        return subprocess.run(
            [sys.executable, "-c", SHOW], env=env, check=True, capture_output=True, text=True
        ).stdout.strip()

    assert show("64MB") == "64MB"
    assert show("96MB") == "96MB"
