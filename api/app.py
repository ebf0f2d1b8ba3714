"""The HTTP API: `uvicorn pgrag.api.app:app` (or `pgrag up --api-port 8080`).

Routes are grouped by resource in `api/routes/` and stay thin: they parse the request, call
a `pgrag` function and shape its result. Every route but /healthz needs an API key
(`api/auth.py`, docs/security.md); request bodies are bounded (`api/limits.py`). OpenAPI
docs are served at /docs, and the web console at /console (`api/console`).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from pgrag.runtime.services import ServiceError

from .console import create_console
from .limits import BodyLimit
from .routes import answers, collections, health, ingest, search
from .routes.console import CONSOLE_PATH


def create_app() -> FastAPI:
    app = FastAPI(
        title="pgrag",
        version="0.1.0",
        description="Ingest documents into PostgreSQL + pgvector and answer questions over "
        "them: queued questions whose answers stream back as server-sent events.",
    )
    for module in (answers, search, ingest, collections, health):
        app.include_router(module.router)
    app.mount(CONSOLE_PATH, create_console())  # the web console (docs/console.md)

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{CONSOLE_PATH}/")
    app.add_middleware(BodyLimit)

    @app.exception_handler(ServiceError)
    async def service_unavailable(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    return app


app = create_app()
