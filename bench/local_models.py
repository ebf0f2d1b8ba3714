"""The local generator's models side by side: load time, first token and decode rate.

    python bench/local_models.py [--models HuggingFaceTB/SmolLM2-135M-Instruct,google/gemma-3-270m]
        [--folder ../shared/data/xquad-en] [--prompts 6] [--backend auto] [--out PATH]

Each model answers the same prompts: pgrag's own prompt (`build_prompt`, fitted to the
model's context) over xquad-en paragraphs, a question of the first paragraph and the three
paragraphs after it as passages. The models take turns prompt by prompt, so a machine busy
with other work slows both alike: compare them as ratios. Per model: the first load in this
process (the GGUF -> safetensors conversion when its copy is not cached yet in PGRAG_HOME,
and the OpenVINO export on a CPU), prompt tokens, the time to the first piece of the answer
(the prompt's prefill), and the decode rate (answer tokens after the first / seconds after
the first piece), medians over the prompts. No pipeline, no services: the generator alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import default_out, print_table, write_json

MODELS = "HuggingFaceTB/SmolLM2-135M-Instruct,google/gemma-3-270m"


@dataclass
class Doc:
    external_id: str
    title: str | None
    text: str


def prompts(folder: Path, n: int) -> list[tuple[str, list[Doc]]]:
    """`n` questions, each with four consecutive paragraphs (its own first)."""
    docs = [json.loads(line) for line in (folder / "corpus.jsonl").open()]
    queries = [json.loads(line) for line in (folder / "queries.jsonl").open()]
    qrels = [line.split("\t") for line in (folder / "qrels" / "test.tsv").open()][1:]
    by_id = {d["_id"]: i for i, d in enumerate(docs)}
    question = {q["_id"]: q["text"] for q in queries}
    out: list[tuple[str, list[Doc]]] = []
    step = max(1, len(qrels) // n)
    for qid, did, _ in qrels[::step][:n]:
        i = by_id[did]
        out.append(
            (
                question[qid],
                [Doc(d["_id"], d.get("title"), d["text"]) for d in docs[i : i + 4]],
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=MODELS, help="comma-separated PGRAG_LOCAL_MODEL values")
    parser.add_argument("--folder", type=Path, default=Path("../shared/data/xquad-en"))
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--backend", default="auto", help="PGRAG_INFERENCE_BACKEND")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from pgrag.inference.openvino_lm import OpenVINOLM
    from pgrag.inference.weights import pick_backend
    from pgrag.query.generation import GeneratorError, Request
    from pgrag.query.generation.local import LocalGenerator
    from pgrag.runtime.settings import get_settings

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    gens = {m: LocalGenerator(model=m) for m in names}
    runs: dict[str, dict[str, Any]] = {m: {"answers": []} for m in names}
    for m, gen in gens.items():
        gen.backend = pick_backend(args.backend, gen.device)
        started = time.perf_counter()
        _, model = gen.load()
        runs[m]["load_s"] = time.perf_counter() - started
        # The backend it runs in: a model that OpenVINO cannot export runs with torch.
        runs[m]["backend"] = (
            gen.backend
            if isinstance(model, OpenVINOLM)
            else f"torch-{str(model.dtype).removeprefix('torch.')}"
        )
    timeout = get_settings().generate_timeout_s
    for question, docs in prompts(args.folder, args.prompts):
        for m, gen in gens.items():
            started = time.perf_counter()
            request = Request(question, docs, time.monotonic() + timeout)
            first = 0.0
            pieces: list[str] = []
            failed = ""
            try:
                for piece in gen.stream(request):
                    first = first or time.perf_counter()
                    pieces.append(piece)
            except GeneratorError as e:  # a timeout: its tokens so far still count
                failed = str(e)
            end = time.perf_counter()
            first = first or end
            answer = "".join(pieces)
            tokens = gen.count_tokens(answer)
            runs[m]["answers"].append(
                {
                    "question": question,
                    "answer": answer,
                    "tokens": tokens,
                    "failed": failed,
                    "first_token_s": first - started,
                    "decode_tokens_per_s": (tokens - 1) / (end - first) if tokens > 1 else 0.0,
                }
            )
            print(f"{m}: {question!r} -> {answer!r}", file=sys.stderr)
    rows = []
    for m, run in runs.items():
        a = run["answers"]
        run["summary"] = {
            "first_token_s_p50": statistics.median(x["first_token_s"] for x in a),
            "decode_tokens_per_s_p50": statistics.median(x["decode_tokens_per_s"] for x in a),
            "answer_tokens_p50": statistics.median(x["tokens"] for x in a),
            "failed": sum(bool(x["failed"]) for x in a),
        }
        s = run["summary"]
        rows.append(
            [
                m,
                run["backend"],
                f"{run['load_s']:.1f}",
                len(a),
                s["answer_tokens_p50"],
                f"{s['first_token_s_p50']:.2f}",
                f"{s['decode_tokens_per_s_p50']:.1f}",
                s["failed"],
            ]
        )
    print_table(
        "local generator models, same prompts, taking turns",
        rows,
        [
            "model",
            "backend",
            "load s",
            "prompts",
            "answer tokens p50",
            "first token s p50",
            "decode tokens/s p50",
            "failed",
        ],
    )
    write_json(args.out or default_out("local-models"), "local_models", {"runs": runs})


if __name__ == "__main__":
    main()
