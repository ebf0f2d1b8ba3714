"""Retrieval quality on a BEIR-format test collection: nDCG@10 and recall@100 per mode.

A BEIR folder holds `corpus.jsonl` ({"_id", "title", "text", ...} per line), `queries.jsonl`
({"_id", "text"}) and `qrels/<split>.tsv` (query-id, corpus-id, score, with a header line).
`ingest_beir` loads the corpus through the real pipeline (the ingest and embed workers, as
`pgrag ingest corpus.jsonl` does; an existing collection needs no corpus file, its
documents' external ids being the qrels' corpus ids); `evaluate` runs every judged query in
each mode:

    dense, lexical, fused (the collection's fusion of both, `pgrag.query.fusion`), fused+rerank
    (cross-encoder over the fused list), and for comparison rrf (plain reciprocal rank
    fusion) and zscore (equal-weight z-scores, the default before issue #20)

Chunks are retrieved, and a document ranks where its best chunk ranks. The metrics follow
trec_eval, as pytrec_eval computes them for BEIR (`ndcg_cut.10`, `recall.100`):

- documents are ranked by score, ties broken by document id, larger id first (trec_eval);
- nDCG@k = DCG@k / IDCG@k, DCG@k = sum over the top k of rel_i / log2(i + 1) (i from 1, rel
  the judged relevance, linear gain), IDCG@k the same over the judged documents sorted by
  relevance;
- recall@k = |relevant among the top k| / |relevant|, relevant meaning relevance >= 1;
- a document whose id equals the query id is left out of the ranking (BEIR's
  `ignore_identical_ids`, for collections such as ArguAna);
- the mean is over the queries that have at least one relevant document; a query with no
  result counts as 0.

`write_synthetic_beir` generates a BEIR folder with known answers, for where no real test
collection can be had (see its docstring for what it does and does not measure).
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgrag.query.fusion import Fusion
from pgrag.store.schema import Collection, IngestJob

# evaluation mode -> (retrieve mode, rerank, fusion: None for the collection's own)
MODES: dict[str, tuple[str, bool, Fusion | None]] = {
    "dense": ("dense", False, None),
    "lexical": ("lexical", False, None),
    "fused": ("hybrid", False, None),
    "fused+rerank": ("hybrid", True, None),
    "rrf": ("hybrid", False, Fusion("rrf")),  # plain RRF, pgrag's fusion before issue #11
    "zscore": ("hybrid", False, Fusion("zscore")),  # equal-weight z-scores, issue #11 to #20
}
# "fused+rerank@20": the fused list with its top 20 reranked, whatever PGRAG_RERANK_TOP_N says.
AT_DEPTH = re.compile(r"fused\+rerank@([1-9][0-9]*)")


def parse_mode(mode: str) -> tuple[str, int | None, Fusion | None]:
    """(retrieve mode, rerank depth or None, fusion) of an evaluation mode; ValueError for
    an unknown one."""
    if found := AT_DEPTH.fullmatch(mode):
        return "hybrid", int(found[1]), None
    if mode not in MODES:
        raise ValueError(
            f"unknown evaluation mode {mode!r}: use {', '.join(MODES)} or fused+rerank@N"
        )
    search_mode, rerank, fusion = MODES[mode]
    if not rerank:
        return search_mode, None, fusion
    from pgrag.inference.rerank import rerank_depth

    return search_mode, rerank_depth(), fusion


@dataclass
class BeirData:
    folder: Path
    queries: dict[str, str]  # judged queries only
    qrels: dict[str, dict[str, int]]  # query id -> document id -> relevance

    @property
    def corpus_path(self) -> Path:
        return self.folder / "corpus.jsonl"

    def relevant(self, query_id: str) -> set[str]:
        """The documents judged relevant to a query."""
        return {d for d, r in self.qrels[query_id].items() if r > 0}


def load_beir(folder: str | Path, split: str = "test") -> BeirData:
    """Queries and judgments of a BEIR folder (the corpus stays on disk for ingestion)."""
    folder = Path(folder).expanduser().resolve()
    qrels_path = folder / "qrels" / f"{split}.tsv"
    # The corpus is read only to create a collection: judged queries of an existing
    # collection (its documents' external ids in the qrels) need none.
    for path in (folder / "queries.jsonl", qrels_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: not a BEIR folder (corpus.jsonl, "
                f"queries.jsonl, qrels/{split}.tsv)"
            )
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            # The header line ("query-id corpus-id score") has no integer score.
            if len(row) >= 3 and row[2].strip().lstrip("-").isdigit():
                qrels.setdefault(row[0], {})[row[1]] = int(row[2])
    queries: dict[str, str] = {}
    with (folder / "queries.jsonl").open() as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                if str(q["_id"]) in qrels:
                    queries[str(q["_id"])] = q["text"]
    missing = set(qrels) - set(queries)
    if missing:
        raise ValueError(
            f"{len(missing)} judged queries are not in queries.jsonl, e.g. {min(missing)!r}"
        )
    return BeirData(folder, queries, qrels)


def sample_queries(data: BeirData, n: int, seed: int = 0) -> BeirData:
    """`n` of `data`'s judged queries drawn at random (all of them when there are fewer)."""
    chosen = sorted(random.Random(seed).sample(sorted(data.queries), min(n, len(data.queries))))
    return BeirData(
        data.folder, {q: data.queries[q] for q in chosen}, {q: data.qrels[q] for q in chosen}
    )


# ---------------------------------------------------------------------------- metrics


def rank_documents(run: Mapping[str, float], exclude: str | None = None) -> list[str]:
    """Document ids by score, highest first, ties by id descending (trec_eval's order)."""
    ordered = sorted(run.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
    return [doc for doc, _ in ordered if doc != exclude]


def ndcg_at(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(i + 2) for i, doc in enumerate(ranking[:k]))
    ideal = sorted((r for r in judged.values() if r > 0), reverse=True)[:k]
    idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {doc for doc, r in judged.items() if r >= 1}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def score_run(
    runs: Mapping[str, Mapping[str, float]], qrels: Mapping[str, Mapping[str, int]]
) -> dict[str, float]:
    """Mean nDCG@10 and recall@100 of per-query runs ({query id: {doc id: score}})."""
    judged = [q for q, docs in qrels.items() if any(r >= 1 for r in docs.values())]
    if not judged:
        raise ValueError("no query has a relevant document")
    ndcg = recall = 0.0
    for q in judged:
        ranking = rank_documents(runs.get(q, {}), exclude=q)
        ndcg += ndcg_at(ranking, qrels[q], 10)
        recall += recall_at(ranking, qrels[q], 100)
    return {
        "ndcg@10": ndcg / len(judged),
        "recall@100": recall / len(judged),
        "queries": len(judged),
    }


# ---------------------------------------------------------------------------- runs


def ingest_beir(
    data: BeirData,
    collection: str,
    *,
    model: str | None = None,
    timeout: float = 24 * 3600,
    progress: Callable[[IngestJob], None] | None = None,
) -> Collection:
    """The collection holding `data`'s corpus: reused when it already has documents, else
    created (embedded with `model`, default: the setting's) and filled through the real
    pipeline (needs the ingest and embed workers). `progress` is called with the job's
    state every poll (half a second)."""
    from pgrag.ingest import jobs, pipeline
    from pgrag.runtime import db
    from pgrag.store.collections import create_collection, get_collection

    try:
        found = get_collection(collection)
        with db.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pgrag.documents"
                " WHERE collection_id = %s AND status = 'embedded'",
                (found.id,),
            ).fetchone()
        if row and row[0] > 0:
            return found
    except LookupError:
        found = None
    if not data.corpus_path.is_file():
        raise FileNotFoundError(
            f"{data.corpus_path} is missing: it is needed to fill collection {collection!r}"
        )
    if found is None:
        create_collection(collection, model=model)
    job = pipeline.submit(data.corpus_path, collection)
    deadline = time.monotonic() + timeout
    while not (state := jobs.get_job(job.id)).finished:
        if progress:
            progress(state)
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingest job {job.id} still {state.state} after {timeout:.0f} s")
        time.sleep(0.5)
    if state.state != "done":
        raise RuntimeError(f"ingest job {job.id} ended {state.state}: {state.error}")
    return get_collection(collection)


@dataclass
class ModeResult:
    metrics: dict[str, float]
    runs: dict[str, dict[str, float]] = field(repr=False)
    ms_per_query: float
    rerank_ms: list[float] = field(default_factory=list, repr=False)  # per query, if reranked

    def rerank_p(self, q: int) -> float | None:
        """The q-th percentile of the rerank stage's time (ms), None without a rerank."""
        if not self.rerank_ms:
            return None
        return float(statistics.quantiles(self.rerank_ms, n=100, method="inclusive")[q - 1])


def document_run(external_ids: Iterable[str]) -> dict[str, float]:
    """Chunks best first -> {document id: 1 / rank of its best chunk}."""
    run: dict[str, float] = {}
    for rank, doc in enumerate(external_ids, 1):
        run.setdefault(doc, 1.0 / rank)
    return run


def evaluate(
    collection: Collection,
    data: BeirData,
    modes: Sequence[str] = tuple(MODES),
    *,
    chunks: int = 200,
    progress: Callable[[str, int], None] | None = None,
) -> dict[str, ModeResult]:
    """Run every judged query in each mode over the top `chunks` chunks; metrics per mode,
    and the time of each query's rerank stage for the modes that rerank.

    The "fused+rerank@N" modes share their work: each query's fused list is reranked once,
    deepest mode last, the scores of the top N passages coming from the shallower modes'
    calls; a mode's rerank time is the time of the calls that scored its top N.
    """
    from pgrag.inference.embedding import collection_embedder
    from pgrag.query.retrieval import rerank_passages, retrieve

    parsed = {mode: parse_mode(mode) for mode in modes}
    ids = list(data.queries)
    embedder = collection_embedder(collection)
    vectors = embedder.encode(embedder.queries([data.queries[q] for q in ids]))
    results: dict[str, ModeResult] = {}
    for mode, (search_mode, depth, fusion) in parsed.items():
        if AT_DEPTH.fullmatch(mode):
            continue
        runs: dict[str, dict[str, float]] = {}
        rerank_ms: list[float] = []
        start = time.perf_counter()
        for i, (q, vector) in enumerate(zip(ids, vectors, strict=True)):
            found = retrieve(
                collection,
                data.queries[q],
                k=chunks,
                mode=search_mode,
                query_vector=vector,
                fusion=fusion,
            ).passages
            if depth is not None:
                t = time.perf_counter()
                found, _ = rerank_passages(data.queries[q], found, depth)
                rerank_ms.append((time.perf_counter() - t) * 1000)
            runs[q] = document_run(p.external_id for p in found)
            if progress:
                progress(mode, i + 1)
        elapsed = (time.perf_counter() - start) * 1000 / max(len(ids), 1)
        results[mode] = ModeResult(score_run(runs, data.qrels), runs, elapsed, rerank_ms)
    depths = {m: d for m, (_, d, _) in parsed.items() if AT_DEPTH.fullmatch(m) and d}
    if depths:
        results.update(_at_depths(collection, data, vectors, depths, chunks, progress))
    return {mode: results[mode] for mode in modes}


def _at_depths(
    collection: Collection,
    data: BeirData,
    vectors: np.ndarray,
    depths: dict[str, int],
    chunks: int,
    progress: Callable[[str, int], None] | None,
) -> dict[str, ModeResult]:
    """The fused+rerank@N modes, every query's fused list reranked once (see `evaluate`)."""
    from pgrag.inference.rerank import rerank_scores
    from pgrag.query.retrieval import retrieve

    ordered = sorted(depths, key=depths.__getitem__)
    runs: dict[str, dict[str, dict[str, float]]] = {m: {} for m in ordered}
    spent: dict[str, list[float]] = {m: [] for m in ordered}  # rerank ms per query
    recall_ms: list[float] = []
    for i, (q, vector) in enumerate(zip(data.queries, vectors, strict=True)):
        question = data.queries[q]
        t = time.perf_counter()
        fused = retrieve(
            collection, question, k=chunks, mode="hybrid", query_vector=vector
        ).passages
        recall_ms.append((time.perf_counter() - t) * 1000)
        scores: list[float] = []
        ms = 0.0
        for mode in ordered:
            t = time.perf_counter()
            scores.extend(rerank_scores(question, fused[len(scores) : depths[mode]]).tolist())
            ms += (time.perf_counter() - t) * 1000
            spent[mode].append(ms)
            head = sorted(range(len(scores)), key=lambda j: -scores[j])
            ranked = [fused[j] for j in head] + fused[len(scores) :]
            runs[mode][q] = document_run(p.external_id for p in ranked)
        if progress:
            progress(ordered[-1], i + 1)
    total = {m: statistics.mean(map(sum, zip(recall_ms, spent[m], strict=True))) for m in ordered}
    return {
        m: ModeResult(score_run(runs[m], data.qrels), runs[m], total[m], spent[m]) for m in ordered
    }


# ---------------------------------------------------------------------------- synthetic


FIRST = [
    "Ingrid",
    "Tomas",
    "Amara",
    "Kenji",
    "Lucia",
    "Pavel",
    "Noor",
    "Elif",
    "Mateo",
    "Sanna",
    "Ravi",
    "Greta",
    "Idris",
    "Yara",
    "Bruno",
    "Mei",
    "Oskar",
    "Leila",
    "Anton",
    "Zofia",
]
SYLLABLES = [
    "thor",
    "vas",
    "quen",
    "lak",
    "mir",
    "dal",
    "ber",
    "kov",
    "sen",
    "ran",
    "hol",
    "ter",
    "gan",
    "vik",
    "mar",
    "stad",
    "ul",
    "rho",
    "ven",
    "dor",
    "kas",
    "til",
]
# (as the document says it, as a question paraphrases it)
ROLES = [
    ("payroll specialist", "pays everyone's salaries"),
    ("data engineer", "builds the pipelines that move our analytics"),
    ("recruiter", "hires new staff"),
    ("security analyst", "protects us from hackers"),
    ("interface designer", "draws the screens of our apps"),
    ("accountant", "keeps the books"),
    ("lawyer", "handles contracts and legal questions"),
    ("facilities coordinator", "looks after the building"),
    ("account executive", "sells to big customers"),
    ("support engineer", "answers customer tickets"),
    ("translator", "turns documents into other languages"),
    ("nurse", "looks after sick colleagues"),
    ("chef", "cooks in the canteen"),
    ("statistician", "models uncertainty with probability"),
    ("electrician", "fixes wiring"),
]
CITIES = [
    ("Lisbon", "Portugal's capital"),
    ("Oslo", "the Norwegian capital"),
    ("Kyoto", "Japan's former imperial city"),
    ("Toronto", "the largest Canadian city"),
    ("Edinburgh", "Scotland's capital"),
    ("Nairobi", "Kenya's capital"),
    ("Dublin", "the Irish capital"),
    ("Seville", "Andalusia's capital"),
    ("Melbourne", "the second city of Australia"),
    ("Montreal", "Quebec's biggest city"),
    ("Vienna", "the Austrian capital"),
    ("Athens", "the Greek capital"),
]
HOBBIES = [
    ("spends weekends bouldering", "likes rock climbing"),
    ("plays the cello in an amateur orchestra", "is a classical musician"),
    ("runs marathons", "does long-distance races on foot"),
    ("keeps bees", "is an apiarist"),
    ("bakes sourdough", "makes homemade loaves"),
    ("sails a small yacht", "goes out on boats"),
    ("collects old stamps", "is into philately"),
    ("grows tomatoes on an allotment", "is a keen gardener"),
    ("paints watercolours", "makes art with a brush"),
    ("brews beer at home", "is a homebrewer"),
    ("dances tango", "does Argentine ballroom steps"),
    ("surfs before work", "rides waves in the morning"),
]
CATEGORIES = [
    "pressure valve",
    "thermal sensor",
    "flow meter",
    "gear pump",
    "servo motor",
    "relay switch",
    "hydraulic hose",
    "torque wrench",
]
LETTERS = "ABCDEFGHKMNPRSTVWXYZ"


def write_synthetic_beir(
    folder: str | Path, *, docs: int = 2000, queries: int = 300, seed: int = 0
) -> Path:
    """Write a BEIR folder of generated staff profiles and product sheets, each query with
    exactly one relevant document (relevance 1). Three kinds of query, in equal numbers, all
    judged in the split "test", and each kind alone in a split of its name:

    - name: "Which team does <first> <last> work in?": the name is the only thing that tells
      profiles apart, and surnames are built from shared syllables, so many look alike;
    - paraphrase: the role, office city and hobby of one profile, each reworded ("keeps the
      books in Portugal's capital and is an apiarist"), sharing no content word with it;
    - code: "How heavy is the <code>?" for one product sheet among thousands alike.

    It rewards exact matching (names, codes) and meaning matching (paraphrases) in known
    proportions, so it checks that each mode and the fusion work as intended; its figures
    are not comparable with published ones on real collections.
    """
    rng = random.Random(seed)
    folder = Path(folder)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    n_people = docs * 2 // 3
    combos = [
        (r, c, h)
        for r in range(len(ROLES))
        for c in range(len(CITIES))
        for h in range(len(HOBBIES))
    ]
    rng.shuffle(combos)
    if n_people > len(combos):
        raise ValueError(
            f"at most {len(combos) * 3 // 2} documents: attribute combinations run out"
        )
    corpus: list[dict[str, object]] = []
    people: list[tuple[str, str, str, tuple[int, int, int]]] = []
    names: set[str] = set()
    while len(people) < n_people:
        first = rng.choice(FIRST)
        last = "".join(rng.sample(SYLLABLES, rng.randint(2, 3))).capitalize()
        if f"{first} {last}" in names:
            continue
        names.add(f"{first} {last}")
        doc_id = f"person-{len(people):05}"
        role, city, hobby = combo = combos[len(people)]
        team = rng.choice(["finance", "platform", "people", "sales", "operations", "research"])
        corpus.append(
            {
                "_id": doc_id,
                "title": f"{first} {last}",
                "text": f"{first} {last} works as a {ROLES[role][0]} in the {team} team at the "
                f"{CITIES[city][0]} office, joined in {rng.randint(2005, 2024)} and "
                f"{HOBBIES[hobby][0]}.",
                "metadata": {"kind": "person", "team": team},
            }
        )
        people.append((doc_id, first, last, combo))
    products: list[tuple[str, str]] = []
    codes: set[str] = set()
    while len(corpus) < docs:
        code = f"{rng.choice(LETTERS)}{rng.choice(LETTERS)}-{rng.randint(1000, 9999)}"
        if code in codes:
            continue
        codes.add(code)
        doc_id = f"product-{len(products):05}"
        category = rng.choice(CATEGORIES)
        corpus.append(
            {
                "_id": doc_id,
                "title": f"{category.capitalize()} {code}",
                "text": f"The {code} is a {category} made in {rng.choice(CITIES)[0]}. It weighs "
                f"{rng.randint(1, 40)} kilograms and carries a {rng.randint(1, 5)}-year "
                f"warranty.",
                "metadata": {"kind": "product"},
            }
        )
        products.append((doc_id, code))

    per_kind = queries // 3
    if 2 * per_kind > len(people) or queries - 2 * per_kind > len(products):
        raise ValueError(f"{queries} queries need more documents than {docs}")
    picked = rng.sample(people, 2 * per_kind)
    questions: list[tuple[str, str, str]] = []  # (kind, text, relevant document id)
    for doc_id, first, last, _ in picked[:per_kind]:
        questions.append(("name", f"Which team does {first} {last} work in?", doc_id))
    for doc_id, _, _, (role, city, hobby) in picked[per_kind:]:
        text = f"Who {ROLES[role][1]} in {CITIES[city][1]} and {HOBBIES[hobby][1]}?"
        questions.append(("paraphrase", text, doc_id))
    for doc_id, code in rng.sample(products, queries - 2 * per_kind):
        questions.append(("code", f"How heavy is the {code}?", doc_id))
    rng.shuffle(questions)
    query_rows = [{"_id": f"q{i:04}", "text": text} for i, (_, text, _) in enumerate(questions)]
    qrels = [(kind, f"q{i:04}", doc_id) for i, (kind, _, doc_id) in enumerate(questions)]

    with (folder / "corpus.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in corpus)
    with (folder / "queries.jsonl").open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in query_rows)
    # Every query in the test split; each kind's alone in a split of its name.
    for split in ("test", "name", "paraphrase", "code"):
        with (folder / "qrels" / f"{split}.tsv").open("w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t1\n" for k, q, d in qrels if split in ("test", k))
    return folder
