"""HTTP API of pgrag (FastAPI): `uvicorn pgrag.api.app:app`."""
