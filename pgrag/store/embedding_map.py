"""A 2-D map of a collection's embeddings: a sample of up to 100,000 of its vectors projected
onto their first two principal components (PCA), kept in memory until the collection changes.

PCA was chosen by measurement (`python bench/console.py`, docs/console.md): at 100,000
vectors it costs well under a second of CPU beyond reading them, it is deterministic (the
same collection draws the same map), and it keeps more of each chunk's nearest neighbours
than a random projection does; t-SNE keeps more but costs minutes at this size on a CPU.

The sample is read with one binary COPY and parsed as fixed-size records by numpy, so no
Python object is made per vector. A map is recomputed when the collection's chunk count or
its largest chunk id changes (a load adds chunks with new ids, a delete lowers the count).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

import numpy as np
import psycopg
from psycopg import sql

from pgrag.runtime import db
from pgrag.store import inspection
from pgrag.store.indexing import index_state, vector_expr
from pgrag.store.schema import Collection

MAX_POINTS = 100_000
# duplicates() probes the HNSW index once per chunk (about 1 ms each on 2 busy cores), so the
# map asks it only of collections up to this size, and only once the index is built (without
# it each probe would scan the whole collection).
DUPLICATES_MAX_CHUNKS = 20_000
CACHED_MAPS = 8
PCA_FIT_ROWS = 20_000
COLOR_GROUPS = 12  # the most frequent values get a colour each; the rest are "other"


@dataclass(frozen=True)
class ChunkMap:
    collection_id: int
    version: tuple[int, int]  # (chunks, largest chunk id) when it was computed
    chunk_ids: np.ndarray  # int64, one per point
    document_index: np.ndarray  # uint32 index into `documents`, one per point
    documents: list[str]  # each document's title (or external id)
    xy: np.ndarray  # float32, (points, 2)
    total: int  # chunks in the collection (the sample is all of them up to MAX_POINTS)
    # From the inspection functions: near-duplicate pairs (duplicates(), for collections of
    # up to DUPLICATES_MAX_CHUNKS) and the chunks that embedding_health() names (zero, NaN or
    # unnormalised vectors, norm outliers).
    duplicates: list[tuple[int, int, float]] = field(default_factory=list)
    duplicates_looked_for: bool = False
    outliers: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # read, project, marks

    def to_bytes(self) -> bytes:
        """The points for a browser: chunk ids (float64), x, y (float32), document index
        (uint32), each array whole, little-endian."""
        return b"".join(
            (
                self.chunk_ids.astype("<f8").tobytes(),
                self.xy[:, 0].astype("<f4").tobytes(),
                self.xy[:, 1].astype("<f4").tobytes(),
                self.document_index.astype("<u4").tobytes(),
            )
        )


def version(conn: psycopg.Connection, collection_id: int) -> tuple[int, int]:
    row = conn.execute(
        "SELECT count(*), coalesce(max(id), 0) FROM pgrag.chunks WHERE collection_id = %s",
        (collection_id,),
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def read_sample(
    conn: psycopg.Connection, collection: Collection, limit: int = MAX_POINTS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(chunk ids, document ids, float32 vectors) of up to `limit` of the collection's chunks:
    all of them when they fit, else a sample that is the same from call to call (ordered by
    a hash of the id)."""
    dim = int(collection.dim)
    query = sql.SQL(
        "COPY (SELECT id, document_id, {vec} FROM pgrag.chunks"
        " WHERE collection_id = {cid} AND embedding IS NOT NULL"
        " ORDER BY hashint8(id) LIMIT {limit}) TO STDOUT (FORMAT BINARY)"
    ).format(
        vec=sql.SQL(vector_expr(collection)),
        cid=sql.Literal(int(collection.id)),
        limit=sql.Literal(limit),
    )
    with conn.cursor() as cur, cur.copy(query) as copy:
        data = b"".join(bytes(block) for block in copy)
    # Binary COPY: a 19-byte header, then per row a field count and each field's length
    # before its bytes (a vector: dimension, unused, floats), all big-endian; a 2-byte trailer.
    record = np.dtype(
        [
            ("fields", ">i2"),
            ("id_len", ">i4"),
            ("id", ">i8"),
            ("doc_len", ">i4"),
            ("doc", ">i8"),
            ("vec_len", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    rows = np.frombuffer(data, dtype=record, offset=19, count=(len(data) - 21) // record.itemsize)
    return rows["id"].astype(np.int64), rows["doc"].astype(np.int64), rows["vec"].astype(np.float32)


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """The vectors' coordinates on their first two principal axes (float32), each axis
    signed so that its largest loading is positive (the same map every time). The axes come
    from the covariance of at most PCA_FIT_ROWS of the vectors, evenly spaced (the sample
    is in random order already): the same axes to a few decimals, at a fifth of the cost
    of all 100,000; every vector is then projected."""
    mean = vectors.mean(axis=0, dtype=np.float64).astype(np.float32)
    fit = vectors[:: max(1, len(vectors) // PCA_FIT_ROWS)] - mean
    _, eigenvectors = np.linalg.eigh((fit.T @ fit).astype(np.float64))  # float32 BLAS
    axes = eigenvectors[:, ::-1][:, :2]
    axes = (axes * np.sign(axes[np.abs(axes).argmax(axis=0), [0, 1]])).astype(np.float32)
    return vectors @ axes - mean @ axes  # centred without a copy of the vectors


def random_2d(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """A Gaussian random projection to two dimensions (for comparison with PCA)."""
    axes = np.random.default_rng(seed).standard_normal((vectors.shape[1], 2)).astype(np.float32)
    return vectors @ axes


def kept_neighbours(
    vectors: np.ndarray, xy: np.ndarray, k: int = 10, queries: int = 500, seed: int = 0
) -> float:
    """The mean share of a point's k nearest neighbours by cosine in the original space that
    are also among its k nearest on the map (over `queries` random points)."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(vectors), size=min(queries, len(vectors)), replace=False)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    kept = 0
    for i in picked:
        similarity = unit @ unit[i]
        similarity[i] = -np.inf
        distance = ((xy - xy[i]) ** 2).sum(axis=1)
        distance[i] = np.inf
        near = np.argpartition(-similarity, k)[:k]
        near_map = np.argpartition(distance, k)[:k]
        kept += len(np.intersect1d(near, near_map))
    return kept / (k * len(picked))


def compute_map(collection: Collection, limit: int = MAX_POINTS) -> ChunkMap:
    """A fresh map of the collection (see `chunk_map` for the cached one)."""
    started = time.perf_counter()
    with db.connect() as conn:
        current = version(conn, collection.id)
        indexed = index_state(conn, collection) == "valid"
        ids, doc_ids, vectors = read_sample(conn, collection, limit)
        documents, doc_index = np.unique(doc_ids, return_inverse=True)
        titles = dict(
            conn.execute(
                "SELECT id, coalesce(title, external_id) FROM pgrag.documents WHERE id = ANY(%s)",
                (documents.tolist(),),
            ).fetchall()
        )
    read = time.perf_counter()
    xy = pca_2d(vectors) if len(vectors) > 2 else np.zeros((len(vectors), 2), np.float32)
    projected = time.perf_counter()
    looked = indexed and current[0] <= DUPLICATES_MAX_CHUNKS
    duplicates = inspection.duplicate_pairs(collection.name) if looked else []
    outliers = inspection.outlier_chunks(inspection.embedding_health(collection.name))
    return ChunkMap(
        collection_id=collection.id,
        version=current,
        chunk_ids=ids,
        document_index=doc_index.astype(np.uint32),
        documents=[str(titles.get(int(d), d)) for d in documents],
        xy=xy,
        total=current[0],
        duplicates=duplicates,
        duplicates_looked_for=looked,
        outliers=outliers,
        seconds={
            "read": read - started,
            "project": projected - read,
            "marks": time.perf_counter() - projected,
        },
    )


_maps: OrderedDict[int, ChunkMap] = OrderedDict()
_lock = threading.Lock()  # one computation at a time: a second caller gets its result


def chunk_map(collection: Collection) -> ChunkMap:
    """The collection's map, computed again only when its chunks changed since the last."""
    with db.connect() as conn:
        current = version(conn, collection.id)
    with _lock:
        cached = _maps.get(collection.id)
        if cached is None or cached.version != current:
            cached = compute_map(collection)
        _maps[collection.id] = cached
        _maps.move_to_end(collection.id)
        while len(_maps) > CACHED_MAPS:
            _maps.popitem(last=False)
        return cached


COLOR_BY = {
    "job": sql.SQL("d.job_id::text"),
    "metadata": sql.SQL("c.metadata ->> {key}"),
}


def color_groups(cmap: ChunkMap, by: str, key: str = "") -> tuple[list[str], list[int]]:
    """Labels and, for each point of the map, the index of its label: by "job" (the job that
    loaded its document) or by "metadata" (the value of `key` in its metadata). The
    COLOR_GROUPS most frequent values get a label each, then "other", then "none"."""
    if by not in COLOR_BY:
        raise ValueError(f"colour by one of {', '.join(COLOR_BY)}, not {by!r}")
    query = sql.SQL(
        "SELECT c.id, {value} FROM pgrag.chunks c JOIN pgrag.documents d ON d.id = c.document_id"
        " WHERE c.id = ANY(%s)"
    ).format(value=COLOR_BY[by].format(key=sql.Literal(key)))
    with db.connect() as conn:
        values = dict(conn.execute(query, (cmap.chunk_ids.tolist(),)).fetchall())
    point_values = [values.get(int(i)) for i in cmap.chunk_ids]
    common = [v for v, _ in Counter(v for v in point_values if v is not None).most_common()]
    labels = common[:COLOR_GROUPS]
    index = {v: i for i, v in enumerate(labels)}
    other, none = len(labels), len(labels) + 1
    groups = [none if v is None else index.get(v, other) for v in point_values]
    return [*labels, "other", "none"], groups
