"""The web console's costs, in a fresh embedded pgrag (PostgreSQL, Redis, workers, the API):

1. the embedding map's projection: PCA, a random projection and t-SNE (scikit-learn, on a
   smaller sample: it does not scale to 100,000 points on a CPU), each timed, and scored by
   the share of each point's 10 nearest neighbours (cosine, in 384 d) that stay among its 10
   nearest on the map; on synthetic clustered unit vectors (`ann_recall.clustered`) and on
   the sample corpus's real embeddings;
2. a whole map of a 100,000-chunk collection as the console gets it: the vectors read from
   PostgreSQL, projected, the near-duplicates and outliers found, and the bytes sent;
3. in Debian's Chromium: the bytes transferred for the first load of the console (compressed)
   and the time to an answer's first token, against `pgrag ask` (a new process) and
   `pgrag.client` (in process) on the same question.

    python bench/console.py                  # all of it (about 10 minutes on 2 busy cores)
    python bench/console.py --points 20000 --no-browser
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ann_recall import clustered
from common import ROOT, Worker, default_out, machine_info, pgrag_home, print_table, write_json
from synthetic_load import make_documents

from tests.conftest import EXAMPLES, QUESTIONS

DIM = 384


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def tsne(vectors: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, metric="cosine", init="pca", random_state=0).fit_transform(vectors)


def projections(vectors: np.ndarray, tsne_points: int, label: str) -> list[dict[str, Any]]:
    """Each method's seconds and neighbours kept, on `vectors` (t-SNE and PCA also on a
    sample of `tsne_points`, so the two are compared on the same points)."""
    from pgrag.store.embedding_map import kept_neighbours, pca_2d, random_2d

    rows = []
    sample = vectors[np.random.default_rng(1).permutation(len(vectors))[:tsne_points]]
    runs = [("pca", vectors, pca_2d), ("random", vectors, random_2d)]
    if tsne_points and len(sample) < len(vectors):
        runs.append(("pca", sample, pca_2d))
    if tsne_points:
        runs.append(("t-SNE", sample, tsne))
    for method, points, project in runs:
        xy, seconds = timed(lambda p=points, f=project: f(p))  # type: ignore[misc]
        rows.append(
            {
                "vectors": label,
                "method": method,
                "points": len(points),
                "seconds": round(seconds, 3),
                "kept@10": round(kept_neighbours(points, np.asarray(xy)), 3),
            }
        )
    return rows


def synthetic_vectors(points: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters of about 1,000 (`ann_recall.clustered`)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, points // 1000), DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return clustered(rng, centres, points)


def load_synthetic(name: str, points: int) -> tuple[Any, float]:
    """A collection of `points` chunks of synthetic vectors over 1,000 documents, loaded by
    binary COPY; and the seconds that took."""
    from psycopg.types.json import Jsonb

    from pgrag.runtime import db
    from pgrag.store.collections import create_collection

    collection = create_collection(name)
    start = time.perf_counter()
    documents = make_documents(collection.id, 1000)
    with (
        db.connect() as conn,
        conn.cursor().copy(
            "COPY pgrag.chunks (collection_id, document_id, ord, text, start_char, end_char,"
            " token_count, metadata, embedding) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["int4", "int8", "int4", "text", "int4", "int4", "int4", "jsonb", "vector"])
        for i, vector in enumerate(synthetic_vectors(points)):
            row = (collection.id, documents[i % 1000], i // 1000, f"chunk {i}", 0, 1, 1)
            copy.write_row((*row, Jsonb({"group": f"g{i % 7}"}), vector))
    return collection, time.perf_counter() - start


def whole_map(points: int) -> dict[str, Any]:
    from pgrag.store.embedding_map import chunk_map

    collection, load = load_synthetic("map_bench", points)
    cmap, first = timed(lambda: chunk_map(collection))
    _, cached = timed(lambda: chunk_map(collection))
    payload = cmap.to_bytes()
    return {
        "points": len(cmap.chunk_ids),
        "load_s": round(load, 1),
        "map_s": round(first, 2),
        **{f"{k}_s": round(v, 2) for k, v in cmap.seconds.items()},
        "cached_s": round(cached, 4),
        "duplicates_looked_for": cmap.duplicates_looked_for,
        "points_bytes": len(payload),
        "points_bytes_gzip": len(gzip.compress(payload)),
    }


# ---------------------------------------------------------------------------- browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


TRANSFERRED = """
const entries = [...performance.getEntriesByType('navigation'),
                 ...performance.getEntriesByType('resource')];
return entries.map(e => [e.name, e.transferSize, e.encodedBodySize, e.decodedBodySize]);
"""


def page_weight(url: str, token: str) -> list[dict[str, Any]]:
    """Bytes of each page's first load in a fresh browser (no cache): every request the page
    made, until its parts are in."""
    from selenium.webdriver.common.by import By

    from tests import browser

    rows = []
    pages = {"collections": "#collections .ok", "ask": "#ask", "map": "#map[data-points]"}
    for page, ready in pages.items():
        driver = browser.chromium()
        try:
            # The key is put in the tab's storage from another page of the API, so that the
            # console's own first load finds nothing in the browser's cache.
            driver.get(f"{url}/healthz")
            driver.execute_script("sessionStorage.setItem('pgrag-key', arguments[0])", token)
            path = "" if page == "collections" else f"{page}?collection=kb"
            driver.get(f"{url}/console/{path}")
            browser.wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ready), 120)  # noqa: B023
            time.sleep(0.5)
            entries = driver.execute_script(TRANSFERRED)
        finally:
            driver.quit()
        rows.append(
            {
                "page": page,
                "requests": len(entries),
                "transferred_bytes": sum(e[1] for e in entries),
                "body_bytes_compressed": sum(e[2] for e in entries),
                "body_bytes": sum(e[3] for e in entries),
            }
        )
    return rows


def browser_first_token(url: str, token: str, question: str, repeats: int) -> list[float]:

    from tests import browser

    driver = browser.chromium()
    times = []
    try:
        browser.sign_in(driver, f"{url}/console/ask", token)
        for _ in range(repeats):
            section = browser.ask(driver, question)
            times.append(float(section.get_attribute("data-first-token-ms") or "nan"))
    finally:
        driver.quit()
    return times


def cli_first_token(question: str, env: dict[str, str], repeats: int) -> list[float]:
    """Milliseconds from starting `pgrag ask` to the first byte of its answer on stdout."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "pgrag"), "ask", question, "--collection", "kb"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        proc.stdout.read(1)
        times.append((time.perf_counter() - start) * 1000)
        proc.communicate()
    return times


def client_first_token(question: str, repeats: int) -> list[float]:
    from pgrag import client

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for event in client.ask(question, "kb"):
            if event.type == "token":
                times.append((time.perf_counter() - start) * 1000)
                break
    return times


def browser_figures(home: Any, repeats: int) -> dict[str, Any]:
    from pgrag.runtime import processes
    from pgrag.store import keys

    _, token = keys.create_key("bench", ["admin"])
    port = free_port()
    env = {**os.environ, **home.env}
    api = subprocess.Popen(
        processes.api(port).argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        from tests.browser import wait_for

        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60)
        question = QUESTIONS[1][0]
        client_first_token(question, 1)  # warms the query worker's models
        first_token = {
            "browser": browser_first_token(url, token, question, repeats),
            "pgrag ask (new process)": cli_first_token(question, env, repeats),
            "pgrag.client (in process)": client_first_token(question, repeats),
        }
        return {"page_weight": page_weight(url, token), "first_token_ms": first_token}
    finally:
        api.terminate()
        api.wait(30)


def ingest(source: Path, name: str) -> Any:
    """The collection `name`, loaded from `source` by a real job."""
    from pgrag.ingest import pipeline
    from pgrag.ingest.jobs import get_job
    from pgrag.store.collections import get_collection

    job = pipeline.submit(source, name, create=True)
    while not get_job(job.id).finished:
        time.sleep(0.3)
    return get_collection(name)


def real_vectors(collection: Any) -> np.ndarray:
    from pgrag.runtime import db
    from pgrag.store.embedding_map import read_sample

    with db.connect() as conn:
        return read_sample(conn, collection)[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=100_000, help="vectors of the map")
    parser.add_argument(
        "--beir",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "scifact",
        help="a BEIR folder whose first --docs documents give real embeddings",
    )
    parser.add_argument("--docs", type=int, default=1_000)
    parser.add_argument("--tsne-points", type=int, default=1_000, help="0: no t-SNE")
    parser.add_argument("--repeats", type=int, default=5, help="questions timed per client")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--out", type=Path, default=default_out("console"))
    args = parser.parse_args()

    results: dict[str, Any] = {
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    rows = projections(synthetic_vectors(args.points), 0, "synthetic")

    with pgrag_home() as home:
        workers = [Worker(home, queue) for queue in ("ingest", "embed", "query")]
        try:
            for w in workers:
                w.wait_ready()
            rows += projections(real_vectors(ingest(EXAMPLES / "corpus", "kb")), 0, "sample corpus")
            corpus = args.beir / "corpus.jsonl"
            if corpus.exists():
                subset = Path(home.path) / "beir.jsonl"
                with corpus.open() as f:
                    subset.write_text("".join(itertools.islice(f, args.docs)))
                vectors = real_vectors(ingest(subset, "beir"))
                rows += projections(vectors, args.tsne_points, args.beir.name)
                from pgrag.store.inspection import duplicate_pairs

                _, seconds = timed(lambda: duplicate_pairs("beir"))
                results["duplicates"] = {"chunks": len(vectors), "s": round(seconds, 2)}
            results["map"] = whole_map(args.points)
            if not args.no_browser:
                results |= browser_figures(home, args.repeats)
        finally:
            for w in workers:
                w.stop()

    results["projections"] = rows
    print_table(
        "Projections (kept@10: share of a point's 10 nearest by cosine that stay its 10 nearest)",
        [[r["vectors"], r["method"], r["points"], r["seconds"], r["kept@10"]] for r in rows],
        ["vectors", "method", "points", "seconds", "kept@10"],
    )
    m = results["map"]
    print_table(
        f"A whole map of {m['points']:,} chunks (console: GET /console/data/map/...)",
        [[k, v] for k, v in m.items()],
        ["", ""],
    )
    if "duplicates" in results:
        d = results["duplicates"]
        print(f"duplicates() over {d['chunks']:,} chunks: {d['s']:.1f} s")
    if "page_weight" in results:
        print_table(
            "First load of a console page (fresh browser, no cache)",
            [list(r.values()) for r in results["page_weight"]],
            list(results["page_weight"][0]),
        )
        print_table(
            f"Time to the first answer token, ms ({args.repeats} questions each)",
            [
                [who, round(statistics.median(t), 1), round(min(t), 1), round(max(t), 1)]
                for who, t in results["first_token_ms"].items()
            ],
            ["client", "median", "min", "max"],
        )
    print(write_json(args.out, "console", results))


if __name__ == "__main__":
    main()
