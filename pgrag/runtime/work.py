"""Work in flight, kept in PostgreSQL: the ledger that the broker only carries messages for.

Every task pgrag queues has a row in `pgrag.work`, written in the transaction that creates
the work (a job's read, each batch of documents to embed, a finalize step, a question):

    queued --claim--> running (owner, heartbeat_at renewed by the running task) --> done

A task first claims its row; a second delivery of the same message finds it running under a
live lease, or done, and does nothing. While it runs, a thread renews the lease every
`lease_s / 3` seconds. A sweeper, run every few seconds by every worker but acting in one at a
time (a PostgreSQL advisory lock), puts work back in the broker when:

- its lease expired: the worker died (SIGKILL, lost machine) or lost PostgreSQL for longer
  than the lease; or
- it has been queued for more than `lost_after_s` while its broker queue is empty: the
  message was lost (a Redis restarted without its data, a failover, FLUSHALL).

Re-delivered work is idempotent as before (`ingest.py`, `loading.py`), so a duplicate
message costs a claim that fails; a question taken over from a dead worker is answered
again from the start, after a `restarted` event that tells its readers to drop what they had.
Each recovery is counted on the row with its reason; `pgrag jobs ID`, the job_progress view
and the API show them per job. The broker's visibility timeout stays as a backstop only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgrag.runtime import db, queue
from pgrag.runtime.services import ServiceError
from pgrag.runtime.settings import get_settings

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x70677277  # advisory lock key of the sweeper ("pgrw")
# PostgreSQL away (a lost connection, an embedded server restarting): the lease is left as it
# is, and expires if the outage lasts.
UNREACHABLE = (psycopg.Error, ServiceError)


def owner() -> str:
    """This process, as a lease owner: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def add(conn: psycopg.Connection, task: str, args: list[Any], job_id: int | None = None) -> int:
    """Record a unit of work in the caller's transaction; send it with `send` after commit."""
    row = conn.execute(
        "INSERT INTO pgrag.work (task, args, job_id) VALUES (%s, %s, %s) RETURNING id",
        (task, Jsonb(args), job_id),
    ).fetchone()
    return int(row[0])  # type: ignore[index]


def send(work_id: int, task: str, args: list[Any]) -> None:
    """Put the message in the broker. If that fails, the sweeper sends it later."""
    try:
        queue.enqueue(task, *args, work_id=work_id)
    except Exception as e:  # the broker is down: PostgreSQL has the work
        log.warning("work %s not sent (%s); the sweeper will send it", work_id, e)


def submit(task: str, args: list[Any], job_id: int | None = None) -> int:
    """Record and send a unit of work in one go (its own transaction)."""
    with db.connect() as conn:
        work_id = add(conn, task, args, job_id)
    send(work_id, task, args)
    return work_id


CLAIM = """
UPDATE pgrag.work SET state = 'running', owner = %(owner)s, heartbeat_at = now(),
    attempts = attempts + 1
WHERE id = %(id)s AND (state = 'queued' OR (state = 'running'
    AND heartbeat_at < now() - make_interval(secs => %(lease)s)))
RETURNING id
"""


@contextlib.contextmanager
def lease(work_id: int | None) -> Iterator[bool]:
    """Hold the lease of `work_id` while the body runs: yields False when the work is done
    or held by a live worker (the body should then do nothing), else True and renews the
    lease until the body ends. The work is done when the body returns; if it raises, the
    work goes back to queued for the task's retry. `None` (a message from before the ledger)
    runs unleased."""
    if work_id is None:
        yield True
        return
    lease_s = get_settings().lease_s
    with db.connect() as conn:
        claimed = conn.execute(CLAIM, {"id": work_id, "owner": owner(), "lease": lease_s})
        if claimed.fetchone() is None:
            yield False
            return
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(work_id, stop, lease_s / 3), daemon=True)
    beat.start()
    try:
        yield True
    except BaseException:
        with contextlib.suppress(*UNREACHABLE), db.connect() as conn:
            conn.execute(
                "UPDATE pgrag.work SET state = 'queued', owner = NULL WHERE id = %s"
                " AND state = 'running'",
                (work_id,),
            )
        raise
    finally:
        stop.set()
        beat.join()
    finish(work_id)


def finish(work_id: int) -> None:
    with db.connect() as conn:
        conn.execute("UPDATE pgrag.work SET state = 'done' WHERE id = %s", (work_id,))


def _heartbeat(work_id: int, stop: threading.Event, every: float) -> None:
    """Renew the lease until `stop`; a failed renewal is tried again at the next beat."""
    me = owner()
    while not stop.wait(every):
        with contextlib.suppress(*UNREACHABLE), db.connect() as conn:
            conn.execute(
                "UPDATE pgrag.work SET heartbeat_at = now() WHERE id = %s AND owner = %s"
                " AND state = 'running'",
                (work_id, me),
            )


def in_flight(conn: psycopg.Connection) -> list[tuple[str, int, float]]:
    """(owner, running units of work, seconds since its last heartbeat) per lease owner."""
    return conn.execute(
        "SELECT owner, count(*), extract(epoch FROM now() - max(heartbeat_at))::float8"
        " FROM pgrag.work WHERE state = 'running' GROUP BY owner ORDER BY owner"
    ).fetchall()


# ---------------------------------------------------------------------------- sweeper

EXPIRED = """
UPDATE pgrag.work SET state = 'queued', owner = NULL, enqueued_at = now(),
    recovered = recovered + 1,
    last_recovery = 'lease expired: ' || owner || ' stopped renewing it'
WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(lease)s)
RETURNING id, task, args
"""

LOST = """
UPDATE pgrag.work SET enqueued_at = now(), recovered = recovered + 1,
    last_recovery = 'message lost: queued with no message in the broker'
WHERE state = 'queued' AND enqueued_at < now() - make_interval(secs => %(lost)s)
    AND task = ANY(%(tasks)s)
RETURNING id, task, args
"""


def sweep() -> int:
    """One pass of the sweeper, if no other one is running; returns the work re-sent."""
    settings = get_settings()
    with db.connect() as conn:
        locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK,)).fetchone()
        if not locked or not locked[0]:
            return 0
        expired = conn.execute(EXPIRED, {"lease": settings.lease_s}).fetchall()
        empty = {q for q in set(queue.QUEUES.values()) if queue.queue_length(q) == 0}
        idle = [task for task, q in queue.QUEUES.items() if q in empty]
        lost = conn.execute(LOST, {"lost": settings.lost_after_s, "tasks": idle}).fetchall()
    for work_id, task, args in [*expired, *lost]:
        log.warning("recovering work %s: %s%s", work_id, task, tuple(args))
        send(work_id, task, args)
    return len(expired) + len(lost)


def run_sweeper(stop: threading.Event) -> None:
    """Sweep every `sweep_s` seconds until `stop` (a thread of each worker's main process)."""
    every = get_settings().sweep_s
    while not stop.wait(every):
        try:
            sweep()
        except Exception as e:  # PostgreSQL or Redis away: try again at the next tick
            log.warning("sweep failed: %s", e)
