"""Work in flight, kept in PostgreSQL: the ledger that the broker only carries messages for.

Every task pgrag queues has a row in `pgrag.work`, written in the transaction that creates
the work (a job's read, each batch of documents to embed, a finalize step, a question):

    queued --claim--> running (owner, attempt; heartbeat_at renewed) --> done

A task first claims its row; a second delivery of the same message finds it running under a
live lease, or done, and does nothing. While it runs, one thread per process renews the
leases the process holds every `lease_s / 3` seconds. The lease is a fence: finishing or
releasing the work, and the writes that commit its results (`fence`), check that this
process still holds it (owner and attempt), so a worker that was paused past its lease (a
long GC, a stopped VM, a partition) and then resumes changes nothing once another has taken
the work over (`LeaseLost`).

A sweeper, run every few seconds by every worker but acting in one at a time (a PostgreSQL
advisory lock), puts work of its own deployment (`pgrag.work.broker`) back in the broker when:

- its lease expired: the worker died (SIGKILL, lost machine) or lost PostgreSQL for longer
  than the lease; or
- its message is lost: the work has been queued for more than `lost_after_s`, and on two
  sweeps in a row its message was in no broker queue and held by no worker (a Redis
  restarted without its data, a failover, FLUSHALL). A message a worker has taken but not
  started (a worker still loading its model, a retry waiting for its countdown) is held, in
  the broker's unacknowledged set, so it is never taken for lost.

Re-delivered work is idempotent as before (`ingest.py`, `loading.py`), so a duplicate
message costs a claim that fails; a question taken over from a dead worker is answered
again from the start, after a `restarted` event that tells its readers to drop what they had.
Each recovery is a row of `pgrag.recoveries` with its reason; `pgrag jobs ID`, the
job_progress view and the API count them per reason. The broker's visibility timeout stays
as a backstop only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
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
# A worker holding a message this many times lost_after_s without claiming its work died
# before starting it (a live one claims it when the task starts; retry countdowns are shorter).
HELD_AT_MOST = 20


class LeaseLost(Exception):
    """This process no longer holds the lease of the work it runs: another worker took it
    over, and this one must write nothing more of it."""


def owner() -> str:
    """This process, as a lease owner: host and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def add(conn: psycopg.Connection, task: str, args: list[Any], job_id: int | None = None) -> int:
    """Record a unit of work in the caller's transaction; send it with `send` after commit."""
    row = conn.execute(
        "INSERT INTO pgrag.work (task, args, job_id, broker) VALUES (%s, %s, %s, %s) RETURNING id",
        (task, Jsonb(args), job_id, queue.deployment()),
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


# ---------------------------------------------------------------------------- leases


@dataclass
class Lease:
    work_id: int
    attempt: int  # pgrag.work.attempts when this process claimed it
    owner: str
    lost: threading.Event = field(default_factory=threading.Event)  # seen by a renewal

    def check(self) -> None:
        """LeaseLost once a renewal found the lease taken over (cheap: no statement)."""
        if self.lost.is_set():
            raise LeaseLost("a renewal found it taken over")


# The lease of the work the current task runs (a Celery thread or pool process each has its own).
_current: ContextVar[Lease | None] = ContextVar("pgrag_lease", default=None)


def current() -> Lease | None:
    return _current.get()


CLAIM = """
UPDATE pgrag.work SET state = 'running', owner = %(owner)s, heartbeat_at = now(),
    attempts = attempts + 1
WHERE id = %(id)s AND (state = 'queued' OR (state = 'running'
    AND heartbeat_at < now() - make_interval(secs => %(lease)s)))
RETURNING attempts
"""
# The statements below act only while this process still holds the lease it claimed.
HELD = "id = %(id)s AND owner = %(owner)s AND attempts = %(attempt)s AND state = 'running'"
FINISH = f"UPDATE pgrag.work SET state = 'done' WHERE {HELD}"
RELEASE = f"UPDATE pgrag.work SET state = 'queued', owner = NULL, enqueued_at = now() WHERE {HELD}"
FENCE = f"SELECT 1 FROM pgrag.work WHERE {HELD} FOR SHARE"


@contextlib.contextmanager
def lease(work_id: int | None) -> Iterator[bool]:
    """Hold the lease of `work_id` while the body runs: yields False when the work is done
    or held by a live worker (the body should then do nothing), else True and renews the
    lease until the body ends. The work is done when the body returns; if it raises, the
    work goes back to queued for the task's retry; if it raises `LeaseLost`, another worker
    has the work and nothing is changed. `None` (a message from before the ledger) runs
    unleased."""
    if work_id is None:
        yield True
        return
    me = owner()
    with db.connect() as conn:
        claimed = conn.execute(
            CLAIM, {"id": work_id, "owner": me, "lease": get_settings().lease_s}
        ).fetchone()
    if claimed is None:
        yield False
        return
    held = Lease(work_id, int(claimed[0]), me)
    _renewer.add(held)
    token = _current.set(held)
    try:
        yield True
    except LeaseLost as e:
        log.warning("work %s: lease lost (%s); nothing more of it is written", work_id, e)
        return
    except BaseException:
        with contextlib.suppress(*UNREACHABLE), db.connect() as conn:
            conn.execute(RELEASE, _held(held))
        raise
    finally:
        _current.reset(token)
        _renewer.remove(held)
    with db.connect() as conn:
        if conn.execute(FINISH, _held(held)).rowcount == 0:
            log.warning("work %s finished after its lease was lost; left to its new owner", work_id)


def fence(conn: psycopg.Connection) -> None:
    """In the transaction that commits the current work's results: LeaseLost unless this
    process still holds its lease. The row stays share-locked until the commit, so no one
    takes the work over in between. No-op outside a leased task."""
    held = current()
    if held is None:
        return
    held.check()
    if conn.execute(FENCE, _held(held)).fetchone() is None:
        held.lost.set()
        raise LeaseLost("another worker holds it")


def _held(held: Lease) -> dict[str, Any]:
    return {"id": held.work_id, "owner": held.owner, "attempt": held.attempt}


RENEW = """
UPDATE pgrag.work w SET heartbeat_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS held(id, attempt)
WHERE w.id = held.id AND w.attempts = held.attempt AND w.owner = %(owner)s
    AND w.state = 'running'
RETURNING w.id
"""


class _Renewer:
    """One thread per process renews every lease the process holds, in one statement, and
    marks the leases it finds taken over as lost."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.leases: dict[int, Lease] = {}
        self.pid = 0  # the process whose thread runs; a forked child starts its own

    def add(self, held: Lease) -> None:
        with self.lock:
            self.leases[id(held)] = held
            if self.pid != os.getpid():
                self.pid = os.getpid()
                self.leases = {id(held): held}  # a forked child holds none of its parent's
                threading.Thread(target=self._run, name="pgrag-leases", daemon=True).start()

    def remove(self, held: Lease) -> None:
        with self.lock:
            self.leases.pop(id(held), None)

    def _run(self) -> None:
        every = get_settings().lease_s / 3
        while True:
            time.sleep(every)
            with self.lock:
                held = list(self.leases.values())
            if held:
                with contextlib.suppress(*UNREACHABLE):
                    self.renew(held)

    @staticmethod
    def renew(held: list[Lease]) -> None:
        with db.connect() as conn:
            params = {
                "ids": [h.work_id for h in held],
                "attempts": [h.attempt for h in held],
                "owner": held[0].owner,
            }
            renewed = {row[0] for row in conn.execute(RENEW, params)}
        for h in held:
            if h.work_id not in renewed:
                h.lost.set()


_renewer = _Renewer()


def counts(conn: psycopg.Connection, task: str) -> dict[str, int]:
    """Open units of work of `task` per state (queued, running)."""
    rows = conn.execute(
        "SELECT state, count(*) FROM pgrag.work WHERE state <> 'done' AND task = %s GROUP BY state",
        (task,),
    ).fetchall()
    return {state: int(n) for state, n in rows}


def in_flight(conn: psycopg.Connection) -> list[tuple[str, int, float]]:
    """(owner, running units of work, seconds since its last heartbeat) per lease owner."""
    return conn.execute(
        "SELECT owner, count(*), extract(epoch FROM now() - max(heartbeat_at))::float8"
        " FROM pgrag.work WHERE state = 'running' GROUP BY owner ORDER BY owner"
    ).fetchall()


# ---------------------------------------------------------------------------- sweeper

MINE = "(broker = %(broker)s OR broker IS NULL)"
# SKIP LOCKED: a row share-locked by `fence` is being committed by its owner right now.
EXPIRED = f"""
WITH stale AS (
    SELECT id, owner FROM pgrag.work
    WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => %(lease)s)
        AND {MINE}
    FOR UPDATE SKIP LOCKED
), requeued AS (
    UPDATE pgrag.work w SET state = 'queued', owner = NULL, enqueued_at = now()
    FROM stale WHERE w.id = stale.id
    RETURNING w.id, w.task, w.args, w.job_id, stale.owner
), logged AS (
    INSERT INTO pgrag.recoveries (work_id, job_id, task, reason, detail)
    SELECT id, job_id, task, 'lease expired', owner || ' stopped renewing its lease'
    FROM requeued
)
SELECT id, task, args FROM requeued
"""

# Work queued longer than lost_after_s, for the tasks whose broker queue is empty.
SUSPECTS = f"""
SELECT id, enqueued_at FROM pgrag.work
WHERE state = 'queued' AND enqueued_at < now() - make_interval(secs => %(lost)s)
    AND task = ANY(%(tasks)s) AND {MINE}
"""

LOST = """
WITH lost AS (
    UPDATE pgrag.work w SET enqueued_at = now()
    FROM unnest(%(ids)s::bigint[], %(since)s::timestamptz[]) AS seen(id, enqueued_at)
    WHERE w.id = seen.id AND w.enqueued_at = seen.enqueued_at AND w.state = 'queued'
    RETURNING w.id, w.task, w.args, w.job_id,
        extract(epoch FROM now() - seen.enqueued_at)::int AS waited
), logged AS (
    INSERT INTO pgrag.recoveries (work_id, job_id, task, reason, detail)
    SELECT id, job_id, task, 'message lost',
        'queued ' || waited || ' s with its message in no broker queue and held by no worker'
    FROM lost
)
SELECT id, task, args FROM lost
"""


class Sweeper:
    """Sends lost work again. Remembers the work it found without a message at its last
    pass: a message is lost only when it is missing at two passes in a row, since one in
    transit (popped from a queue, not yet recorded as held) is in neither place for a
    moment."""

    def __init__(self) -> None:
        self.missing: set[tuple[int, Any]] = set()  # (work id, enqueued_at) at the last pass

    def sweep(self) -> int:
        """One pass, if no other sweeper is running one; returns the work sent again."""
        settings = get_settings()
        broker = queue.deployment()
        with db.connect() as conn:
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK,)).fetchone()
            if not locked or not locked[0]:
                return 0
            expired = conn.execute(
                EXPIRED, {"lease": settings.lease_s, "broker": broker}
            ).fetchall()
            idle = [t for t, q in queue.QUEUES.items() if queue.queue_length(q) == 0]
            suspects = conn.execute(
                SUSPECTS, {"lost": settings.lost_after_s, "tasks": idle, "broker": broker}
            ).fetchall()
            held = queue.held_work(HELD_AT_MOST * settings.lost_after_s) if suspects else set()
            missing = {(work_id, since) for work_id, since in suspects if work_id not in held}
            confirmed = sorted(missing & self.missing)
            self.missing = missing
            lost = conn.execute(
                LOST, {"ids": [w for w, _ in confirmed], "since": [s for _, s in confirmed]}
            ).fetchall()
        for work_id, task, args in [*expired, *lost]:
            log.warning("recovering work %s: %s%s", work_id, task, tuple(args))
            send(work_id, task, args)
        return len(expired) + len(lost)
