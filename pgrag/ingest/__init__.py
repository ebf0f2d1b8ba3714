"""Bulk ingestion: read a source, chunk, embed, load, and the job that drives them
(`pipeline.submit` queues one; `jobs` reads and cancels them)."""
