"""The web console's routes (mounted at /console, see `api/console`): page shells, the HTML
parts that htmx loads into them, and the data of the embedding map.

Shells (`/`, `/jobs`, `/ask`, `/search`, `/map`, `/keys`) need no key and hold no data. Every
part needs the key that the browser sends, with the scope of its page (jobs: ingest, ask:
ask, search and map: search, keys: admin), and shows only the collections the key may use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates

from pgrag.inference.rerank import RerankerUnavailable
from pgrag.ingest import jobs
from pgrag.query.retrieval import retrieve
from pgrag.store import embedding_map, inspection, keys
from pgrag.store.collections import get_collection, list_collections
from pgrag.store.schema import ApiKey

from ..auth import check_collection, requires, signed_in

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent.parent / "console" / "templates")

AnyKey = Annotated[ApiKey, Depends(signed_in)]
IngestKey = Annotated[ApiKey, Depends(requires("ingest"))]
AskKey = Annotated[ApiKey, Depends(requires("ask"))]
SearchKey = Annotated[ApiKey, Depends(requires("search"))]
AdminKey = Annotated[ApiKey, Depends(requires("admin"))]

# page -> (title, the scope its part needs; None: any key)
PAGES: dict[str, tuple[str, str | None]] = {
    "collections": ("Collections", None),
    "jobs": ("Jobs", "ingest"),
    "ask": ("Ask", "ask"),
    "search": ("Search", "search"),
    "map": ("Map", "search"),
    "keys": ("Keys", "admin"),
}
CONSOLE_PATH = "/console"  # where api/app.py mounts the console
STAGES = ("dense", "lexical", "fused", "rerank")
JOBS_SHOWN = 30
ERRORS_SHOWN = 100
NEIGHBOURS = 8


def _render(request: Request, template: str, **context: Any) -> HTMLResponse:
    # The console's own root (where it is mounted) and the API's, for links and fetches.
    base = request.scope.get("root_path", "")
    context.update(base=base, api=base.removesuffix(CONSOLE_PATH))
    return templates.TemplateResponse(request, template, context)


def _visible(key: ApiKey) -> list[str]:
    """The names of the collections the key may use."""
    return [c.name for c in list_collections() if key.sees(c.name)]


def _shell(request: Request, page: str) -> HTMLResponse:
    return _render(request, "shell.html", page=page, title=PAGES[page][0])


@router.get("/")
def home(request: Request) -> HTMLResponse:
    return _shell(request, "collections")


@router.get("/{page}")
def page(request: Request, page: str) -> HTMLResponse:
    if page not in PAGES:
        raise HTTPException(404, "no such page")
    return _shell(request, page)


@router.get("/parts/nav")
def nav(request: Request, key: AnyKey) -> HTMLResponse:
    pages = [
        (name, title) for name, (title, scope) in PAGES.items() if not scope or key.allows(scope)
    ]
    return _render(request, "nav.html", pages=pages, key=key)


# ---------------------------------------------------------------------------- collections


@router.get("/parts/collections")
def collections(request: Request, key: AnyKey) -> HTMLResponse:
    stats = inspection.collection_stats(key.collections)
    return _render(request, "collections.html", stats=stats, key=key)


@router.get("/parts/collections/{name}/health")
def health(request: Request, name: str, key: AnyKey) -> HTMLResponse:
    check_collection(key, name)
    try:
        rows = inspection.embedding_health(name)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    return _render(request, "health.html", rows=rows)


# ---------------------------------------------------------------------------- jobs


@router.get("/parts/jobs")
def jobs_page(request: Request, key: IngestKey, job: int | None = None) -> HTMLResponse:
    return _render(request, "jobs.html", job=job)


@router.get("/parts/jobs/table")
def jobs_table(request: Request, key: IngestKey) -> HTMLResponse:
    rows = inspection.job_progress(key.collections, JOBS_SHOWN)
    return _render(request, "jobs_table.html", rows=rows)


def _visible_job(key: ApiKey, job_id: int) -> dict[str, Any]:
    """The job_progress row of a job the key may see; 404 otherwise, as for an unknown job."""
    rows = inspection.job_progress(key.collections, 1, job_id)
    if not rows:
        raise HTTPException(404, str(jobs.UnknownJob(job_id)))
    return rows[0]


@router.get("/parts/jobs/{job_id}")
def job_detail(request: Request, job_id: int, key: IngestKey) -> HTMLResponse:
    job = _visible_job(key, job_id)
    errors = jobs.job_errors(job_id, ERRORS_SHOWN)
    return _render(request, "job.html", job=job, errors=errors)


@router.post("/parts/jobs/{job_id}/cancel")
def cancel(request: Request, job_id: int, key: IngestKey) -> HTMLResponse:
    _visible_job(key, job_id)
    jobs.cancel_job(job_id)
    return job_detail(request, job_id, key)


# ---------------------------------------------------------------------------- ask and search


@router.get("/parts/ask")
def ask(request: Request, key: AskKey) -> HTMLResponse:
    return _render(request, "ask.html", collections=_visible(key), key=key)


@router.get("/parts/search")
def search_page(request: Request, key: SearchKey) -> HTMLResponse:
    return _render(request, "search.html", collections=_visible(key))


@router.get("/parts/search/results")
def search_results(
    request: Request,
    key: SearchKey,
    query: Annotated[str, Query(min_length=1, max_length=10_000)],
    collection: str,
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    filters: str = "",
    rerank: bool = False,
) -> HTMLResponse:
    check_collection(key, collection)
    try:
        found = retrieve(
            get_collection(collection),
            query,
            k=k,
            mode="hybrid",
            filters=[f.strip() for f in filters.splitlines() if f.strip()],
            rerank=rerank,
        )
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    except (ValueError, RerankerUnavailable) as e:
        return _render(request, "search_results.html", error=str(e), stages={}, timings={})
    stages = {s: found.stages[s] for s in STAGES if s in found.stages}
    return _render(request, "search_results.html", stages=stages, timings=found.timings)


# ---------------------------------------------------------------------------- map


@router.get("/parts/map")
def map_page(request: Request, key: SearchKey) -> HTMLResponse:
    return _render(request, "map.html", collections=_visible(key))


def _map(key: ApiKey, collection: str) -> embedding_map.ChunkMap:
    check_collection(key, collection)
    try:
        return embedding_map.chunk_map(get_collection(collection))
    except LookupError as e:
        raise HTTPException(404, str(e)) from None


@router.get("/data/map/{collection}")
def map_meta(collection: str, key: SearchKey) -> JSONResponse:
    """The map's documents, near-duplicate pairs and outliers, and its cost."""
    cmap = _map(key, collection)
    return JSONResponse(
        {
            "points": len(cmap.chunk_ids),
            "total": cmap.total,
            "documents": cmap.documents,
            "duplicates": cmap.duplicates,
            "duplicates_looked_for": cmap.duplicates_looked_for,
            "duplicates_max_chunks": embedding_map.DUPLICATES_MAX_CHUNKS,
            "outliers": cmap.outliers,
            "seconds": cmap.seconds,
        }
    )


@router.get("/data/map/{collection}/points")
def map_points(collection: str, key: SearchKey) -> Response:
    return Response(_map(key, collection).to_bytes(), media_type="application/octet-stream")


@router.get("/data/map/{collection}/colors")
def map_colors(collection: str, key: SearchKey, by: str, field: str = "") -> JSONResponse:
    try:
        labels, groups = embedding_map.color_groups(_map(key, collection), by, field)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return JSONResponse({"labels": labels, "groups": groups})


@router.get("/parts/chunks/{chunk_id}")
def chunk(request: Request, chunk_id: int, key: SearchKey) -> HTMLResponse:
    try:
        row = inspection.chunk(chunk_id)
        if not key.sees(row["collection"]):
            raise inspection.UnknownChunk(chunk_id)  # the same 404 as a wrong id
        near = inspection.neighbors(chunk_id, NEIGHBOURS)
    except LookupError as e:
        raise HTTPException(404, str(e)) from None
    return _render(request, "chunk.html", chunk=row, neighbors=near)


# ---------------------------------------------------------------------------- keys


@router.get("/parts/keys")
def keys_page(request: Request, key: AdminKey) -> HTMLResponse:
    return _render(request, "keys.html", keys=keys.list_keys())
