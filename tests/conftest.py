"""Shared fixtures: a real embedded PostgreSQL + pgvector, a real Redis and real Celery workers.

They start once per test session under a temporary PGRAG_HOME, exactly as `pgrag up` starts
them, and every test works in collections of its own.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# The local generator's smallest model (`make install`), whatever larger ones are installed:
# tests of a packaged model name it.
os.environ.setdefault("PGRAG_LOCAL_MODEL", "HuggingFaceTB/SmolLM2-135M-Instruct")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
# (question, the document that answers it) for the sample corpus in examples/corpus.
QUESTIONS = [
    tuple(line.split("\t")) for line in (EXAMPLES / "questions.txt").read_text().splitlines()
]
# Event types of an answered question: status (queued, running, retrieving), passages,
# status (generating), tokens, maybe status (stopped at a repeat, uncited), done.
ANSWERED = re.compile(r"^(status )+passages status (token )+(status )*done$")


WORDS = [
    "river",
    "valve",
    "pump",
    "sensor",
    "meter",
    "gear",
    "motor",
    "table",
    "index",
    "query",
    "vector",
    "light",
    "water",
]


def sample_text(i: int, words: int) -> str:
    """`words` words of a small vocabulary, a different mix for each i, ending with i."""
    return " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(words)) + f" {i}."


def stored_chunk_lexemes(collection_id: int, text_config: str) -> dict[int, Counter[str]]:
    """Each stored chunk's lexeme counts, analysed afresh from its text and its document's
    title (not read from the lexical index)."""
    from pgrag.runtime import db
    from pgrag.store.analyzer import Analyzer
    from pgrag.store.lexical import analysed_text

    with db.connect() as conn:
        chunks = conn.execute(
            "SELECT c.id, d.title, c.text FROM pgrag.chunks c"
            " JOIN pgrag.documents d ON d.id = c.document_id WHERE c.collection_id = %s",
            (collection_id,),
        ).fetchall()
    lexer = Analyzer(text_config)
    return {cid: lexer.lexemes(analysed_text(title, text)) for cid, title, text in chunks}


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first."""
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def sweep_lock_held() -> bool:
    from pgrag.runtime import db, work

    with db.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid::bigint = %s",
            (work.SWEEP_LOCK,),
        ).fetchone()
    return bool(row and row[0])


class Worker:
    """A real `celery worker` process on some queues, which a test may kill."""

    stopping: ClassVar[list[Worker]] = []  # stopped, not yet ended

    def __init__(
        self,
        home: Path,
        queues: str,
        name: str,
        env: dict[str, str] | None = None,
        concurrency: int | None = None,
    ) -> None:
        from pgrag.runtime import processes

        self.log = home / f"{name}.log"
        self.start = self.log.stat().st_size if self.log.exists() else 0  # of this run's lines
        argv = [*processes.worker(queues, concurrency, name=name).argv, "--without-heartbeat"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log.read_text()[-3000:]}")
            if b"ready." in self.log.read_bytes()[self.start :]:
                return
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready: {self.log.read_text()[-3000:]}")

    def pids(self) -> list[int]:
        """Its processes: the main one and its pool children."""
        return [
            int(stat.parent.name)
            for stat in Path("/proc").glob("[0-9]*/stat")
            if _process_group(stat) == self.proc.pid
        ]

    def owners(self) -> list[str]:
        """Its processes as lease owners (`pgrag.runtime.work.owner`)."""
        return [f"{socket.gethostname()}:{pid}" for pid in self.pids()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and pool children) at once."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP the whole worker for the body, SIGCONT after: it neither consumes nor
        sweeps meanwhile. Never frozen in the middle of a sweep, whose lock would stay held."""
        while True:
            os.killpg(self.proc.pid, signal.SIGSTOP)
            if not sweep_lock_held():
                break
            os.killpg(self.proc.pid, signal.SIGCONT)
            time.sleep(0.05)
        try:
            yield
        finally:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Celery's warm shutdown, not waited for: the worker stops consuming at once, and the
        rest (its pool processes' exit, its interpreter's) takes seconds that no test needs;
        the session waits for it at its end (`reap`). SIGTERM goes to the main process
        alone: a pool process that got it too would be replaced, and warmed up, first."""
        if self.proc.poll() is None:
            self.proc.terminate()
            Worker.stopping.append(self)

    @classmethod
    def reap(cls) -> None:
        """Wait for every stopped worker to end; SIGKILL one that takes over 30 s."""
        for worker in cls.stopping:
            try:
                worker.proc.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        cls.stopping.clear()


def _process_group(stat: Path) -> int | None:
    try:  # the fields after the command name, which may itself hold spaces or parentheses
        return int(stat.read_text().rsplit(")", 1)[1].split()[2])
    except (OSError, IndexError, ValueError):  # the process ended meanwhile
        return None


@pytest.fixture(autouse=True)
def _settings_follow_the_environment() -> Iterator[None]:
    """Settings are cached; a test that sets PGRAG_* (monkeypatch) must not leave settings read
    from its environment to the tests after it. Autouse fixtures are set up first, so this
    teardown runs after monkeypatch has put the environment back."""
    yield
    from pgrag.runtime.settings import get_settings

    get_settings.cache_clear()


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Embedded PostgreSQL + Redis under a fresh PGRAG_HOME, migrated to the latest schema."""
    from pgrag.runtime import db
    from pgrag.runtime import services as svc
    from pgrag.runtime.settings import get_settings

    home = tmp_path_factory.mktemp("pgrag-home")
    os.environ["PGRAG_HOME"] = str(home)
    # Short enough that a task of a killed worker is redelivered within the test.
    os.environ["PGRAG_VISIBILITY_TIMEOUT_S"] = "20"
    for var in ("PGRAG_DATABASE_URL", "PGRAG_REDIS_URL"):
        os.environ.pop(var, None)
    get_settings.cache_clear()
    settings = get_settings()
    svc.start_postgres(settings)
    svc.start_redis(settings)
    db.migrate()
    yield home
    Worker.reap()
    svc.stop_redis(settings)
    svc.stop_postgres(settings)


@pytest.fixture(scope="session")
def worker(services: Path) -> Iterator[Worker]:
    """One worker on every queue, shared by the tests."""
    w = Worker(services, "ingest,embed,query", "all")
    yield w
    w.stop()


@pytest.fixture(scope="session")
def api(worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`uvicorn pgrag.api.app:app` in a process of its own, with small limits to test; its URL.
    It may read server folders under examples/ only, and stores uploads in a folder of its
    own (`API_UPLOADS`)."""
    from bench.common import free_port

    port = free_port()
    folder = tmp_path_factory.mktemp("api")
    env = {
        **os.environ,
        "PGRAG_SOURCE_ROOTS": str(EXAMPLES),
        "PGRAG_UPLOAD_DIR": str(folder / "uploads"),
        "PGRAG_MAX_UPLOAD_FILE_MB": str(API_FILE_MB),
        "PGRAG_MAX_REQUEST_MB": str(API_REQUEST_MB),
        "PGRAG_RATE_ASK_PER_MIN": str(API_ASKS_PER_MIN),
    }
    with open(folder / "uvicorn.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "pgrag.api.app:app", "--port", str(port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (folder / "uvicorn.log").read_text()
        assert time.monotonic() < deadline, (folder / "uvicorn.log").read_text()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


API_FILE_MB = 0.05  # uploads: 50 KiB a file (the sample corpus's files are smaller)
API_REQUEST_MB = 1.0
API_ASKS_PER_MIN = 30


class KeyClient(httpx.Client):
    """An httpx client of the API that sends a key of its own, made for it."""

    def __init__(self, url: str, scopes: list[str], collections: list[str] | None = None):
        from pgrag.store import keys

        key, self.token = keys.create_key(f"test-{uuid.uuid4().hex[:8]}", scopes, collections)
        self.key_id, self.key_name = key.id, key.name
        super().__init__(
            base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=300
        )


@pytest.fixture(scope="session")
def admin(api: str) -> KeyClient:
    """A client of the API with an admin key."""
    return KeyClient(api, ["admin"])


@pytest.fixture(scope="module")
def kb(worker: Worker) -> str:
    """The sample corpus, ingested once per test module that asks for it."""
    from pgrag.ingest import pipeline
    from pgrag.ingest.jobs import get_job

    name = f"answers_{uuid.uuid4().hex[:8]}"
    job_id = pipeline.submit(EXAMPLES / "corpus", name, create=True).id
    deadline = time.monotonic() + 600
    while not (job := get_job(job_id)).finished:
        assert time.monotonic() < deadline, f"job {job_id} still {job.state}"
        time.sleep(0.2)
    assert job.state == "done", job.error
    return name


_names = itertools.count()


@pytest.fixture
def collection_name(request: pytest.FixtureRequest) -> str:
    """A collection name unique to the test."""
    return f"t{next(_names)}_{request.node.name[:40]}".replace("[", "_").replace("]", "")


@pytest.fixture
def wait_job() -> Callable[..., object]:
    from pgrag.ingest.jobs import get_job

    def wait(job_id: int, timeout: float = 300) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = get_job(job_id)
            if job.finished:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {get_job(job_id).state} after {timeout}s")

    return wait


# Redis has databases 0-15; 0 is the shared workers' broker.
_broker_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def own_broker(worker: Worker) -> Iterator[None]:
    """A Redis database of its own (emptied first), so that only the test's own workers get
    its tasks: another deployment on the same database, whose work the shared worker's
    sweeper leaves alone (`pgrag.work.broker`)."""
    import redis

    from pgrag.runtime import queue
    from pgrag.runtime import services as svc
    from pgrag.runtime.settings import get_settings

    url = svc.redis_url().rsplit("/", 1)[0] + f"/{next(_broker_dbs)}"
    redis.Redis.from_url(url).flushdb()
    os.environ["PGRAG_REDIS_URL"] = url
    # A deployment name of its own: work that an earlier test left unfinished in this
    # database (reused after fifteen tests) belongs to that test's deployment, which no
    # worker of this test serves or sweeps. Other deployments' work, the shared worker's
    # included, is none of this test's business either.
    os.environ["PGRAG_DEPLOYMENT"] = f"test-{uuid.uuid4().hex[:12]}"
    get_settings.cache_clear()
    queue._client.cache_clear()
    yield
    del os.environ["PGRAG_REDIS_URL"], os.environ["PGRAG_DEPLOYMENT"]
    get_settings.cache_clear()
    queue._client.cache_clear()
