"""The Celery application the workers run; its configuration lives in `pgrag.runtime.queue`."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from pgrag.runtime.queue import make_celery

app = make_celery()
app.conf.include = ["pgrag.workers.tasks"]

# Queues whose tasks embed text: their pool processes load the default model up front, and
# each logs WARM when it has (the benches wait for these lines before they time anything).
MODEL_QUEUES = {"embed", "query"}
WARM = "pool process warm"

log = logging.getLogger(__name__)


@celeryd_after_setup.connect
def _remember_queues(sender: str, instance: Any, **_: Any) -> None:
    # Runs in the main process before the pool forks: the children inherit the variables.
    os.environ["PGRAG_WORKER_QUEUES"] = ",".join(instance.app.amqp.queues.consume_from)
    os.environ["PGRAG_WORKER_CONCURRENCY"] = str(instance.concurrency)


@worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """Load the default embedder once per pool process, after the fork, before any task."""
    if MODEL_QUEUES & set(os.environ.get("PGRAG_WORKER_QUEUES", "").split(",")):
        from pgrag.inference.embedding import load_embedder
        from pgrag.inference.weights import pick_device, share_cpu_threads
        from pgrag.runtime.settings import get_settings

        started = time.perf_counter()
        settings = get_settings()
        # Before the model loads: OpenVINO takes its thread count when it compiles a model.
        if pick_device(settings.device) == "cpu":
            share_cpu_threads(int(os.environ.get("PGRAG_WORKER_CONCURRENCY", "1")))
        load_embedder(settings.embed_model, settings.device)
        log.info(
            "%s: %s loaded in %.1f s", WARM, settings.embed_model, time.perf_counter() - started
        )


_sweeping = threading.Event()


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Every worker's main process sweeps for lost work (`pgrag.work`); PostgreSQL lets one
    of them act at a time."""
    from pgrag.runtime import work

    threading.Thread(target=work.run_sweeper, args=(_sweeping,), daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    _sweeping.set()
