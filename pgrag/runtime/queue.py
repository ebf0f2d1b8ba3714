"""Queue machinery: the Celery app configuration and `enqueue`, by task name.

The task bodies live in `workers/tasks.py`; code that only submits work (the CLI, the API)
sends tasks by name and never imports the workers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery

from pgrag.runtime.services import redis_url
from pgrag.runtime.settings import get_settings

INGEST_SOURCE = "pgrag.ingest_source"
EMBED_DOCUMENTS = "pgrag.embed_documents"
FINALIZE_JOB = "pgrag.finalize_job"
INDEX_BLOCK = "pgrag.index_block"
ANSWER_QUESTION = "pgrag.answer_question"

# Reading sources and building indexes is CPU work; embedding and answering want the GPU.
QUEUES = {
    INGEST_SOURCE: "ingest",
    FINALIZE_JOB: "ingest",
    INDEX_BLOCK: "ingest",
    EMBED_DOCUMENTS: "embed",
    ANSWER_QUESTION: "query",
}


def make_celery() -> Celery:
    settings = get_settings()
    broker = redis_url(settings)
    app = Celery("pgrag", broker=broker)
    app.conf.update(
        task_routes={name: {"queue": queue} for name, queue in QUEUES.items()},
        task_default_queue="ingest",
        # A task is acknowledged only once it has finished, and requeued if its worker dies:
        # every task is idempotent, so a redelivery neither loses nor duplicates rows.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for tasks of dead workers every 10 s (kombu's default is every 100 s).
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        worker_hijack_root_logger=False,
    )
    return app


@cache
def _client() -> Celery:
    return make_celery()


def enqueue(task: str, *args: Any, work_id: int) -> None:
    """Send `task` with its arguments and its row in `pgrag.work` (see `pgrag.work.send`)."""
    _client().send_task(task, args=args, kwargs={"work_id": work_id}, queue=QUEUES[task])


# kombu's Redis transport keeps a queue as a list per priority step: the name, then the name
# with "\x06\x16" and the step (its default steps are 0, 3, 6 and 9).
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def queue_length(name: str) -> int:
    """Messages waiting in a broker queue (not those delivered and not yet acknowledged)."""
    with _client().connection_for_write() as conn:
        client = conn.default_channel.client
        return sum(int(client.llen(name + suffix)) for suffix in _PRIORITY_SUFFIXES)
