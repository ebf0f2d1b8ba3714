"""Celery workers of pgrag: `celery -A workers.app worker -Q ingest|embed|query`."""
