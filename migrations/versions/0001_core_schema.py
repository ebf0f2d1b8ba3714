"""Core schema: collections, documents, chunks, lexical postings, ingest jobs and errors.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS pgrag;
COMMENT ON SCHEMA pgrag IS 'pgrag: documents, their embedded chunks, ingest jobs and questions.';

CREATE TABLE pgrag.collections (
    id              serial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.-]{1,64}$'),
    model           text NOT NULL,
    dim             integer NOT NULL CHECK (dim BETWEEN 1 AND 16000),
    chunk_size      integer NOT NULL CHECK (chunk_size > 0),
    chunk_overlap   integer NOT NULL CHECK (chunk_overlap >= 0 AND chunk_overlap < chunk_size),
    prepend_title   boolean NOT NULL DEFAULT true,
    text_config     regconfig NOT NULL DEFAULT 'english',
    hnsw_m          integer NOT NULL DEFAULT 16,
    hnsw_ef_construction integer NOT NULL DEFAULT 64,
    lexical_chunks  bigint NOT NULL DEFAULT 0,
    lexical_avg_len double precision NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgrag.collections IS 'A named set of documents embedded with one model; each has its own HNSW index.';
COMMENT ON COLUMN pgrag.collections.id IS 'Collection id.';
COMMENT ON COLUMN pgrag.collections.name IS 'Unique name used by the CLI and API (letters, digits, _ . -).';
COMMENT ON COLUMN pgrag.collections.model IS 'Embedding model: a hub id or a local path (sentence-transformers).';
COMMENT ON COLUMN pgrag.collections.dim IS 'Dimension of the model''s embeddings; every chunk embedding has it.';
COMMENT ON COLUMN pgrag.collections.chunk_size IS 'Maximum chunk length in tokens of the model''s tokenizer.';
COMMENT ON COLUMN pgrag.collections.chunk_overlap IS 'Tokens of the previous chunk repeated at the start of the next.';
COMMENT ON COLUMN pgrag.collections.prepend_title IS 'Whether the document title is embedded with each chunk.';
COMMENT ON COLUMN pgrag.collections.text_config IS 'Text search configuration for lexical (BM25) recall.';
COMMENT ON COLUMN pgrag.collections.hnsw_m IS 'HNSW m: links per node.';
COMMENT ON COLUMN pgrag.collections.hnsw_ef_construction IS 'HNSW ef_construction: candidate list size while building.';
COMMENT ON COLUMN pgrag.collections.lexical_chunks IS 'BM25 statistic N: chunks in the lexical index (refreshed when a job ends).';
COMMENT ON COLUMN pgrag.collections.lexical_avg_len IS 'BM25 statistic avgdl: mean lexeme count per chunk (refreshed when a job ends).';
COMMENT ON COLUMN pgrag.collections.created_at IS 'When the collection was created.';

CREATE TABLE pgrag.ingest_jobs (
    id              bigserial PRIMARY KEY,
    collection_id   integer NOT NULL REFERENCES pgrag.collections(id) ON DELETE CASCADE,
    source          text NOT NULL,
    options         jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'running', 'indexing', 'done', 'failed', 'cancelled')),
    source_done     boolean NOT NULL DEFAULT false,
    docs_total      bigint,
    docs_read       bigint NOT NULL DEFAULT 0,
    docs_done       bigint NOT NULL DEFAULT 0,
    docs_failed     bigint NOT NULL DEFAULT 0,
    docs_skipped    bigint NOT NULL DEFAULT 0,
    docs_deleted    bigint NOT NULL DEFAULT 0,
    chunks_done     bigint NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE pgrag.ingest_jobs IS 'One ingestion run of a source into a collection, with live counters.';
COMMENT ON COLUMN pgrag.ingest_jobs.id IS 'Job id.';
COMMENT ON COLUMN pgrag.ingest_jobs.collection_id IS 'Collection the source is loaded into.';
COMMENT ON COLUMN pgrag.ingest_jobs.source IS 'Absolute path of the source folder or file.';
COMMENT ON COLUMN pgrag.ingest_jobs.options IS 'Job options, e.g. {"delete_missing": true}.';
COMMENT ON COLUMN pgrag.ingest_jobs.state IS 'queued, running, indexing (building the index), done, failed or cancelled.';
COMMENT ON COLUMN pgrag.ingest_jobs.source_done IS 'True once the reader has read the whole source.';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_total IS 'Documents in the source when cheaply known in advance, else set when reading ends.';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_read IS 'Documents (and bad entries) read from the source so far.';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_done IS 'Documents chunked, embedded and loaded.';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_failed IS 'Documents that failed, each with a row in pgrag.ingest_errors.';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_skipped IS 'Documents unchanged since they were last loaded (same content hash).';
COMMENT ON COLUMN pgrag.ingest_jobs.docs_deleted IS 'Documents removed because they are no longer in the source (--delete-missing).';
COMMENT ON COLUMN pgrag.ingest_jobs.chunks_done IS 'Chunks embedded and loaded.';
COMMENT ON COLUMN pgrag.ingest_jobs.error IS 'Why the job failed, when it did.';
COMMENT ON COLUMN pgrag.ingest_jobs.created_at IS 'When the job was submitted.';
COMMENT ON COLUMN pgrag.ingest_jobs.started_at IS 'When a worker started reading the source.';
COMMENT ON COLUMN pgrag.ingest_jobs.finished_at IS 'When the job reached done, failed or cancelled.';
COMMENT ON COLUMN pgrag.ingest_jobs.updated_at IS 'Last change of state or counters.';

CREATE TABLE pgrag.documents (
    id              bigserial PRIMARY KEY,
    collection_id   integer NOT NULL REFERENCES pgrag.collections(id) ON DELETE CASCADE,
    external_id     text NOT NULL,
    title           text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    content_hash    bytea NOT NULL,
    text            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'embedded', 'failed')),
    chunk_count     integer NOT NULL DEFAULT 0,
    job_id          bigint REFERENCES pgrag.ingest_jobs(id) ON DELETE SET NULL,
    seen_job_id     bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, external_id)
);
CREATE INDEX documents_pending_idx ON pgrag.documents (job_id) WHERE status = 'pending';
COMMENT ON TABLE pgrag.documents IS 'Source documents, one row per stable external id in a collection.';
COMMENT ON COLUMN pgrag.documents.id IS 'Document id.';
COMMENT ON COLUMN pgrag.documents.collection_id IS 'Collection the document belongs to.';
COMMENT ON COLUMN pgrag.documents.external_id IS 'Stable id from the source: relative path, or the id/_id field of a row.';
COMMENT ON COLUMN pgrag.documents.title IS 'Title from the source, if any.';
COMMENT ON COLUMN pgrag.documents.metadata IS 'Metadata from the source; chunks carry a copy for filtered search.';
COMMENT ON COLUMN pgrag.documents.content_hash IS 'SHA-256 of title, text and metadata: unchanged documents are skipped on re-ingest.';
COMMENT ON COLUMN pgrag.documents.text IS 'Full extracted text.';
COMMENT ON COLUMN pgrag.documents.status IS 'pending (waiting for the embed worker), embedded or failed.';
COMMENT ON COLUMN pgrag.documents.chunk_count IS 'Number of chunks loaded for the document.';
COMMENT ON COLUMN pgrag.documents.job_id IS 'Job that last (re)loaded the document.';
COMMENT ON COLUMN pgrag.documents.seen_job_id IS 'Last job whose source contained the document.';
COMMENT ON COLUMN pgrag.documents.created_at IS 'When the document was first loaded.';
COMMENT ON COLUMN pgrag.documents.updated_at IS 'When the document last changed.';

CREATE TABLE pgrag.chunks (
    id              bigserial PRIMARY KEY,
    collection_id   integer NOT NULL,
    document_id     bigint NOT NULL REFERENCES pgrag.documents(id) ON DELETE CASCADE,
    ord             integer NOT NULL,
    text            text NOT NULL,
    start_char      integer NOT NULL,
    end_char        integer NOT NULL,
    token_count     integer NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}',
    embedding       vector NOT NULL,
    UNIQUE (document_id, ord)
);
CREATE INDEX chunks_collection_idx ON pgrag.chunks (collection_id);
COMMENT ON TABLE pgrag.chunks IS 'Token-sized pieces of documents with their embeddings. Each collection has a partial HNSW index chunks_hnsw_<collection id> on embedding::vector(dim).';
COMMENT ON COLUMN pgrag.chunks.id IS 'Chunk id.';
COMMENT ON COLUMN pgrag.chunks.collection_id IS 'Collection of the chunk''s document (kept here so each collection has its own partial index).';
COMMENT ON COLUMN pgrag.chunks.document_id IS 'Document the chunk was cut from.';
COMMENT ON COLUMN pgrag.chunks.ord IS '0-based position of the chunk in its document.';
COMMENT ON COLUMN pgrag.chunks.text IS 'The chunk: the span [start_char, end_char) of the document text.';
COMMENT ON COLUMN pgrag.chunks.start_char IS 'Start offset of the chunk in the document text.';
COMMENT ON COLUMN pgrag.chunks.end_char IS 'End offset (exclusive) of the chunk in the document text.';
COMMENT ON COLUMN pgrag.chunks.token_count IS 'Tokens of the chunk text in the model''s tokenizer (title and special tokens excluded).';
COMMENT ON COLUMN pgrag.chunks.metadata IS 'Copy of the document metadata, for filtered search.';
COMMENT ON COLUMN pgrag.chunks.embedding IS 'L2-normalised embedding of the title and chunk text (vector of the collection''s dim).';

CREATE TABLE pgrag.postings (
    collection_id   integer NOT NULL,
    lexeme          text NOT NULL,
    chunk_id        bigint NOT NULL REFERENCES pgrag.chunks(id) ON DELETE CASCADE,
    tf              integer NOT NULL,
    chunk_len       integer NOT NULL,
    -- INCLUDE makes the BM25 read of a posting list index-only.
    PRIMARY KEY (collection_id, lexeme, chunk_id) INCLUDE (tf, chunk_len)
);
CREATE INDEX postings_chunk_idx ON pgrag.postings (chunk_id);
COMMENT ON TABLE pgrag.postings IS 'Inverted index for BM25: one row per (lexeme, chunk) from to_tsvector(collection text_config, title || text).';
COMMENT ON COLUMN pgrag.postings.collection_id IS 'Collection of the chunk.';
COMMENT ON COLUMN pgrag.postings.lexeme IS 'Normalised lexeme (stemmed, stop words removed).';
COMMENT ON COLUMN pgrag.postings.chunk_id IS 'Chunk containing the lexeme.';
COMMENT ON COLUMN pgrag.postings.tf IS 'Occurrences of the lexeme in the chunk.';
COMMENT ON COLUMN pgrag.postings.chunk_len IS 'Lexeme occurrences in the whole chunk (BM25 document length).';

CREATE TABLE pgrag.lexemes (
    collection_id   integer NOT NULL REFERENCES pgrag.collections(id) ON DELETE CASCADE,
    lexeme          text NOT NULL,
    df              bigint NOT NULL,
    PRIMARY KEY (collection_id, lexeme)
);
COMMENT ON TABLE pgrag.lexemes IS 'BM25 document frequencies per lexeme (refreshed when an ingest job ends).';
COMMENT ON COLUMN pgrag.lexemes.collection_id IS 'Collection.';
COMMENT ON COLUMN pgrag.lexemes.lexeme IS 'Normalised lexeme.';
COMMENT ON COLUMN pgrag.lexemes.df IS 'Number of chunks of the collection containing the lexeme.';

CREATE TABLE pgrag.ingest_errors (
    id              bigserial PRIMARY KEY,
    job_id          bigint NOT NULL REFERENCES pgrag.ingest_jobs(id) ON DELETE CASCADE,
    ref             text NOT NULL,
    reason          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, ref)
);
COMMENT ON TABLE pgrag.ingest_errors IS 'One row per document that a job could not load, with the reason.';
COMMENT ON COLUMN pgrag.ingest_errors.id IS 'Error id.';
COMMENT ON COLUMN pgrag.ingest_errors.job_id IS 'Job that met the error.';
COMMENT ON COLUMN pgrag.ingest_errors.ref IS 'What failed: a path relative to the source, file:line, or an external id.';
COMMENT ON COLUMN pgrag.ingest_errors.reason IS 'Why it failed, in words.';
COMMENT ON COLUMN pgrag.ingest_errors.created_at IS 'When the error was recorded.';
"""

DOWNGRADE = """
DROP SCHEMA pgrag CASCADE;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
