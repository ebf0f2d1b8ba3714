"""Inspection from psql: views and functions over the store, and a read-only role.

Views: collection_stats, job_progress, ingest_error_log, query_log.
Functions: neighbors, similar_to_query, nearest_chunks, knn_sql, duplicates, recall_audit,
embedding_health, collection_by_name, json_number.
Role: pgrag_reader (NOLOGIN) may read all of the above and the tables, and write nothing.

Every search goes through the collection's partial HNSW index `chunks_hnsw_<id>`: the
planner uses it only for `ORDER BY embedding::vector(<dim>) <=> q` under
`WHERE collection_id = <id>` with both numbers as constants, so the searching functions build
their statement with format() from the integers of the collection row (never from user text)
and pass every value as a parameter (EXECUTE ... USING).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- ---------------------------------------------------------------------------- helpers

CREATE FUNCTION pgrag.json_number(value jsonb) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN jsonb_typeof(value) = 'number' THEN value::double precision END;
COMMENT ON FUNCTION pgrag.json_number(jsonb) IS
    'The value as a double precision when it is a JSON number, else NULL (never an error).';

CREATE FUNCTION pgrag.collection_by_name(collection text) RETURNS pgrag.collections
LANGUAGE plpgsql STABLE AS $$
DECLARE
    result pgrag.collections;
BEGIN
    SELECT c.* INTO result FROM pgrag.collections c WHERE c.name = collection_by_name.collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'collection "%" does not exist', collection
            USING ERRCODE = 'no_data_found', HINT = 'select name from pgrag.collections';
    END IF;
    RETURN result;
END
$$;
COMMENT ON FUNCTION pgrag.collection_by_name(text) IS
    'The collections row of a collection name; raises a clear error for an unknown name.';

CREATE FUNCTION pgrag.knn_sql(collection_id integer) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    d integer;
BEGIN
    SELECT c.dim INTO d FROM pgrag.collections c WHERE c.id = knn_sql.collection_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'collection id % does not exist', collection_id
            USING ERRCODE = 'no_data_found';
    END IF;
    -- Only integers of the collection row are spliced in; the query vector ($1), k ($2) and
    -- the chunk to leave out ($3) are parameters.
    RETURN format(
        'SELECT c.id AS chunk_id, c.embedding::vector(%1$s) <=> $1 AS distance'
        ' FROM pgrag.chunks c'
        ' WHERE c.collection_id = %2$s AND c.id IS DISTINCT FROM $3'
        ' ORDER BY c.embedding::vector(%1$s) <=> $1'
        ' LIMIT $2',
        d, collection_id);
END
$$;
COMMENT ON FUNCTION pgrag.knn_sql(integer) IS
    'The k-NN statement that nearest_chunks runs for a collection, with parameters $1 (query '
    'vector), $2 (k) and $3 (a chunk id to leave out, or NULL): its ORDER BY matches the '
    'partial HNSW index chunks_hnsw_<id>. To see its plan: PREPARE knn(vector, integer, bigint)'
    ' AS <this text>; EXPLAIN EXECUTE knn(''[...]'', 10, NULL).';

-- ---------------------------------------------------------------------------- k-NN search

CREATE FUNCTION pgrag.nearest_chunks(
    collection_id integer, embedding vector, k integer DEFAULT 10, exclude_chunk bigint DEFAULT NULL
) RETURNS TABLE (
    rank integer, chunk_id bigint, document_id bigint, external_id text, title text,
    ord integer, distance double precision, text text
)
LANGUAGE plpgsql STABLE
-- A sort would mean an exact scan: with sorting discouraged the planner takes the HNSW index
-- even on a small collection (restored when the function returns).
SET enable_sort = off
AS $$
DECLARE
    d integer;
    old_ef text;
    old_iterative text;
    ef integer;
BEGIN
    IF k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'k must be a positive integer, not %', k
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF embedding IS NULL THEN
        RAISE EXCEPTION 'the query embedding is NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.dim INTO d FROM pgrag.collections c WHERE c.id = nearest_chunks.collection_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'collection id % does not exist', collection_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF vector_dims(embedding) <> d THEN  -- (this call also loads pgvector and its hnsw.* settings)
        RAISE EXCEPTION 'the query embedding has % dimensions but collection id % has %',
            vector_dims(embedding), collection_id, d USING ERRCODE = 'data_exception';
    END IF;
    -- The index returns at most ef_search rows: raise it to fit k (and the chunk left out),
    -- as pgrag's own search does, never lower it; past pgvector's limit of 1000 an
    -- iterative scan fetches the rest. Both are put back before returning.
    old_ef := current_setting('hnsw.ef_search');
    old_iterative := current_setting('hnsw.iterative_scan');
    ef := least(1000, greatest(64, 2 * (k + 1)));
    IF ef > old_ef::integer THEN
        PERFORM set_config('hnsw.ef_search', ef::text, true);
    END IF;
    IF k + 1 > greatest(ef, old_ef::integer) AND old_iterative = 'off' THEN
        PERFORM set_config('hnsw.iterative_scan', 'strict_order', true);
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT (row_number() OVER (ORDER BY n.distance, n.chunk_id))::integer, n.chunk_id,'
        ' c.document_id, d.external_id, d.title, c.ord, n.distance, c.text'
        ' FROM (%s) n'
        ' JOIN pgrag.chunks c ON c.id = n.chunk_id'
        ' JOIN pgrag.documents d ON d.id = c.document_id'
        ' ORDER BY 1',
        pgrag.knn_sql(collection_id))
    USING embedding, k, exclude_chunk;
    PERFORM set_config('hnsw.ef_search', old_ef, true);
    PERFORM set_config('hnsw.iterative_scan', old_iterative, true);
END
$$;
COMMENT ON FUNCTION pgrag.nearest_chunks(integer, vector, integer, bigint) IS
    'The k chunks of a collection nearest to an embedding (cosine distance) through the '
    'collection''s HNSW index, optionally leaving one chunk out. hnsw.ef_search is raised to '
    'fit k for the call.';

CREATE FUNCTION pgrag.neighbors(chunk_id bigint, k integer DEFAULT 10) RETURNS TABLE (
    rank integer, neighbor_id bigint, document_id bigint, external_id text, title text,
    ord integer, distance double precision, text text
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    cid integer;
    v vector;
BEGIN
    SELECT c.collection_id, c.embedding INTO cid, v
    FROM pgrag.chunks c WHERE c.id = neighbors.chunk_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'chunk % does not exist', chunk_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY SELECT * FROM pgrag.nearest_chunks(cid, v, k, chunk_id);
END
$$;
COMMENT ON FUNCTION pgrag.neighbors(bigint, integer) IS
    'The k nearest chunks of a chunk in its own collection (the chunk itself left out), through'
    ' the collection''s HNSW index, with their cosine distance (0 = same direction; similarity '
    '= 1 - distance).';

CREATE FUNCTION pgrag.similar_to_query(query_id uuid, k integer DEFAULT 10) RETURNS TABLE (
    rank integer, chunk_id bigint, document_id bigint, external_id text, title text,
    ord integer, distance double precision, in_passages boolean, text text
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    q record;
BEGIN
    SELECT x.collection, x.collection_id, x.state, x.question_embedding, x.passages INTO q
    FROM pgrag.queries x WHERE x.id = similar_to_query.query_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'question % does not exist', query_id
            USING ERRCODE = 'no_data_found', HINT = 'select id, question from pgrag.query_log';
    END IF;
    IF q.question_embedding IS NULL THEN
        RAISE EXCEPTION 'question % has no stored embedding (state %)', query_id, q.state
            USING ERRCODE = 'no_data_found',
                  HINT = 'The query worker that answers a question stores its embedding: '
                         'a queued, running or failed question may have none.';
    END IF;
    IF q.collection_id IS NULL THEN
        RAISE EXCEPTION 'the collection "%" of question % no longer exists', q.collection, query_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    SELECT n.rank, n.chunk_id, n.document_id, n.external_id, n.title, n.ord, n.distance,
           q.passages @> jsonb_build_array(jsonb_build_object('chunk_id', n.chunk_id)),
           n.text
    FROM pgrag.nearest_chunks(q.collection_id, q.question_embedding, k) n
    ORDER BY n.rank;
END
$$;
COMMENT ON FUNCTION pgrag.similar_to_query(uuid, integer) IS
    'Dense recall for a stored question: the k chunks nearest to queries.question_embedding in '
    'its collection through the HNSW index, with their distance and whether each was among the '
    'passages the question was answered from. Raises an error when the question has no stored '
    'embedding.';

CREATE FUNCTION pgrag.duplicates(
    collection text, max_distance double precision DEFAULT 0.02, per_chunk integer DEFAULT 10
) RETURNS TABLE (
    chunk_a bigint, chunk_b bigint, distance double precision,
    external_id_a text, external_id_b text, text_a text, text_b text
)
LANGUAGE plpgsql STABLE
SET enable_sort = off  -- keeps each chunk's k-NN on the HNSW index (see nearest_chunks)
AS $$
DECLARE
    col pgrag.collections;
    old_ef text;
    ef integer;
    a_ids bigint[];
    b_ids bigint[];
    distances double precision[];
BEGIN
    IF per_chunk IS NULL OR per_chunk < 1 THEN
        RAISE EXCEPTION 'per_chunk must be a positive integer, not %', per_chunk
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    col := pgrag.collection_by_name(collection);
    PERFORM '[1]'::vector;  -- loads pgvector, which defines the hnsw.* settings
    old_ef := current_setting('hnsw.ef_search');
    ef := least(1000, greatest(64, 2 * (per_chunk + 1)));
    IF ef > old_ef::integer THEN
        PERFORM set_config('hnsw.ef_search', ef::text, true);
    END IF;
    -- One index probe per chunk (a LATERAL k-NN), not a comparison of every pair. A pair
    -- can be found from either side, so it is keyed by (smaller id, larger id) and kept once.
    EXECUTE format($sql$
        SELECT array_agg(p.a_id ORDER BY p.distance, p.a_id, p.b_id),
               array_agg(p.b_id ORDER BY p.distance, p.a_id, p.b_id),
               array_agg(p.distance ORDER BY p.distance, p.a_id, p.b_id)
        FROM (
            SELECT least(a.id, n.id) AS a_id, greatest(a.id, n.id) AS b_id,
                   min(n.distance) AS distance
            FROM pgrag.chunks a
            CROSS JOIN LATERAL (
                SELECT b.id, b.embedding::vector(%1$s) <=> a.embedding AS distance
                FROM pgrag.chunks b
                WHERE b.collection_id = %2$s AND b.id <> a.id
                ORDER BY b.embedding::vector(%1$s) <=> a.embedding
                LIMIT $2
            ) n
            WHERE a.collection_id = %2$s AND n.distance <= $1
            GROUP BY 1, 2
        ) p
    $sql$, col.dim, col.id)
    INTO a_ids, b_ids, distances
    USING max_distance, per_chunk;
    PERFORM set_config('hnsw.ef_search', old_ef, true);
    -- The (usually few) pairs are then looked up by primary key.
    RETURN QUERY
    SELECT u.a, u.b, u.d, da.external_id, db.external_id, ca.text, cb.text
    FROM unnest(a_ids, b_ids, distances) WITH ORDINALITY AS u(a, b, d, i)
    JOIN pgrag.chunks ca ON ca.id = u.a JOIN pgrag.documents da ON da.id = ca.document_id
    JOIN pgrag.chunks cb ON cb.id = u.b JOIN pgrag.documents db ON db.id = cb.document_id
    ORDER BY u.i;
END
$$;
COMMENT ON FUNCTION pgrag.duplicates(text, double precision, integer) IS
    'Near-duplicate chunk pairs of a collection: pairs within max_distance (cosine), each pair '
    'once (chunk_a < chunk_b), closest first. Each chunk''s per_chunk nearest neighbours are '
    'found through the HNSW index, so a chunk with more than per_chunk near copies shows only '
    'that many of them.';

-- ---------------------------------------------------------------------------- audits

CREATE FUNCTION pgrag.recall_audit(
    collection text, sample integer DEFAULT 200, k integer DEFAULT 10
)
RETURNS TABLE (
    recall double precision, sample_size integer, ef_search integer, iterative_scan text,
    index_used boolean, index_ms double precision, exact_ms double precision
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    col pgrag.collections;
    ids bigint[];
    ann_q bigint[];
    ann_d double precision[];
    exact_q bigint[];
    exact_d double precision[];
    ann_sql text;
    exact_sql text;
    plan_line text;
    old_sort text;
    t0 timestamptz;
BEGIN
    IF sample IS NULL OR sample < 1 OR k IS NULL OR k < 1 THEN
        RAISE EXCEPTION 'sample and k must be positive integers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    col := pgrag.collection_by_name(collection);
    -- Queries: a random sample of the collection's own chunks (ids from the collection_id
    -- index, then zero vectors dropped: their cosine distance to anything is undefined).
    SELECT array_agg(s.id) INTO ids FROM (
        SELECT c.id FROM pgrag.chunks c
        WHERE c.collection_id = col.id ORDER BY random() LIMIT sample
    ) s;
    SELECT array_agg(c.id) INTO ids
    FROM pgrag.chunks c WHERE c.id = ANY(ids) AND vector_norm(c.embedding) > 0;
    IF ids IS NULL THEN
        RAISE EXCEPTION 'collection "%" has no chunk with a non-zero embedding', collection
            USING ERRCODE = 'no_data_found';
    END IF;
    sample_size := cardinality(ids);
    ef_search := current_setting('hnsw.ef_search')::integer;
    iterative_scan := current_setting('hnsw.iterative_scan');

    -- The same k-NN per query chunk (itself left out), once in the index's ORDER BY form
    -- and once ordered by the uncast column, which no index can serve: an exact scan.
    ann_sql := format($sql$
        SELECT q.id, n.distance FROM pgrag.chunks q
        CROSS JOIN LATERAL (
            SELECT c.embedding::vector(%1$s) <=> q.embedding AS distance
            FROM pgrag.chunks c WHERE c.collection_id = %2$s AND c.id <> q.id
            ORDER BY c.embedding::vector(%1$s) <=> q.embedding LIMIT $2
        ) n
        WHERE q.id = ANY($1)
    $sql$, col.dim, col.id);
    exact_sql := format($sql$
        SELECT q.id, n.distance FROM pgrag.chunks q
        CROSS JOIN LATERAL (
            SELECT c.embedding <=> q.embedding AS distance
            FROM pgrag.chunks c WHERE c.collection_id = %1$s AND c.id <> q.id
            ORDER BY c.embedding <=> q.embedding LIMIT $2
        ) n
        WHERE q.id = ANY($1)
    $sql$, col.id);

    -- With index scans allowed, discourage the sort of an exact scan so that the index is
    -- used even on a small collection; with enable_indexscan off (as a caller may set to
    -- check this audit) both sides are exact and recall is 1.
    old_sort := current_setting('enable_sort');
    IF current_setting('enable_indexscan')::boolean THEN
        PERFORM set_config('enable_sort', 'off', true);
    END IF;
    index_used := false;
    FOR plan_line IN EXECUTE 'EXPLAIN ' || ann_sql USING ids, k LOOP
        index_used := index_used OR position(format('chunks_hnsw_%s', col.id) IN plan_line) > 0;
    END LOOP;
    t0 := clock_timestamp();
    EXECUTE 'SELECT array_agg(r.id), array_agg(r.distance) FROM (' || ann_sql || ') r'
        INTO ann_q, ann_d USING ids, k;
    index_ms := 1000 * extract(epoch FROM clock_timestamp() - t0);
    PERFORM set_config('enable_sort', old_sort, true);

    t0 := clock_timestamp();
    EXECUTE 'SELECT array_agg(r.id), array_agg(r.distance) FROM (' || exact_sql || ') r'
        INTO exact_q, exact_d USING ids, k;
    exact_ms := 1000 * extract(epoch FROM clock_timestamp() - t0);

    -- recall@k = true neighbours found / neighbours asked for. An index hit counts when its
    -- distance is within the query's k-th exact distance, so ties at the k-th place are not
    -- counted as misses.
    WITH exact AS (
        SELECT e.q, max(e.d) AS kth, count(*) AS n
        FROM unnest(exact_q, exact_d) AS e(q, d) GROUP BY e.q
    )
    SELECT (SELECT count(*) FROM unnest(ann_q, ann_d) AS a(q, d) JOIN exact x ON x.q = a.q
            WHERE a.d <= x.kth + 1e-9)::double precision / nullif((SELECT sum(x.n) FROM exact x), 0)
    INTO recall;
    RETURN NEXT;
END
$$;
COMMENT ON FUNCTION pgrag.recall_audit(text, integer, integer) IS
    'recall@k of the collection''s HNSW index against exact search, at the session''s current '
    'hnsw.ef_search and hnsw.iterative_scan: a random sample of the collection''s own chunks '
    'are the queries (each left out of its own results). Returns the recall, the sample size, '
    'the settings used, whether the plan used the index, and the total milliseconds of each '
    'side. Set hnsw.ef_search first to audit another value.';

CREATE FUNCTION pgrag.embedding_health(collection text) RETURNS TABLE (
    metric text, value double precision, ok boolean, detail text, chunk_ids bigint[]
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    col pgrag.collections;
    s record;
    outliers bigint;
    outlier_ids bigint[];
BEGIN
    col := pgrag.collection_by_name(collection);
    SELECT count(*) AS n,
           count(*) FILTER (WHERE x.dims <> col.dim) AS bad_dim,
           (array_agg(x.id ORDER BY x.id) FILTER (WHERE x.dims <> col.dim))[1:10] AS bad_dim_ids,
           count(*) FILTER (WHERE x.norm = 0) AS zero,
           (array_agg(x.id ORDER BY x.id) FILTER (WHERE x.norm = 0))[1:10] AS zero_ids,
           count(*) FILTER (WHERE NOT x.finite) AS nan,
           (array_agg(x.id ORDER BY x.id) FILTER (WHERE NOT x.finite))[1:10] AS nan_ids,
           count(*) FILTER (WHERE abs(x.norm - 1) > 0.01) AS unnormalised,
           (array_agg(x.id ORDER BY x.id) FILTER (WHERE abs(x.norm - 1) > 0.01))[1:10]
               AS unnormalised_ids,
           min(x.norm) FILTER (WHERE x.finite) AS norm_min,
           avg(x.norm) FILTER (WHERE x.finite) AS norm_mean,
           max(x.norm) FILTER (WHERE x.finite) AS norm_max,
           coalesce(stddev_pop(x.norm) FILTER (WHERE x.finite), 0) AS norm_sd
    INTO s
    FROM (
        SELECT c.id, vector_dims(c.embedding) AS dims, vector_norm(c.embedding) AS norm,
               vector_norm(c.embedding) NOT IN ('NaN', 'Infinity') AS finite
        FROM pgrag.chunks c WHERE c.collection_id = col.id
    ) x;
    -- Outliers: |z| > 3 on the norm, and off the mean by more than float noise (norms of
    -- normalised vectors differ by ~1e-7, which would make z meaningless).
    SELECT count(*), (array_agg(c.id ORDER BY c.id))[1:10] INTO outliers, outlier_ids
    FROM pgrag.chunks c
    WHERE c.collection_id = col.id AND s.norm_sd > 0
      AND abs(vector_norm(c.embedding) - s.norm_mean) > greatest(3 * s.norm_sd, 1e-3);

    RETURN QUERY VALUES
        ('chunks', s.n::double precision, s.n > 0, format('chunks in collection %s', col.name),
         NULL::bigint[]),
        ('dim_mismatches', s.bad_dim, s.bad_dim = 0,
         format('embeddings whose dimension is not the collection''s %s', col.dim), s.bad_dim_ids),
        ('zero_vectors', s.zero, s.zero = 0,
         'all-zero embeddings: their cosine distance is undefined and the index cannot rank them',
         s.zero_ids),
        ('nan_vectors', s.nan, s.nan = 0, 'embeddings with a NaN or infinite element', s.nan_ids),
        ('norm_min', s.norm_min, abs(s.norm_min - 1) <= 0.01,
         'smallest L2 norm (embeddings are stored normalised: 1)', NULL),
        ('norm_mean', s.norm_mean, abs(s.norm_mean - 1) <= 0.01, 'mean L2 norm', NULL),
        ('norm_max', s.norm_max, abs(s.norm_max - 1) <= 0.01, 'largest L2 norm', NULL),
        ('norm_stddev', s.norm_sd, s.norm_sd <= 0.01, 'standard deviation of the L2 norms', NULL),
        ('not_normalised', s.unnormalised, s.unnormalised = 0,
         'embeddings whose norm is off 1 by more than 0.01', s.unnormalised_ids),
        ('norm_outliers', outliers, outliers = 0,
         'embeddings whose norm is over 3 standard deviations from the mean (z-score)',
         outlier_ids);
END
$$;
COMMENT ON FUNCTION pgrag.embedding_health(text) IS
    'Checks of a collection''s embeddings, one row each: chunk count, dimension mismatches, '
    'zero vectors, NaN vectors, L2 norm min/mean/max/stddev, vectors not normalised, and norm '
    'outliers by z-score; ok says whether the check passes and chunk_ids lists up to 10 '
    'offending chunks.';

-- ---------------------------------------------------------------------------- views

CREATE VIEW pgrag.collection_stats AS
SELECT col.name AS collection,
       col.id AS collection_id,
       col.model,
       col.dim,
       d.documents,
       d.embedded,
       d.pending,
       d.failed,
       ch.chunks,
       format('chunks_hnsw_%s', col.id) AS index_name,
       ix.indisvalid AS index_valid,
       pg_relation_size(ix.indexrelid) AS index_bytes,
       pg_size_pretty(pg_relation_size(ix.indexrelid)) AS index_size,
       round(ch.chunks * cs.avg_row)::bigint AS chunks_bytes,
       round(d.documents * ds.avg_row)::bigint AS documents_bytes,
       pg_size_pretty(round(ch.chunks * cs.avg_row + d.documents * ds.avg_row
                            + coalesce(pg_relation_size(ix.indexrelid), 0))::bigint) AS total_size,
       j.id AS last_job_id,
       j.state AS last_job_state,
       coalesce(j.finished_at, j.updated_at) AS last_job_at,
       col.created_at
FROM pgrag.collections col
CROSS JOIN LATERAL (
    SELECT count(*) AS documents,
           count(*) FILTER (WHERE x.status = 'embedded') AS embedded,
           count(*) FILTER (WHERE x.status = 'pending') AS pending,
           count(*) FILTER (WHERE x.status = 'failed') AS failed
    FROM pgrag.documents x WHERE x.collection_id = col.id
) d
CROSS JOIN LATERAL (SELECT count(*) AS chunks FROM pgrag.chunks x WHERE x.collection_id = col.id) ch
CROSS JOIN LATERAL (
    SELECT coalesce(avg(pg_column_size(r.*)), 0) AS avg_row
    FROM (SELECT * FROM pgrag.chunks x WHERE x.collection_id = col.id LIMIT 1000) r
) cs
CROSS JOIN LATERAL (
    SELECT coalesce(avg(pg_column_size(r.*)), 0) AS avg_row
    FROM (SELECT * FROM pgrag.documents x WHERE x.collection_id = col.id LIMIT 1000) r
) ds
LEFT JOIN pg_index ix ON ix.indexrelid = to_regclass(format('pgrag.chunks_hnsw_%s', col.id))
LEFT JOIN LATERAL (
    SELECT x.id, x.state, x.finished_at, x.updated_at
    FROM pgrag.ingest_jobs x WHERE x.collection_id = col.id ORDER BY x.id DESC LIMIT 1
) j ON true;
COMMENT ON VIEW pgrag.collection_stats IS
    'One row per collection: documents, chunks, model and dimension, its HNSW index, sizes and '
    'its last ingest job.';
COMMENT ON COLUMN pgrag.collection_stats.collection IS 'Collection name.';
COMMENT ON COLUMN pgrag.collection_stats.collection_id IS 'Collection id.';
COMMENT ON COLUMN pgrag.collection_stats.model IS 'Embedding model of the collection.';
COMMENT ON COLUMN pgrag.collection_stats.dim IS 'Embedding dimension.';
COMMENT ON COLUMN pgrag.collection_stats.documents IS 'Documents in the collection (any status).';
COMMENT ON COLUMN pgrag.collection_stats.embedded IS 'Documents chunked, embedded and loaded.';
COMMENT ON COLUMN pgrag.collection_stats.pending IS 'Documents waiting for an embed worker.';
COMMENT ON COLUMN pgrag.collection_stats.failed IS
    'Documents that could not be embedded (see pgrag.ingest_error_log).';
COMMENT ON COLUMN pgrag.collection_stats.chunks IS 'Chunks (embeddings) in the collection.';
COMMENT ON COLUMN pgrag.collection_stats.index_name IS
    'Name of the collection''s partial HNSW index on pgrag.chunks.';
COMMENT ON COLUMN pgrag.collection_stats.index_valid IS
    'true: the index is usable; false: a concurrent build died (the next job rebuilds it); '
    'NULL: no index yet.';
COMMENT ON COLUMN pgrag.collection_stats.index_bytes IS
    'Size of the HNSW index on disk, in bytes (NULL without an index).';
COMMENT ON COLUMN pgrag.collection_stats.index_size IS 'index_bytes for people (kB, MB, GB).';
COMMENT ON COLUMN pgrag.collection_stats.chunks_bytes IS
    'Estimated bytes of the collection''s chunk rows (text, metadata, embedding): chunks times '
    'the mean row size of up to 1000 of them.';
COMMENT ON COLUMN pgrag.collection_stats.documents_bytes IS
    'Estimated bytes of the collection''s document rows: documents times the mean row size of '
    'up to 1000 of them.';
COMMENT ON COLUMN pgrag.collection_stats.total_size IS
    'chunks_bytes + documents_bytes + index_bytes, for people (postings for BM25 not included).';
COMMENT ON COLUMN pgrag.collection_stats.last_job_id IS 'The collection''s most recent ingest job.';
COMMENT ON COLUMN pgrag.collection_stats.last_job_state IS
    'State of that job: queued, running, indexing, done, failed or cancelled.';
COMMENT ON COLUMN pgrag.collection_stats.last_job_at IS
    'When that job finished, or last changed while it runs.';
COMMENT ON COLUMN pgrag.collection_stats.created_at IS 'When the collection was created.';

CREATE VIEW pgrag.job_progress AS
SELECT j.id AS job_id,
       col.name AS collection,
       j.state,
       p.processed AS docs_processed,
       j.docs_total,
       CASE WHEN j.docs_total > 0 THEN round(100.0 * p.processed / j.docs_total, 1)
            WHEN j.state = 'done' THEN 100.0 END AS percent,
       j.docs_done,
       j.docs_skipped,
       j.docs_failed AS errors,
       j.docs_deleted,
       j.chunks_done,
       e.elapsed,
       round(p.processed / e.seconds, 2) AS docs_per_s,
       round(j.chunks_done / e.seconds, 1) AS chunks_per_s,
       CASE WHEN j.state IN ('queued', 'running') AND j.docs_total IS NOT NULL AND p.processed > 0
            THEN make_interval(
                secs => round(greatest(j.docs_total - p.processed, 0) * e.seconds / p.processed))
       END AS eta,
       j.source,
       j.error,
       j.created_at,
       j.started_at,
       j.updated_at,
       j.finished_at
FROM pgrag.ingest_jobs j
JOIN pgrag.collections col ON col.id = j.collection_id
CROSS JOIN LATERAL (SELECT j.docs_done + j.docs_failed + j.docs_skipped AS processed) p
CROSS JOIN LATERAL (
    SELECT coalesce(j.finished_at, now()) - j.started_at AS elapsed,
           nullif(extract(epoch FROM coalesce(j.finished_at, now()) - j.started_at), 0) AS seconds
) e;
COMMENT ON VIEW pgrag.job_progress IS
    'Ingest jobs with live progress: documents done of total, rates, ETA and errors. Read it '
    'again to see a running job move.';
COMMENT ON COLUMN pgrag.job_progress.job_id IS 'Job id.';
COMMENT ON COLUMN pgrag.job_progress.collection IS 'Collection the job loads into.';
COMMENT ON COLUMN pgrag.job_progress.state IS
    'queued, running, indexing (building the index), done, failed or cancelled.';
COMMENT ON COLUMN pgrag.job_progress.docs_processed IS
    'Documents finished so far: loaded + unchanged + failed.';
COMMENT ON COLUMN pgrag.job_progress.docs_total IS
    'Documents in the source (an estimate until the source is fully read; NULL when unknown).';
COMMENT ON COLUMN pgrag.job_progress.percent IS 'docs_processed as a percentage of docs_total.';
COMMENT ON COLUMN pgrag.job_progress.docs_done IS 'Documents chunked, embedded and loaded.';
COMMENT ON COLUMN pgrag.job_progress.docs_skipped IS
    'Documents unchanged since their last load (same content hash).';
COMMENT ON COLUMN pgrag.job_progress.errors IS
    'Documents that failed; the reasons are in pgrag.ingest_errors / pgrag.ingest_error_log.';
COMMENT ON COLUMN pgrag.job_progress.docs_deleted IS
    'Documents removed because the source no longer has them (--delete-missing).';
COMMENT ON COLUMN pgrag.job_progress.chunks_done IS 'Chunks embedded and loaded.';
COMMENT ON COLUMN pgrag.job_progress.elapsed IS
    'Time since a worker started the job, up to when it finished.';
COMMENT ON COLUMN pgrag.job_progress.docs_per_s IS 'docs_processed per second of elapsed.';
COMMENT ON COLUMN pgrag.job_progress.chunks_per_s IS 'chunks_done per second of elapsed.';
COMMENT ON COLUMN pgrag.job_progress.eta IS
    'Estimated time left to process the remaining documents at the rate so far (queued or '
    'running jobs with a known total; the index build after it is not included).';
COMMENT ON COLUMN pgrag.job_progress.source IS 'Source folder or file.';
COMMENT ON COLUMN pgrag.job_progress.error IS 'Why the job failed, when it did.';
COMMENT ON COLUMN pgrag.job_progress.created_at IS 'When the job was submitted.';
COMMENT ON COLUMN pgrag.job_progress.started_at IS 'When a worker started reading the source.';
COMMENT ON COLUMN pgrag.job_progress.updated_at IS 'Last change of the job''s state or counters.';
COMMENT ON COLUMN pgrag.job_progress.finished_at IS
    'When the job reached done, failed or cancelled.';

CREATE VIEW pgrag.ingest_error_log AS
SELECT e.id AS error_id,
       e.job_id,
       col.name AS collection,
       j.source,
       e.ref,
       e.reason,
       e.created_at
FROM pgrag.ingest_errors e
JOIN pgrag.ingest_jobs j ON j.id = e.job_id
JOIN pgrag.collections col ON col.id = j.collection_id;
COMMENT ON VIEW pgrag.ingest_error_log IS
    'pgrag.ingest_errors with the collection and source of each error''s job.';
COMMENT ON COLUMN pgrag.ingest_error_log.error_id IS 'Error id (pgrag.ingest_errors.id).';
COMMENT ON COLUMN pgrag.ingest_error_log.job_id IS 'Job that met the error.';
COMMENT ON COLUMN pgrag.ingest_error_log.collection IS 'Collection the job was loading into.';
COMMENT ON COLUMN pgrag.ingest_error_log.source IS 'Source folder or file of the job.';
COMMENT ON COLUMN pgrag.ingest_error_log.ref IS
    'What failed: a path relative to the source, file:line, or an external id.';
COMMENT ON COLUMN pgrag.ingest_error_log.reason IS 'Why it failed, in words.';
COMMENT ON COLUMN pgrag.ingest_error_log.created_at IS 'When the error was recorded.';

CREATE VIEW pgrag.query_log AS
SELECT q.id,
       q.created_at,
       q.collection,
       q.question,
       q.state,
       pgrag.json_number(q.timings -> 'total') AS total_ms,
       pgrag.json_number(q.timings -> 'embed') AS embed_ms,
       pgrag.json_number(q.timings -> 'recall') AS recall_ms,
       pgrag.json_number(q.timings -> 'rerank') AS rerank_ms,
       pgrag.json_number(q.timings -> 'generate') AS generate_ms,
       pgrag.json_number(q.timings -> 'first_token') AS first_token_ms,
       round(1000 * extract(epoch FROM q.started_at - q.created_at), 1)::double precision
           AS queued_ms,
       CASE WHEN jsonb_typeof(q.passages) = 'array' THEN jsonb_array_length(q.passages) END
           AS passages,
       pgrag.json_number(q.passages -> 0 -> 'chunk_id')::bigint AS top_chunk_id,
       q.passages -> 0 ->> 'external_id' AS top_external_id,
       pgrag.json_number(coalesce(q.passages -> 0 -> 'scores' -> 'dense',
                                  q.passages -> 0 -> 'dense')) AS top_dense,
       pgrag.json_number(coalesce(q.passages -> 0 -> 'scores' -> 'lexical',
                                  q.passages -> 0 -> 'lexical')) AS top_lexical,
       pgrag.json_number(coalesce(q.passages -> 0 -> 'scores' -> 'fused',
                                  q.passages -> 0 -> 'fused')) AS top_fused,
       pgrag.json_number(coalesce(q.passages -> 0 -> 'scores' -> 'rerank',
                                  q.passages -> 0 -> 'rerank')) AS top_rerank,
       q.question_embedding IS NOT NULL AS has_embedding,
       q.error,
       q.started_at,
       q.finished_at
FROM pgrag.queries q;
COMMENT ON VIEW pgrag.query_log IS
    'Questions asked, newest first when ordered by created_at desc: state, stage timings (from '
    'queries.timings) and the scores of the top passage (from queries.passages).';
COMMENT ON COLUMN pgrag.query_log.id IS
    'Question id (pgrag.queries.id); pass it to pgrag.similar_to_query.';
COMMENT ON COLUMN pgrag.query_log.created_at IS 'When the question was queued.';
COMMENT ON COLUMN pgrag.query_log.collection IS 'Collection name as asked.';
COMMENT ON COLUMN pgrag.query_log.question IS 'The question text.';
COMMENT ON COLUMN pgrag.query_log.state IS 'queued, running, done or failed.';
COMMENT ON COLUMN pgrag.query_log.total_ms IS
    'Milliseconds from pickup to the final answer (timings.total).';
COMMENT ON COLUMN pgrag.query_log.embed_ms IS 'Milliseconds to embed the question (timings.embed).';
COMMENT ON COLUMN pgrag.query_log.recall_ms IS
    'Milliseconds of dense + lexical recall in SQL (timings.recall).';
COMMENT ON COLUMN pgrag.query_log.rerank_ms IS
    'Milliseconds of cross-encoder reranking (timings.rerank).';
COMMENT ON COLUMN pgrag.query_log.generate_ms IS
    'Milliseconds of answer generation (timings.generate).';
COMMENT ON COLUMN pgrag.query_log.first_token_ms IS
    'Milliseconds until the first answer token was streamed (timings.first_token).';
COMMENT ON COLUMN pgrag.query_log.queued_ms IS
    'Milliseconds the question waited in the queue before a worker picked it up.';
COMMENT ON COLUMN pgrag.query_log.passages IS 'Number of passages given to the generator.';
COMMENT ON COLUMN pgrag.query_log.top_chunk_id IS 'Chunk id of the first (best ranked) passage.';
COMMENT ON COLUMN pgrag.query_log.top_external_id IS
    'External id of the first passage''s document.';
COMMENT ON COLUMN pgrag.query_log.top_dense IS
    'Dense (cosine similarity) score of the first passage.';
COMMENT ON COLUMN pgrag.query_log.top_lexical IS 'Lexical (BM25) score of the first passage.';
COMMENT ON COLUMN pgrag.query_log.top_fused IS 'Fused dense + lexical score of the first passage.';
COMMENT ON COLUMN pgrag.query_log.top_rerank IS 'Cross-encoder score of the first passage.';
COMMENT ON COLUMN pgrag.query_log.has_embedding IS
    'Whether the question''s embedding is stored (needed by pgrag.similar_to_query).';
COMMENT ON COLUMN pgrag.query_log.error IS 'Why answering failed, when it did.';
COMMENT ON COLUMN pgrag.query_log.started_at IS 'When a query worker picked the question up.';
COMMENT ON COLUMN pgrag.query_log.finished_at IS 'When the answer (or error) was final.';

-- ---------------------------------------------------------------------------- read-only role

-- Roles belong to the whole cluster: another database may have made it already.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgrag_reader') THEN
        CREATE ROLE pgrag_reader NOLOGIN;
    END IF;
END
$$;
COMMENT ON ROLE pgrag_reader IS
    'Reads the pgrag schema (tables, views, functions) and writes nothing: GRANT pgrag_reader '
    'TO a login role.';
GRANT USAGE ON SCHEMA pgrag TO pgrag_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA pgrag TO pgrag_reader;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA pgrag TO pgrag_reader;
-- Tables, views and functions that later migrations (run by this same role) create.
ALTER DEFAULT PRIVILEGES IN SCHEMA pgrag GRANT SELECT ON TABLES TO pgrag_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA pgrag GRANT EXECUTE ON FUNCTIONS TO pgrag_reader;
"""

DOWNGRADE = r"""
DROP VIEW pgrag.query_log, pgrag.ingest_error_log, pgrag.job_progress, pgrag.collection_stats;
DROP FUNCTION pgrag.embedding_health(text), pgrag.recall_audit(text, integer, integer),
    pgrag.duplicates(text, double precision, integer), pgrag.similar_to_query(uuid, integer),
    pgrag.neighbors(bigint, integer), pgrag.nearest_chunks(integer, vector, integer, bigint),
    pgrag.knn_sql(integer), pgrag.collection_by_name(text), pgrag.json_number(jsonb);
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgrag_reader') THEN
        RETURN;
    END IF;
    ALTER DEFAULT PRIVILEGES IN SCHEMA pgrag REVOKE SELECT ON TABLES FROM pgrag_reader;
    ALTER DEFAULT PRIVILEGES IN SCHEMA pgrag REVOKE EXECUTE ON FUNCTIONS FROM pgrag_reader;
    REVOKE ALL ON ALL TABLES IN SCHEMA pgrag FROM pgrag_reader;
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgrag FROM pgrag_reader;
    REVOKE ALL ON SCHEMA pgrag FROM pgrag_reader;
    -- The role goes too unless something else still uses it: a member (a login role that
    -- was granted it) or privileges in another database of the cluster.
    IF EXISTS (SELECT FROM pg_auth_members WHERE roleid = 'pgrag_reader'::regrole) THEN
        RAISE NOTICE 'role pgrag_reader kept: other roles are members of it';
        RETURN;
    END IF;
    BEGIN
        DROP ROLE pgrag_reader;
    EXCEPTION WHEN dependent_objects_still_exist THEN
        RAISE NOTICE 'role pgrag_reader kept: objects elsewhere in the cluster depend on it';
    END;
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
