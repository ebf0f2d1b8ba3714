"""Ingest jobs: of uploaded documents (`POST /v1/collections/{name}/documents`) or of a
server folder under PGRAG_SOURCE_ROOTS (`POST /v1/ingest`); `GET /v1/jobs/{id}` reports on
one, `GET /v1/jobs` lists them and `POST /v1/jobs/{id}/cancel` cancels one. All need a key
with the ingest scope, and see only the jobs of the key's collections."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field, StrictBool
from starlette.concurrency import run_in_threadpool

from pgrag.ingest import jobs, pipeline, uploads
from pgrag.ingest.sources import allowed_path
from pgrag.runtime.settings import get_settings
from pgrag.store.collections import get_collection_by_id, list_collections
from pgrag.store.schema import ApiKey, IngestJob

from ..auth import KEY_REFUSALS, RATE_LIMITED, check_collection, rate_limit, requires
from ..validation import BODY_REFUSALS, CollectionName, JobId, PathText, refusal

IngestKey = Annotated[ApiKey, Depends(requires("ingest"))]

router = APIRouter(tags=["ingest"], responses=KEY_REFUSALS)


class IngestRequest(BaseModel):
    source: PathText = Field(
        description="A folder, JSONL, JSON or Parquet file on the server, under one of its "
        "PGRAG_SOURCE_ROOTS (none by default: upload documents instead)"
    )
    collection: CollectionName
    create: StrictBool = Field(False, description="Create the collection if it does not exist")
    delete_missing: StrictBool = Field(
        False, description="Remove documents of the collection that are no longer in the source"
    )


class JobError(BaseModel):
    ref: str = Field(description="The document: its path, id or file:line")
    reason: str


class Job(BaseModel):
    id: int
    collection_id: int
    collection: str = Field("", description="The collection's name")
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
        0, description="Times the job's work was sent again after a lost worker or message"
    )
    recoveries: dict[str, int] = Field(
        default_factory=dict,
        description='Those times per reason ("lease expired", "message lost")',
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    errors: list[JobError] = Field(
        default_factory=list, description="The first per-document errors (see pgrag.ingest_errors)"
    )


ERRORS_SHOWN = 100


def _job(job: IngestJob, collection: str, with_errors: bool = True) -> Job:
    out = Job.model_validate(job, from_attributes=True)
    out.collection = collection
    out.recoveries = jobs.job_recoveries(job.id)
    out.recovered = sum(out.recoveries.values())
    if with_errors:
        out.errors = [
            JobError(ref=e.ref, reason=e.reason) for e in jobs.job_errors(job.id, ERRORS_SHOWN)
        ]
    return out


def _queue(source: Path, collection: str, *, create: bool, delete_missing: bool) -> Job:
    try:
        job = pipeline.submit(source, collection, delete_missing=delete_missing, create=create)
    except (LookupError, ValueError) as e:  # SourceNotFound, UnknownCollection, a bad name
        raise HTTPException(400, str(e).strip("'\"")) from None
    return _job(jobs.get_job(job.id), collection, with_errors=False)


# Where a job that a request queued can be followed: `GET /v1/jobs/{id}`.
JOB_LINK = {
    "links": {
        "job": {
            "operationId": "get_job",
            "parameters": {"job_id": "$response.body#/id"},
            "description": "The job's progress",
        }
    }
}


@router.post(
    "/v1/ingest",
    status_code=202,
    responses={
        202: JOB_LINK,
        **BODY_REFUSALS,
        400: refusal("A path outside PGRAG_SOURCE_ROOTS, a bad source or an unknown collection"),
        404: refusal("A collection this key may not use"),
        **RATE_LIMITED,
    },
)
def submit(body: IngestRequest, key: IngestKey) -> Job:
    """Queue an ingest job of a server folder or file; poll `GET /v1/jobs/{id}`."""
    check_collection(key, body.collection)
    try:
        source = allowed_path(body.source, get_settings().source_root_paths)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    rate_limit(key, "ingest")
    return _queue(source, body.collection, create=body.create, delete_missing=body.delete_missing)


# The media types of a body that is one JSONL or Parquet file, and the name it is stored as.
BODY_FILES = {
    "application/x-ndjson": "documents.jsonl",
    "application/jsonl": "documents.jsonl",
    "application/vnd.apache.parquet": "documents.parquet",
    "application/x-parquet": "documents.parquet",
}
UPLOAD_BODY = {
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                },
            }
        },
        **{media: {"schema": {"type": "string", "format": "binary"}} for media in BODY_FILES},
    }
}


@router.post(
    "/v1/collections/{name}/documents",
    status_code=202,
    openapi_extra={"requestBody": UPLOAD_BODY},
    responses={
        202: JOB_LINK,
        400: refusal("Unknown collection (without create), no files, or a malformed form"),
        404: refusal("A collection this key may not use"),
        413: refusal("The request or one file is over its size limit"),
        415: refusal("A file type or body media type that pgrag does not read"),
        **RATE_LIMITED,
    },
)
async def upload(
    name: CollectionName,
    request: Request,
    key: IngestKey,
    create: bool = False,
    delete_missing: bool = False,
) -> Job:
    """Upload documents and queue their ingest job: multipart files (txt, md, html, pdf,
    json, jsonl, parquet; any field name), or a body that is one JSONL
    (application/x-ndjson) or Parquet (application/vnd.apache.parquet) file. Client file
    names are used as names only, never as paths."""
    check_collection(key, name)
    await run_in_threadpool(rate_limit, key, "ingest")
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    folder = await run_in_threadpool(uploads.new_folder)
    try:
        if media == "multipart/form-data":
            source = folder
            await _save_files(request, folder)
        elif media in BODY_FILES:
            source = folder / BODY_FILES[media]
            await uploads.save_stream(request.stream(), source)
        else:
            raise uploads.UploadRefused(
                f"send multipart/form-data files or one of {', '.join(BODY_FILES)}", 415
            )
        return await run_in_threadpool(
            _queue, source, name, create=create, delete_missing=delete_missing
        )
    except uploads.UploadRefused as e:
        uploads.discard(folder)
        raise HTTPException(e.status, str(e)) from None
    except BaseException:
        uploads.discard(folder)
        raise


async def _save_files(request: Request, folder: Path) -> None:
    # The multipart parser spools each file to a temporary file as it arrives (in memory up
    # to 1 MiB), so no upload is ever held whole in memory.
    async with request.form(max_files=10_000, max_fields=100) as form:
        files = [v for _, v in form.multi_items() if not isinstance(v, str)]
        if not files:
            raise uploads.UploadRefused("no files in the form")
        for file in files:
            dest = uploads.destination(folder, file.filename)
            await run_in_threadpool(uploads.copy_file, file.file, dest)


def _visible_job(job_id: int, key: ApiKey) -> tuple[IngestJob, str]:
    """The job and its collection's name; 404 when there is no such job or the key may not
    use its collection."""
    try:
        job = jobs.get_job(job_id)
        collection = get_collection_by_id(job.collection_id).name
        if not key.sees(collection):
            raise jobs.UnknownJob(job_id)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    return job, collection


@router.get("/v1/jobs/{job_id}", responses={404: refusal("Unknown job")})
def get_job(job_id: JobId, key: IngestKey) -> Job:
    """An ingest job's state and counters, with its first per-document errors."""
    return _job(*_visible_job(job_id, key))


@router.get("/v1/jobs")
def list_jobs(key: IngestKey, limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> list[Job]:
    """The latest ingest jobs of the collections this key may use, newest first (without
    their per-document errors: `GET /v1/jobs/{id}` has them)."""
    names = {c.id: c.name for c in list_collections()}
    return [
        _job(job, names[job.collection_id], with_errors=False)
        for job in jobs.list_jobs(limit, key.collections)
    ]


@router.post("/v1/jobs/{job_id}/cancel", responses={404: refusal("Unknown job")})
def cancel_job(job_id: JobId, key: IngestKey) -> Job:
    """Cancel a job that has not finished: its workers skip the work that remains. A
    finished job is left as it is."""
    _, collection = _visible_job(job_id, key)
    return _job(jobs.cancel_job(job_id), collection)
