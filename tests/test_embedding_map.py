"""The embedding map behind the console: the projection, the binary read of a collection's
vectors (against what PostgreSQL returns row by row), and the cache that holds a map until
the collection changes (real jobs on real workers)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import sample_text


def test_pca_of_points_on_a_plane_keeps_their_distances_and_neighbours() -> None:
    from pgrag.store.embedding_map import kept_neighbours, pca_2d, random_2d

    rng = np.random.default_rng(7)
    plane = rng.standard_normal((2000, 2)).astype(np.float32)
    basis, _ = np.linalg.qr(rng.standard_normal((384, 3)))  # a plane at random in 384 d
    vectors = (plane @ basis[:, :2].T + 3.0 * basis[:, 2]).astype(np.float32)  # off the origin
    xy = pca_2d(vectors)
    assert xy.shape == (2000, 2) and xy.dtype == np.float32

    def distances(points: np.ndarray) -> np.ndarray:
        return np.linalg.norm(points[:200, None] - points[None, :200], axis=-1)

    # A rotation or reflection of the plane: every distance is kept.
    np.testing.assert_allclose(distances(xy), distances(plane), atol=1e-3)
    assert np.array_equal(pca_2d(vectors), xy)  # the same map every time

    # Unit vectors on a small cap (as embeddings are): cosine neighbours are the plane's.
    cap = vectors / 3.0 * np.float32(0.05) + np.float32(1 - 0.05) * basis[:, 2].astype(np.float32)
    cap /= np.linalg.norm(cap, axis=1, keepdims=True)
    assert kept_neighbours(cap, pca_2d(cap)) > 0.9
    assert 0 < kept_neighbours(cap, random_2d(cap)) <= 1


@pytest.fixture(scope="module")
def mapped(worker: object, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A collection of 12 small documents and a copy of one, loaded by a real job."""
    from pgrag.ingest import pipeline
    from pgrag.ingest.jobs import get_job

    folder = tmp_path_factory.mktemp("mapped")
    rows = [{"id": f"doc{i}", "title": f"Doc {i}", "text": sample_text(i, 40)} for i in range(12)]
    rows.append({**rows[0], "id": "copy-of-doc0"})
    (folder / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = f"map_{uuid.uuid4().hex[:8]}"
    job = pipeline.submit(folder, name, create=True)
    deadline = time.monotonic() + 300
    while not get_job(job.id).finished:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert get_job(job.id).state == "done"
    return name


def test_the_binary_read_is_what_postgresql_stores(mapped: str) -> None:
    from pgrag.runtime import db
    from pgrag.store.collections import get_collection
    from pgrag.store.embedding_map import read_sample

    collection = get_collection(mapped)
    with db.connect() as conn:
        stored = conn.execute(
            "SELECT id, document_id, embedding FROM pgrag.chunks WHERE collection_id = %s",
            (collection.id,),
        ).fetchall()
        ids, documents, vectors = read_sample(conn, collection)
        sample = read_sample(conn, collection, limit=5)
        again = read_sample(conn, collection, limit=5)
    by_id = {row[0]: row for row in stored}
    assert sorted(ids.tolist()) == sorted(by_id)
    for chunk_id, document_id, vector in zip(ids, documents, vectors, strict=True):
        assert document_id == by_id[chunk_id][1]
        np.testing.assert_array_equal(vector, by_id[chunk_id][2].to_numpy())
    # A sample of a larger collection: `limit` of its chunks, the same ones each time.
    assert len(sample[0]) == 5 and set(sample[0]) <= set(by_id)
    assert np.array_equal(sample[0], again[0])


def test_a_map_is_cached_until_its_collection_changes(
    mapped: str, tmp_path: Path, wait_job: Callable[..., object]
) -> None:
    from pgrag.ingest import pipeline
    from pgrag.store.collections import get_collection
    from pgrag.store.embedding_map import chunk_map, color_groups

    collection = get_collection(mapped)
    first = chunk_map(collection)
    assert chunk_map(collection) is first  # unchanged: the cached map
    assert len(first.chunk_ids) == first.total == len(set(first.chunk_ids.tolist()))
    assert len(first.documents) == 13 and first.xy.shape == (first.total, 2)
    assert set(first.seconds) == {"read", "project", "marks"}
    # The copy and its original are a near-duplicate pair (from pgrag.duplicates()).
    assert first.duplicates_looked_for
    doc_of = dict(zip(first.chunk_ids.tolist(), first.document_index.tolist(), strict=True))
    pairs = [(doc_of[a], doc_of[b]) for a, b, _ in first.duplicates]
    assert len(pairs) == 1 and pairs[0][0] != pairs[0][1]
    assert [first.documents[d] for d in pairs[0]] == ["Doc 0", "Doc 0"]
    first_jobs, groups = color_groups(first, "job")
    assert len(first_jobs) == 3 and set(groups) == {0}  # one job, then "other" and "none"

    (tmp_path / "new.txt").write_text(sample_text(99, 40))
    job = pipeline.submit(tmp_path, mapped)
    assert wait_job(job.id).state == "done"
    second = chunk_map(collection)
    assert second is not first and second.total > first.total
    assert len(second.documents) == 14

    # Coloured by the job that loaded each point: the first job's, and the new one's.
    labels, groups = color_groups(second, "job")
    assert labels[-2:] == ["other", "none"] and len(groups) == second.total
    assert {labels[g] for g in groups} == {first_jobs[0], str(job.id)}
    # By a metadata key that no chunk has: every point is "none".
    labels, groups = color_groups(second, "metadata", "no-such-key")
    assert {labels[g] for g in groups} == {"none"}
    with pytest.raises(ValueError):
        color_groups(second, "colour")
