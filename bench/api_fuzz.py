"""Fuzz the HTTP API from its own OpenAPI schema with schemathesis, a key of each scope.

    python bench/api_fuzz.py [--max-examples 100] [--seed 1]

Starts embedded PostgreSQL + Redis, one worker on every queue and the API (uvicorn, as
`pgrag up --api-port` runs it) under a temporary PGRAG_HOME, with a key of each scope
(`pgrag.store.keys.SCOPES`). For each key, schemathesis runs its phases against the API:
the schema's examples, its coverage of every keyword's edges, random fuzzing (valid and
invalid requests) and stateful sequences through the schema's links (`POST /v1/ask` then
`GET /v1/answers/{id}`, a job's `POST` then `GET /v1/jobs/{id}`). Every check runs on every
response: no server error, every status, header, content type and body (each server-sent
event included) as the schema declares, invalid requests refused, valid ones accepted.

Prints requests and failures per operation and key, and writes bench/results/api_fuzz.json.
`tests/test_api_fuzz.py` runs `fuzz()` in the suite, bounded, and fails on any failure.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import schemathesis
from schemathesis.engine import Status
from schemathesis.engine import from_schema as engine_for
from schemathesis.engine.events import (
    FatalError,
    FuzzScenarioFinished,
    NonFatalError,
    ScenarioFinished,
)
from schemathesis.specs.openapi.checks import positive_data_acceptance

from bench.common import (
    ROOT,
    Worker,
    default_out,
    exit_on_sigterm,
    pgrag_home,
    print_table,
    write_json,
)

# Valid requests that the API may still refuse for what a schema cannot say: a server path
# outside PGRAG_SOURCE_ROOTS, a form with no file, a Last-Event-ID of no event of the stream
# (400), a file over the size limit (413), a file type pgrag does not read (415). A 422 for a
# request the schema calls valid stays a failure: the schema and the validation disagree.
# (5xx is not_a_server_error's to judge, as in schemathesis's own list.)
ACCEPTED = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "415", "429", "5xx"]
# Invalid requests must be refused: schemathesis's list, and 413 for a body over its limit.
REFUSED = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


@schemathesis.check
def valid_requests_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's positive_data_acceptance, on requests that are valid in every part.
    Its coverage phase (4.32) sends an optional header it has no valid value for (a pattern
    it cannot generate, as Last-Event-ID's) with an invalid one, in cases it calls valid."""
    if case.meta is not None and any(c.mode.is_negative for c in case.meta.components.values()):
        return None
    return positive_data_acceptance(ctx, response, case)


PHASES = ("examples", "coverage", "fuzzing", "stateful")


def config(
    token: str,
    collection: str | None,
    *,
    max_examples: int,
    seed: int,
    request_timeout: float,
    phases: tuple[str, ...] = PHASES,
) -> schemathesis.Config:
    # Questions use the extractive generator, so that none waits for a local model to load;
    # half the requests name `collection`, so that they reach past "no such collection"
    # (filters, rerank, answers with passages).
    dictionaries: dict[str, Any] = {"generator": {"values": ["extractive"]}}
    parameters: dict[str, Any] = {"body.generator": {"dictionary": "generator"}}
    if collection is not None:
        dictionaries["collection"] = {"values": [collection]}
        for name in ("body.collection", "path.name"):
            parameters[name] = {"dictionary": "collection", "probability": 0.5}
    return schemathesis.Config.from_dict(
        {
            "dictionaries": dictionaries,
            "parameters": parameters,
            "seed": seed,
            "cache": {"enabled": False},  # what a run sees never depends on earlier runs
            "phases": {phase: {"enabled": phase in phases} for phase in PHASES},
            "workers": 1,
            "request-timeout": request_timeout,
            "auth": {"openapi": {"api_key": {"bearer": token}}},
            "generation": {"max-examples": max_examples, "mode": "all", "database": "none"},
            "checks": {
                "positive_data_acceptance": {"enabled": False, "expected-statuses": ACCEPTED},
                "negative_data_rejection": {"expected-statuses": REFUSED},
            },
            "operations": [
                {
                    # rerank=true answers 503 where the reranker's model cannot be loaded,
                    # as with no access to the model hub (the tests' machines).
                    "include-operation-id": "search",
                    "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "4xx", "503"]}},
                }
            ],
        }
    )


@dataclass
class Tally:
    """What one operation got: requests, their statuses, failures by title with a sample."""

    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # title: message and reproduction

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": dict(sorted(self.statuses.items())),
            "failures": dict(self.failures),
            "samples": self.samples,
        }


def fuzz(
    url: str,
    token: str,
    collection: str | None,
    *,
    max_examples: int,
    seed: int,
    request_timeout: float = 30.0,
    phases: tuple[str, ...] = PHASES,
) -> dict[str, Tally]:
    """schemathesis's `phases` against the API at `url` with the key `token`, and the name of
    a `collection` with documents (or None): a Tally per operation ("GET /v1/jobs/{job_id}"),
    and one named "errors" for requests that got no response or could not be made."""
    settings = config(
        token,
        collection,
        max_examples=max_examples,
        seed=seed,
        request_timeout=request_timeout,
        phases=phases,
    )
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=settings)
    tallies: dict[str, Tally] = {}
    for event in engine_for(schema).execute():
        if isinstance(event, ScenarioFinished | FuzzScenarioFinished):
            recorder = event.recorder
            for case_id, node in recorder.cases.items():
                tally = tallies.setdefault(node.value.operation.label, Tally())
                interaction = recorder.interactions.get(case_id)
                if interaction is None:
                    continue
                tally.requests += 1
                if interaction.response is not None:
                    tally.statuses[interaction.response.status_code] += 1
                for check in recorder.checks.get(case_id, []):
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        failure = check.failure_info.failure
                        tally.failures[failure.title] += 1
                        tally.samples.setdefault(
                            failure.title,
                            f"{failure.message}\n{check.failure_info.code_sample}",
                        )
        elif isinstance(event, NonFatalError):
            errors = tallies.setdefault("errors", Tally())
            title = f"{event.label}: {type(event.value).__name__}"
            errors.failures[title] += 1
            errors.samples.setdefault(title, str(event.value))
        elif isinstance(event, FatalError):
            raise event.exception
    return tallies


def failures(tallies: dict[str, Tally]) -> list[str]:
    """Each failure found, with its sample: an empty list when there is none."""
    return [
        f"{label}: {title} (x{count})\n{tally.samples[title]}"
        for label, tally in tallies.items()
        for title, count in tally.failures.items()
    ]


# ---------------------------------------------------------------------------- the bench


@contextmanager
def api_server(home: Path, env: dict[str, str]) -> Iterator[str]:
    """The API as `pgrag up --api-port` serves it, with `env`; its URL."""
    from pgrag.runtime import processes

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with open(home / "api.log", "ab") as log:
        proc = subprocess.Popen(
            processes.api(port).argv, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a busy machine takes its time to import torch
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start: {(home / 'api.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # uvicorn waits for open event streams: not for long
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def sample_collection() -> str:
    """The sample corpus (examples/corpus), ingested into a collection; its name."""
    from pgrag.ingest import jobs, pipeline

    job = pipeline.submit(ROOT / "examples" / "corpus", "fuzz_corpus", create=True)
    while not (job := jobs.get_job(job.id)).finished:
        time.sleep(0.5)
    if job.state != "done":
        raise RuntimeError(f"the sample corpus did not load: {job.error}")
    return "fuzz_corpus"


def main() -> None:
    from pgrag.store import keys

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=100, help="per operation and phase")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    exit_on_sigterm()
    results: dict[str, dict[str, Tally]] = {}
    seconds: dict[str, float] = {}
    with pgrag_home() as home:
        worker = Worker(home, "ingest,embed,query")
        try:
            worker.wait_ready(300)
            collection = sample_collection()
            # Server folders it may ingest: the sample corpus (uploads go to PGRAG_HOME).
            env = {**os.environ, "PGRAG_SOURCE_ROOTS": str(ROOT / "examples")}
            with api_server(home.path, env) as url:
                for scope in keys.SCOPES:
                    _, token = keys.create_key(f"fuzz-{scope}", [scope])
                    started = time.perf_counter()
                    results[scope] = fuzz(
                        url, token, collection, max_examples=args.max_examples, seed=args.seed
                    )
                    seconds[scope] = round(time.perf_counter() - started, 1)
        finally:
            worker.stop()
    rows = [
        [scope, label, t.requests, sum(t.failures.values()), ", ".join(t.failures) or "-"]
        for scope, tallies in results.items()
        for label, t in sorted(tallies.items())
    ]
    print_table(
        f"schemathesis {schemathesis.__version__}, --max-examples {args.max_examples},"
        f" seed {args.seed}: requests and failures per key and operation",
        rows,
        ["key", "operation", "requests", "failures", "kinds"],
    )
    path = write_json(
        args.out or default_out("api_fuzz"),
        "api_fuzz",
        {
            "schemathesis": schemathesis.__version__,
            "max_examples": args.max_examples,
            "seed": args.seed,
            "seconds": seconds,
            "results": {
                scope: {label: t.as_dict() for label, t in tallies.items()}
                for scope, tallies in results.items()
            },
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
