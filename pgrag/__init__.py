"""pgrag: batch ingestion and queued question answering on PostgreSQL + pgvector."""
