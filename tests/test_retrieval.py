"""Retrieval end to end: BM25, filters, fusion, rerank and the CLI over a corpus ingested by a
real worker into real PostgreSQL + pgvector.

The reranker here is a real sentence-transformers CrossEncoder built from the local
all-MiniLM-L6-v2 weights with a freshly initialised (random) classification head, set through
PGRAG_RERANK_MODEL as any cross-encoder folder would be. It exercises the code path (loading,
ordering by the model's own scores, keeping every stage's score), not rerank quality: the
packaged trained cross-encoder is tested in test_rerank.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import psycopg
import pytest

from pgrag.ingest import pipeline
from pgrag.ingest.jobs import get_job
from pgrag.query.retrieval import Passage, dense_params, dense_sql, embed_query, retrieve
from pgrag.runtime import db
from pgrag.store import indexing, lexical
from pgrag.store.analyzer import Analyzer
from pgrag.store.collections import get_collection
from pgrag.store.filters import parse_filter, parse_filters
from pgrag.store.lexical import K1, B, Term, bm25_recall, probe_size, rest_bounds
from pgrag.store.schema import Collection
from tests.conftest import plan_nodes, stored_chunk_lexemes

pytestmark = pytest.mark.slow

CATEGORIES = ["pressure valve", "thermal sensor", "flow meter", "gear pump", "servo motor"]
CITIES = ["Porto", "Gdansk", "Tampere", "Lyon", "Graz", "Bilbao", "Aarhus", "Brno"]
LETTERS = "ABCDEFGHKMNPRSTVWXY"
MAKERS = ["Halvorsen Instruments", "Kessler Works", "Nordvik Labs", "Ardent Controls"]

# Documents the tests look for by id, next to 500 generated product sheets.
SPECIAL = [
    # Keyword-heavy: an exact product code, next to sheets whose codes look alike to the
    # embedding model but share no lexeme with it.
    {
        "id": "code-target",
        "title": "Gear pump ZT-4417",
        "text": "ZT-4417 is a gear pump made in Graz. It weighs 3 kilograms and comes with a "
        "2-year warranty from Kessler Works.",
    },
    {
        "id": "code-near-1",
        "title": "Gear pump TZ-4471",
        "text": "TZ-4471 is a gear pump made in Graz. It weighs 4 kilograms and comes with a "
        "2-year warranty from Kessler Works.",
    },
    {
        "id": "code-near-2",
        "title": "Gear pump ZT4417B",
        "text": "ZT4417B is a gear pump made in Graz. It weighs 3 kilograms and comes with a "
        "3-year warranty from Kessler Works.",
    },
    # Keyword-heavy: a rare surname, next to colleagues with spellings alike.
    {
        "id": "surname-target",
        "title": "Field engineer",
        "text": "Ingrid Vasquez-Thorlaksson services the flow meters of the northern plants and "
        "trains new field engineers.",
    },
    {
        "id": "surname-near-1",
        "title": "Field engineer",
        "text": "Ingrid Vasques-Torlakson services the flow meters of the southern plants and "
        "trains new field engineers.",
    },
    {
        "id": "surname-near-2",
        "title": "Field engineer",
        "text": "Inga Velasquez-Thorlakson services the gear pumps of the northern plants and "
        "trains new field engineers.",
    },
    # Meaning, not words: the answer to "is help available at 3am on a sunday" ...
    {
        "id": "support-target",
        "title": "Night support desk",
        "text": "Our help desk answers calls at any hour of the night, weekends and public "
        "holidays included.",
    },
    # ... other support pages that the embedding model finds close ...
    {
        "id": "support-phone",
        "title": "Phone support",
        "text": "Phone support runs from nine to five on weekdays; outside those hours leave a "
        "message.",
    },
    {
        "id": "support-email",
        "title": "Email support",
        "text": "Email support replies within one business day, including to messages sent "
        "overnight.",
    },
    # ... and a page that shares more of the question's words but answers something else.
    {
        "id": "support-distractor",
        "title": "Sunday deliveries",
        "text": "Deliveries are not available on a Sunday; orders placed on a Sunday ship on "
        "Monday, and 3am orders count as Sunday orders.",
    },
]


def product_rows(n: int = 500, seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    codes: set[str] = {"ZT-4417"}
    while len(rows) < n:
        code = f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randint(1000, 9999)}"
        if code in codes:
            continue
        codes.add(code)
        category, city = rng.choice(CATEGORIES), rng.choice(CITIES)
        kind = rng.choice(["compact", "rugged", "low-noise"])
        i = len(rows)
        rows.append(
            {
                "id": f"p{i:03}",
                "title": f"{category.capitalize()} {code}",
                "text": f"{code} is a {kind} {category} made "
                f"in {city}. It weighs {rng.randint(1, 40)} kilograms and comes with a "
                f"{rng.randint(1, 5)}-year warranty from {rng.choice(MAKERS)}.",
                # 1 in 50 sheets is in Icelandic; years spread over 2015-2024.
                "metadata": {
                    "lang": "is" if i % 50 == 0 else "en",
                    "year": 2015 + i % 10,
                    "tags": ["catalog", category.split()[-1]],
                },
            }
        )
    # Field engineers whose names are built from the same syllables, so many look alike.
    syllables = ["thor", "vas", "quen", "lak", "mir", "dal", "sen", "kov", "ber", "son"]
    for i in range(40):
        first = rng.choice(["Ingrid", "Inga", "Ingo", "Iris"])
        last = "-".join("".join(rng.sample(syllables, 2)).capitalize() for _ in range(2))
        rows.append(
            {
                "id": f"e{i:02}",
                "title": "Field engineer",
                "text": f"{first} {last} services the flow meters of the "
                f"{rng.choice(['northern', 'southern', 'coastal'])} plants and trains new "
                "field engineers.",
                "metadata": {"lang": "en", "year": 2020},
            }
        )
    return rows


@pytest.fixture(scope="module")
def corpus(worker: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collection]:
    """The product catalog, ingested once for the module by the real worker."""
    from tests.conftest import _names

    path = tmp_path_factory.mktemp("catalog") / "catalog.jsonl"
    rows = product_rows() + [{**r, "metadata": {"lang": "en", "year": 2024}} for r in SPECIAL]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    name = f"t{next(_names)}_retrieval"
    job = pipeline.submit(path, name, create=True)
    deadline = time.monotonic() + 600
    while not (done := get_job(job.id)).finished:
        assert time.monotonic() < deadline, "ingest did not finish"
        time.sleep(0.2)
    assert (done.state, done.docs_done) == ("done", len(rows)), done.error
    yield get_collection(name)


def ids(passages: list[Passage]) -> list[str]:
    return [p.external_id for p in passages]


# ---------------------------------------------------------------------------- BM25


def brute_force_bm25(collection: Collection, query: str) -> dict[int, float]:
    """BM25 of every chunk in Python, from the stored chunk texts and titles alone (not from
    the index)."""
    counts = stored_chunk_lexemes(collection.id, collection.text_config)
    n = len(counts)
    avgdl = sum(sum(c.values()) for c in counts.values()) / n
    df: Counter[str] = Counter()
    for c in counts.values():
        df.update(c.keys())
    qtf = Analyzer(collection.text_config).lexemes(query)
    scores: dict[int, float] = {}
    for chunk_id, c in counts.items():
        length = sum(c.values())
        for lexeme in qtf.keys() & c.keys():
            tf = c[lexeme]
            idf = math.log(1 + (n - df[lexeme] + 0.5) / (df[lexeme] + 0.5))
            part = qtf[lexeme] * idf * tf * (K1 + 1) / (tf + K1 * (1 - B + B * length / avgdl))
            scores[chunk_id] = scores.get(chunk_id, 0.0) + part
    return scores


def ranked(scores: dict[int, float], k: int) -> list[tuple[int, float]]:
    """The k best, as the search orders them: scores equal to 1e-9 tie, and the lower chunk
    id goes first."""
    return sorted(scores.items(), key=lambda kv: (-round(kv[1] * 1e9), kv[0]))[:k]


QUERIES = [
    "ZT-4417",
    "compact pressure valve made in Graz",
    "warranty from Kessler Works Kessler",
    "help desk at night",
    "the and of",
]


def test_bm25_equals_brute_force(corpus: Collection) -> None:
    for query in QUERIES:
        expected = brute_force_bm25(corpus, query)
        got = retrieve(corpus, query, k=20, mode="lexical").passages
        best = ranked(expected, 20)
        assert [p.chunk_id for p in got] == [c for c, _ in best], query
        np.testing.assert_allclose(
            [p.scores["lexical"] for p in got], [s for _, s in best], rtol=1e-9
        )
        assert [p.ranks["lexical"] for p in got] == list(range(1, len(got) + 1))
    assert retrieve(corpus, "the and of", mode="lexical").passages == []  # only stop words


@pytest.mark.parametrize("k", [1, 5, 20])
def test_pruned_bm25_equals_brute_force(
    corpus: Collection, k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every posting list counted as long, the common lexemes' lists are skipped
    wherever the probe's floor allows: the same chunks and scores as scoring everything."""
    queries = [
        *QUERIES[:-1],
        "flow meters of the plants",  # common words only
        "Ingrid services the flow meters",  # one rare word among common ones
        "ZT-4417 pump pump valve",  # a lexeme twice in the query
    ]
    monkeypatch.setattr(lexical, "PROBE_ENTRIES", 0)  # the rarest list alone sets the floor
    with db.connect() as conn:
        explaining = Explaining(conn)
        for query in queries:
            expected = brute_force_bm25(corpus, query)
            best = ranked(expected, k)
            rows = bm25_recall(
                explaining,  # type: ignore[arg-type]
                corpus.id,
                corpus.text_config,
                query,
                k,
                long_list=0,
            )
            assert [r[0] for r in rows] == [c for c, _ in best], query
            np.testing.assert_allclose([r[-1] for r in rows], [s for _, s in best], rtol=1e-9)
    assert explaining.skipped > 0  # the pruning ran, not only the full scoring


class Explaining:
    """A connection that first runs the BM25 statement under EXPLAIN ANALYZE and counts the
    posting lists it skipped (the rows of its rest CTE)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.skipped = 0

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        if "WITH terms AS" in sql:
            explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + sql
            plan = self.conn.execute(explain, params).fetchone()[0]  # type: ignore[index]
            self.skipped += sum(
                int(node["Actual Rows"])
                for node in plan_nodes(plan[0]["Plan"])
                if node.get("Subplan Name") == "CTE rest"
            )
        return self.conn.execute(sql, params)


def test_probe_takes_the_rarest_lists_up_to_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    rare, mid, common = Term("rare", 50, 8.0), Term("mid", 6000, 1.5), Term("common", 9000, 1.0)
    monkeypatch.setattr(lexical, "PROBE_ENTRIES", 10_000)
    assert probe_size([rare, mid, common], 10) == 2  # 6,050 entries
    assert probe_size([common], 10) == 1  # always one
    monkeypatch.setattr(lexical, "PROBE_ENTRIES", 100)
    assert probe_size([rare, mid, common], 10) == 1
    assert probe_size([rare, mid, common], 60) == 2  # 50 entries do not make 60 chunks


def test_rest_bounds_cover_the_longest_lists_only_while_safe() -> None:
    """MaxScore's candidates for skipping: the longest lists, each with the most that it and
    every longer list add (weight * (k1 + 1) each), while the lists left hold k entries."""
    rare, mid, common = Term("rare", 50, 8.0), Term("mid", 6000, 1.5), Term("common", 9000, 1.0)
    terms = [rare, mid, common]
    both = 1.0 * (K1 + 1) + 1.5 * (K1 + 1)
    assert rest_bounds(terms, 10, 1) == [None, both, 1.0 * (K1 + 1)]
    assert rest_bounds(terms, 100, 1) == [None, None, 1.0 * (K1 + 1)]  # 50 < 100 entries
    assert rest_bounds(terms, 10, 1, long_list=7000) == [None, None, 1.0 * (K1 + 1)]
    assert rest_bounds(terms, 10, 1, long_list=10_000) == [None, None, None]
    assert rest_bounds(terms, 10, 2) == [None, None, 1.0 * (K1 + 1)]  # probed: scored
    assert rest_bounds([common], 10, 0, long_list=0) == [None]  # one list: no other to score


# ---------------------------------------------------------------------------- fusion


@pytest.mark.parametrize(
    "query, target",
    [
        ("How heavy is the ZT-4417?", "code-target"),
        ("What does Ingrid Vasquez-Thorlaksson do?", "surname-target"),
    ],
)
def test_hybrid_finds_exact_keywords_that_dense_misses(
    corpus: Collection, query: str, target: str
) -> None:
    dense = retrieve(corpus, query, k=10, mode="dense").passages
    lexical = retrieve(corpus, query, k=10, mode="lexical").passages
    hybrid = retrieve(corpus, query, k=10, mode="hybrid").passages
    assert ids(dense)[0] != target  # the premise: dense alone ranks another sheet first
    assert ids(lexical)[0] == target
    assert ids(hybrid)[0] == target
    top = hybrid[0]
    assert set(top.scores) >= {"lexical", "fused"} and set(top.ranks) >= {"lexical", "fused"}


def test_hybrid_keeps_meaning_matches_that_lexical_misses(corpus: Collection) -> None:
    query = "is help available at 3am on a sunday"
    dense = retrieve(corpus, query, k=10, mode="dense").passages
    lexical = retrieve(corpus, query, k=10, mode="lexical").passages
    hybrid = retrieve(corpus, query, k=10, mode="hybrid").passages
    assert ids(lexical)[0] == "support-distractor"  # the premise: more shared words
    assert ids(dense)[0] == "support-target"
    # Both lists are decisive here, dense for the meaning and BM25 for three rare shared
    # words: the fusion keeps both winners above everything else. Which of the two comes
    # first depends on how far each stands out in its list (pgrag/query/fusion.py); with BM25's
    # zeros counted, the distractor's three rare words win by a little (they lost by a
    # little under RRF). The meaning match is kept, not lost.
    assert set(ids(hybrid)[:2]) == {"support-target", "support-distractor"}
    assert hybrid[0].scores["fused"] >= hybrid[1].scores["fused"]
    target = next(p for p in hybrid if p.external_id == "support-target")
    assert {"dense", "fused"} <= set(target.scores)


def test_unknown_mode_and_bad_k(corpus: Collection) -> None:
    with pytest.raises(ValueError, match="unknown search mode 'sparse'"):
        retrieve(corpus, "valve", mode="sparse")
    with pytest.raises(ValueError, match="k must be"):
        retrieve(corpus, "valve", k=0)


# ---------------------------------------------------------------------------- filters


def test_selective_filter_still_returns_k_rows_from_the_index(corpus: Collection) -> None:
    """10 of 550 chunks are lang=is: the iterative index scan still yields k of them."""
    k = 5
    filters = parse_filters(["lang=is"])
    vector = embed_query(corpus, "pressure valve made in Porto")
    with db.connect() as conn:
        # On a table this small the planner rightly prefers an exact scan of the 10 matching
        # rows; hold it to the HNSW path, which serves the ORDER BY without a sort.
        conn.execute("SET enable_sort = off")
        indexing.set_search_params(conn, k)
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN " + dense_sql(corpus, filters), dense_params(vector, k, filters)
            )
        )
        rows = conn.execute(dense_sql(corpus, filters), dense_params(vector, k, filters)).fetchall()
        # Without the iterative scan, one pass over ef_search candidates finds too few.
        conn.execute("SELECT set_config('hnsw.iterative_scan', 'off', true)")
        single_pass = conn.execute(
            dense_sql(corpus, filters), dense_params(vector, k, filters)
        ).fetchall()
    assert corpus.index_name in plan and "Index Scan" in plan, plan
    assert "metadata @>" in plan, plan  # the filter is applied on the index scan's rows
    assert len(rows) == k and all(r[6]["lang"] == "is" for r in rows)
    assert len(single_pass) < k
    distances = [r[7] for r in rows]
    assert distances == sorted(distances)

    for mode in ("dense", "lexical", "hybrid"):
        got = retrieve(
            corpus, "compact pressure valve", k=k, mode=mode, filters=["lang=is"]
        ).passages
        assert got and all(p.metadata["lang"] == "is" for p in got), mode
    assert len(retrieve(corpus, "valve", k=k, mode="dense", filters=["lang=is"]).passages) == k


def test_ef_search_comes_from_k_and_the_setting(
    corpus: Collection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The search session's hnsw.ef_search: the setting's floor, 2k past it, 1000 at most."""
    from pgrag.runtime.settings import get_settings

    def ef_for(k: int) -> int:
        with db.connect() as conn:
            indexing.set_search_params(conn, k)
            return int(conn.execute("SHOW hnsw.ef_search").fetchone()[0])  # type: ignore[index]

    assert (ef_for(10), ef_for(100), ef_for(900)) == (64, 200, 1000)
    monkeypatch.setenv("PGRAG_HNSW_EF_SEARCH", "300")
    get_settings.cache_clear()
    try:
        assert (ef_for(10), ef_for(200)) == (300, 400)
        vector = embed_query(corpus, "pressure valve made in Porto")
        assert len(retrieve(corpus, "", k=10, mode="dense", query_vector=vector).passages) == 10
    finally:
        monkeypatch.delenv("PGRAG_HNSW_EF_SEARCH")
        get_settings.cache_clear()


def test_filter_operators(corpus: Collection) -> None:
    def found(*filters: str, mode: str = "dense") -> list[Passage]:
        return retrieve(corpus, "flow meter", k=30, mode=mode, filters=filters).passages

    assert all(p.metadata["year"] >= 2022 for p in found("year>=2022"))
    assert all(2017 < p.metadata["year"] < 2019 for p in found("year>2017", "year<2019"))
    assert all(p.metadata["year"] == 2020 for p in found("year=2020"))
    assert all(p.metadata["lang"] != "en" for p in found("lang!=en"))
    assert all("pump" in p.metadata["tags"] for p in found("tags~pump", mode="lexical"))
    assert found("tags~nothing-has-this") == []
    assert len(found("year<=2016", "lang=en")) == 30


@pytest.mark.parametrize(
    "expression", ["lang", "=en", "lang=", "year>=true", "la ng=en", "lang!en", "year<null"]
)
def test_malformed_filter_is_a_clear_value_error(corpus: Collection, expression: str) -> None:
    with pytest.raises(ValueError, match="filter"):
        retrieve(corpus, "valve", filters=[expression])


def test_injection_attempts_are_harmless(corpus: Collection) -> None:
    with db.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS public.x (id int)")
    for attempt in [
        "lang=en'; drop table x; --",
        "lang!=en'); DROP TABLE public.x; --",
        "year>=1 OR 1=1",
        "tags~'); drop table x; --",
    ]:
        for mode in ("dense", "lexical"):
            got = retrieve(corpus, "valve", k=5, mode=mode, filters=[attempt]).passages
            if attempt.startswith("lang="):
                assert got == []  # the whole value is a (strange) string: nothing has it
    with pytest.raises(ValueError):
        parse_filter("lang'; drop table x; --=en")
    with db.connect() as conn:
        assert conn.execute("SELECT to_regclass('public.x') IS NOT NULL").fetchone() == (True,)
        row = conn.execute(
            "SELECT count(*) FROM pgrag.chunks WHERE collection_id = %s", (corpus.id,)
        ).fetchone()
        assert row is not None and row[0] > 500


# ---------------------------------------------------------------------------- rerank


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real CrossEncoder with a random head (see the module docstring), saved locally and
    configured through PGRAG_RERANK_MODEL."""
    from sentence_transformers import CrossEncoder

    from pgrag.inference.weights import resolve_model
    from pgrag.runtime.settings import get_settings

    path = str(tmp_path_factory.mktemp("reranker"))
    CrossEncoder(
        resolve_model("sentence-transformers/all-MiniLM-L6-v2"), num_labels=1, device="cpu"
    ).save(path)
    os.environ["PGRAG_RERANK_MODEL"] = path
    get_settings.cache_clear()
    yield path
    del os.environ["PGRAG_RERANK_MODEL"]
    get_settings.cache_clear()


def test_rerank_orders_by_the_cross_encoders_scores(corpus: Collection, reranker_path: str) -> None:
    from pgrag.inference.rerank import (
        load_reranker,
        passage_text,
        rerank_depth,
        rerank_scores,
        score_pairs,
    )

    query = "compact pressure valve with a long warranty"
    fused = retrieve(corpus, query, k=50, mode="hybrid").passages
    result = retrieve(corpus, query, k=10, mode="hybrid", rerank=True)
    reranked = result.passages
    assert set(result.timings) == {"embed", "recall", "rerank"}

    model = load_reranker(reranker_path)
    assert load_reranker() is model  # loaded once per process
    head = fused[: rerank_depth()]
    own = score_pairs([(query, passage_text(p)) for p in head])  # batched as retrieve does
    expected = sorted(zip(own, (p.chunk_id for p in head), strict=True), key=lambda t: -t[0])[:10]
    assert [p.chunk_id for p in reranked] == [c for _, c in expected]
    np.testing.assert_allclose(
        [p.scores["rerank"] for p in reranked], [s for s, _ in expected], rtol=1e-5
    )
    for rank, p in enumerate(reranked, 1):
        assert {"fused", "rerank"} <= set(p.scores) and {"dense", "lexical"} & set(p.scores)
        assert p.ranks["rerank"] == rank
    # Batching does not change a score, beyond bf16's rounding (OpenVINO on this CPU): a
    # pair padded to another length sums its attention in another order.
    np.testing.assert_allclose(
        rerank_scores(query, fused, batch_size=3),
        rerank_scores(query, fused, batch_size=64),
        atol=2e-3,
    )


def test_missing_reranker_model_is_a_clear_error() -> None:
    from pgrag.inference.rerank import RerankerUnavailable, load_reranker

    with pytest.raises(
        RerankerUnavailable, match=r"'cross-encoder/nope-not-here'.*PGRAG_RERANK_MODEL"
    ):
        load_reranker("cross-encoder/nope-not-here", "cpu")


def test_cli_search_with_rerank_and_filter(corpus: Collection, reranker_path: str) -> None:
    def pgrag(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgrag", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PGRAG_RERANK_MODEL": reranker_path},
        )

    run = pgrag(
        "search",
        "compact pressure valve",
        "--collection",
        corpus.name,
        "-k",
        "3",
        "--rerank",
        "--filter",
        "lang=is",
        "--filter",
        "year>=2015",
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 3
    for line in lines:
        assert "rerank=" in line and "fused=" in line
    lang_is = {r["id"] for r in product_rows() if r["metadata"]["lang"] == "is"}  # type: ignore[index]
    assert {line.split()[1] for line in lines} <= lang_is
    assert "timings:" in run.stdout and "rerank" in run.stdout.splitlines()[-1]

    bad = pgrag("search", "valve", "--collection", corpus.name, "--filter", "year>=")
    assert bad.returncode == 1 and "bad filter" in bad.stderr
    dense = pgrag("search", "ZT-4417", "--collection", corpus.name, "--mode", "lexical", "-k", "1")
    assert dense.returncode == 0 and "code-target" in dense.stdout
