"""The workers that are up, kept in PostgreSQL (`pgrag.workers`) for `pgrag status`.

Each Celery worker's main process registers itself when it starts (state `loading`), says
when it is `ready` (a query worker only once every model it uses is loaded, before it takes
a question), renews `seen_at` at each tick of its sweeper, and removes itself when it stops.
A worker killed outright stops being seen: `live` lists those seen lately.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgrag.runtime import db


@dataclass(frozen=True)
class Node:
    name: str  # the Celery node name, e.g. query@host
    owner: str  # host:pid of its main process (the lease owner of a threads pool's work)
    queues: str
    pool: str  # threads or prefork
    concurrency: int
    state: str  # loading or ready
    models: str | None  # what it loaded before it took work
    ready_s: float | None
    running: int  # units of work leased by its main process (all of a threads pool's)


def register(name: str, owner: str, queues: str, pool: str, concurrency: int) -> None:
    with db.connect() as conn:
        conn.execute(
            "INSERT INTO pgrag.workers (name, owner, queues, pool, concurrency, state)"
            " VALUES (%s, %s, %s, %s, %s, 'loading')"
            " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
            " queues = excluded.queues, pool = excluded.pool,"
            " concurrency = excluded.concurrency, state = 'loading', models = NULL,"
            " ready_s = NULL, started_at = now(), seen_at = now()",
            (name, owner, queues, pool, concurrency),
        )


def ready(name: str, models: str | None = None, seconds: float | None = None) -> None:
    with db.connect() as conn:
        conn.execute(
            "UPDATE pgrag.workers SET state = 'ready', models = %s, ready_s = %s,"
            " seen_at = now() WHERE name = %s",
            (models, seconds, name),
        )


def seen(name: str) -> None:
    with db.connect() as conn:
        conn.execute("UPDATE pgrag.workers SET seen_at = now() WHERE name = %s", (name,))


def unregister(name: str, owner: str) -> None:
    """Remove the worker's row, unless a new worker of the same name (`owner`: its main
    process) has taken it over meanwhile."""
    with db.connect() as conn:
        conn.execute("DELETE FROM pgrag.workers WHERE name = %s AND owner = %s", (name, owner))


def live(within_s: float) -> list[Node]:
    """The workers seen in the last `within_s` seconds, by name."""
    with db.connect() as conn:
        rows = conn.execute(
            "SELECT n.name, n.owner, n.queues, n.pool, n.concurrency, n.state, n.models,"
            " n.ready_s, (SELECT count(*) FROM pgrag.work w"
            "             WHERE w.state = 'running' AND w.owner = n.owner)"
            " FROM pgrag.workers n WHERE n.seen_at > now() - make_interval(secs => %s)"
            " ORDER BY n.name",
            (within_s,),
        ).fetchall()
    return [Node(*row) for row in rows]
