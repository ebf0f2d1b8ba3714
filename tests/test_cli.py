"""The `pgrag` command tells the truth: its exit status, its errors, and where it reads.

Commands run as a user runs them, in a process of their own, against the real services.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from bench.common import free_port
from pgrag.cli import friendly_errors
from pgrag.ingest import jobs, pipeline
from pgrag.ingest.jobs import UnknownJob
from pgrag.runtime.services import database_url
from tests.conftest import KeyClient, Worker

SERVICE_URLS = ("PGRAG_DATABASE_URL", "PGRAG_REDIS_URL")


def pgrag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`pgrag ARGS` with the test session's environment, changed by `env` (a None value
    removes the variable)."""
    merged = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "pgrag", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in merged.items() if v is not None},
    )


def one_error_line(run: subprocess.CompletedProcess[str]) -> str:
    """The message of a failed command, which must be its one line of stderr."""
    assert run.returncode == 1, (run.stdout, run.stderr)
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    return lines[0].removeprefix("Error: ")


# ---------------------------------------------------------------------------- status


def test_status_fails_naming_both_services_when_nothing_runs(tmp_path: Path) -> None:
    run = pgrag("status", env={"PGRAG_HOME": str(tmp_path), **dict.fromkeys(SERVICE_URLS)})
    assert "postgres  DOWN" in run.stdout and "redis     DOWN" in run.stdout
    assert one_error_line(run) == "postgres and redis down"


def test_status_fails_naming_redis_alone_when_it_is_down(services: Path, tmp_path: Path) -> None:
    env = {
        "PGRAG_HOME": str(tmp_path),
        "PGRAG_DATABASE_URL": database_url(),
        "PGRAG_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    run = pgrag("status", env=env)
    assert "postgres  up" in run.stdout and "redis     DOWN" in run.stdout
    assert one_error_line(run) == "redis down"


def test_status_succeeds_with_the_services_up(services: Path) -> None:
    run = pgrag("status")
    assert run.returncode == 0, run.stderr
    assert "postgres  up" in run.stdout and "redis     up" in run.stdout


# ---------------------------------------------------------------------------- errors


def test_user_errors_are_one_line(services: Path) -> None:
    assert one_error_line(pgrag("jobs", "987654321")) == (
        "ingest job 987654321 does not exist (see `pgrag jobs`)"
    )
    assert "collection 'nope' does not exist" in one_error_line(
        pgrag("search", "valves", "--collection", "nope")
    )
    assert one_error_line(pgrag("keys", "revoke", "nobody")) == "no live API key named 'nobody'"
    assert one_error_line(pgrag("collections", env={"PGRAG_CHUNK_SIZE": "big"})).startswith(
        "PGRAG_CHUNK_SIZE='big': "
    )
    answer = one_error_line(pgrag("answer", "00000000-0000-4000-8000-000000000000"))
    assert answer == "question 00000000-0000-4000-8000-000000000000 does not exist"


def test_a_database_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://pgrag@127.0.0.1:{free_port()}/pgrag?connect_timeout=5"
    run = pgrag("jobs", env={"PGRAG_HOME": str(tmp_path), "PGRAG_DATABASE_URL": url})
    assert one_error_line(run).startswith("cannot reach PostgreSQL: ")


def test_a_bug_keeps_its_traceback() -> None:
    """Only user errors become one line: a KeyError (a bug, though a LookupError) goes on
    with its traceback."""

    @click.command()
    @click.argument("what")
    @friendly_errors
    def command(what: str) -> None:
        if what == "bug":
            print({}["missing"])
        raise UnknownJob(7)

    bug = CliRunner().invoke(command, ["bug"])
    assert isinstance(bug.exception, KeyError) and bug.exit_code == 1
    user = CliRunner().invoke(command, ["user"])
    assert user.exit_code == 1 and not isinstance(user.exception, UnknownJob)
    assert user.output == "Error: ingest job 7 does not exist (see `pgrag jobs`)\n"


# ---------------------------------------------------------------------------- through the API


def api_env(api: str, token: str, home: Path) -> dict[str, str | None]:
    """The CLI pointed at the API, with no local services it could read instead."""
    return {
        "PGRAG_API_URL": api,
        "PGRAG_API_KEY": token,
        "PGRAG_HOME": str(home),
        **dict.fromkeys(SERVICE_URLS),
    }


def test_jobs_and_collections_go_through_the_api(
    api: str, admin: KeyClient, worker: Worker, tmp_path: Path, collection_name: str
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "valves.txt").write_text("Valves are checked every week.")
    home = tmp_path / "nothing-here"
    as_admin = api_env(api, admin.token, home)
    elsewhere = api_env(api, KeyClient(api, ["ingest"], ["elsewhere"]).token, home)
    searcher = api_env(api, KeyClient(api, ["search"], [collection_name]).token, home)
    with worker.frozen():  # the job stays queued until it is cancelled
        job = pipeline.submit(folder, collection_name, create=True)

        listed = pgrag("jobs", env=as_admin)
        assert listed.returncode == 0, listed.stderr
        row = rf"^\s*{job.id}\s+queued\s.*{re.escape(str(folder))}$"
        assert re.search(row, listed.stdout, re.M), listed.stdout
        hidden = pgrag("jobs", env=elsewhere)
        assert hidden.returncode == 0 and not re.search(rf"^\s*{job.id}\s", hidden.stdout, re.M)

        assert collection_name in pgrag("collections", env=as_admin).stdout
        assert collection_name in pgrag("collections", env=searcher).stdout
        assert collection_name not in pgrag("collections", env=elsewhere).stdout

        refused = one_error_line(pgrag("jobs", "cancel", str(job.id), env=elsewhere))
        assert refused.startswith(f"/v1/jobs/{job.id}/cancel: 404 ")
        assert jobs.get_job(job.id).state == "queued"
        cancelled = pgrag("jobs", "cancel", str(job.id), env=as_admin)
        assert cancelled.stdout == f"job {job.id}: cancelled\n", cancelled.stderr
        assert jobs.get_job(job.id).state == "cancelled"

    no_route = one_error_line(pgrag("collections", "create", "x", env=as_admin))
    assert "`pgrag collections create` works on the database itself" in no_route
    assert "PGRAG_API_URL" in no_route


# ---------------------------------------------------------------------------- sql --reader


def test_sql_reader_reads_and_cannot_write(services: Path) -> None:
    """`pgrag sql --reader` is psql in the role pgrag_reader, as docs/security.md says: it
    reads the pgrag schema, writes nothing and cannot read the API keys."""

    def psql(*args: str) -> subprocess.CompletedProcess[str]:
        return pgrag("sql", *args, "-X", "-At", "-v", "ON_ERROR_STOP=1")

    read = psql("--reader", "-c", "select current_user, count(*) from pgrag.collections")
    assert read.returncode == 0, read.stderr
    assert read.stdout.split("|")[0] == "pgrag_reader"
    for statement in ("delete from pgrag.collections", "select * from pgrag.api_keys"):
        refused = psql("--reader", "-c", statement)
        assert refused.returncode != 0 and "permission denied" in refused.stderr
    plain = psql("-c", "select current_user")
    assert plain.returncode == 0 and plain.stdout.strip() != "pgrag_reader"
