"""`POST /v1/ingest` queues an ingest job; `GET /v1/jobs/{id}` reports on it."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from pgrag import ingest, jobs
from pgrag.schema import IngestJob

router = APIRouter(tags=["ingest"])


class IngestRequest(BaseModel):
    source: str = Field(
        description="A folder, JSONL, JSON or Parquet file on the server's filesystem"
    )
    collection: str
    create: bool = Field(False, description="Create the collection if it does not exist")
    delete_missing: bool = Field(
        False, description="Remove documents of the collection that are no longer in the source"
    )


class JobError(BaseModel):
    ref: str = Field(description="The document: its path, id or file:line")
    reason: str


class Job(BaseModel):
    id: int
    collection_id: int
    source: str
    state: str = Field(description="queued, running, indexing, done, failed or cancelled")
    docs_total: int | None
    docs_read: int
    docs_done: int
    docs_failed: int
    docs_skipped: int
    docs_deleted: int
    docs_processed: int = Field(description="Documents done, failed or skipped so far")
    chunks_done: int
    chunks_per_s: float | None = Field(
        description="Chunks stored per second since the job started (null before it starts)"
    )
    error: str | None
    recovered: int = Field(
        0, description="Units of work sent again after a lost worker or a lost message"
    )
    last_recovery: str | None = Field(None, description="Why work was last sent again")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    errors: list[JobError] = Field(
        default_factory=list, description="The first per-document errors (see pgrag.ingest_errors)"
    )


ERRORS_SHOWN = 100


def _job(job: IngestJob, with_errors: bool = True) -> Job:
    out = Job.model_validate(job, from_attributes=True)
    out.recovered, out.last_recovery = jobs.job_recoveries(job.id)
    if with_errors:
        out.errors = [
            JobError(ref=e.ref, reason=e.reason) for e in jobs.job_errors(job.id, ERRORS_SHOWN)
        ]
    return out


@router.post(
    "/v1/ingest",
    status_code=202,
    responses={400: {"description": "Bad source path or unknown collection"}},
)
def submit(body: IngestRequest) -> Job:
    """Queue an ingest job; poll `GET /v1/jobs/{id}` for its progress."""
    try:
        job = ingest.submit(
            body.source, body.collection, delete_missing=body.delete_missing, create=body.create
        )
    except (LookupError, ValueError) as e:  # SourceNotFound, UnknownCollection, a bad name
        raise HTTPException(400, str(e).strip("'\"")) from None
    return _job(jobs.get_job(job.id), with_errors=False)


@router.get("/v1/jobs/{job_id}", responses={404: {"description": "Unknown job"}})
def get_job(job_id: int) -> Job:
    """An ingest job's state and counters, with its first per-document errors."""
    try:
        return _job(jobs.get_job(job_id))
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
