"""HTTP API of pgrag (FastAPI): `uvicorn api.app:app`."""
