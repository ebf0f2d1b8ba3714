"""Celery workers of pgrag: `celery -A pgrag.workers.app worker -Q ingest|embed|query`."""
