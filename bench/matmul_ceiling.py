"""How fast the embedder could run on this CPU: its matrix products' work against the CPU's
best matrix-product rate, per precision.

    python bench/matmul_ceiling.py --beir ../shared/data/scifact [--texts 64] [--turns 5]

In this process, no services. Counts the multiply-adds of all-MiniLM-L6-v2 on `--texts`
SciFact documents (their tokens, cut at the model's limit: the six layers' projections, the
feed-forward blocks and attention's two products), times torch fp32 embedding them through
`Embedder.encode`, and times one matrix product of the feed-forward's shape (2048 x 384 by
384 x 1536, the largest in the model) in torch fp32, OpenVINO fp32 and OpenVINO int8 (the
product quantized by NNCF, as the int8 backend does), on the cores this process may use:
`--turns` turns, each embedding the texts once and running each product `--rounds` times,
medians reported.

The last column is the speed the embedder would have if every one of its products ran at
that rate and nothing else took any time, relative to torch fp32's real speed: a ceiling for
any backend at that precision, since the products are most of the work. Prints a table and
writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import cpu_model, default_out, print_table, write_json
from bench.encoder_precisions import corpus
from pgrag.evaluation import ranking
from pgrag.inference.embedding import load_embedder
from pgrag.runtime.settings import DEFAULT_EMBED_MODEL

M, K, N = 2048, 384, 1536  # tokens x hidden @ hidden x feed-forward


def model_flops(tokens: int, hidden: int = 384, ff: int = 1536, layers: int = 6) -> int:
    """Floating-point operations (2 a multiply-add) of one text's matrix products."""
    projections = 4 * hidden * hidden + 2 * hidden * ff  # q, k, v, out; the feed-forward's two
    attention = 2 * tokens * hidden  # scores and their weighted sum, per token
    return layers * 2 * tokens * (projections + attention)


def rate(call: Callable[[], Any], ops: float, rounds: int) -> float:
    """Operations per second of `call` over `rounds` calls."""
    started = time.perf_counter()
    for _ in range(rounds):
        call()
    return ops * rounds / (time.perf_counter() - started)


def openvino_products() -> dict[str, Callable[[], Any]]:
    """The product compiled in fp32 and quantized to int8 by NNCF, as the backends compile
    their models; each a call on a fixed input."""
    import nncf
    import openvino as ov
    from openvino import opset13 as ops

    from pgrag.inference.openvino import compile_model

    rng = np.random.default_rng(0)
    x = ops.parameter([M, K], np.float32)
    w = ops.constant((rng.standard_normal((K, N)) * 0.05).astype(np.float32))
    fp32 = ov.Model([ops.matmul(x, w, False, False)], [x])
    inputs = [rng.standard_normal((M, K)).astype(np.float32) for _ in range(8)]
    int8 = nncf.quantize(fp32, nncf.Dataset(inputs), subset_size=len(inputs))
    calls = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in (("openvino fp32", fp32), ("openvino int8", int8)):
            path = Path(folder) / f"{name.split()[-1]}.xml"
            ov.save_model(model, path)
            request = compile_model(path, "fp32").create_infer_request()
            calls[name] = lambda r=request: r.infer([inputs[0]])
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beir", type=Path, required=True)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=10, help="products per runtime a turn")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    texts = list(corpus(ranking.load_beir(args.beir), args.texts).values())[: args.texts]
    embedder = load_embedder(DEFAULT_EMBED_MODEL, "cpu", "torch-fp32")
    model = embedder.model
    tokens = [
        min(model.max_seq_length, len(ids))
        for ids in model.tokenizer(texts, add_special_tokens=True)["input_ids"]
    ]
    flops_per_text = sum(model_flops(n) for n in tokens) / len(texts)
    a, b = torch.randn(M, K), torch.randn(K, N)
    products = {"torch fp32": lambda: a @ b, **openvino_products()}
    calls: dict[str, Callable[[], Any]] = {"encode": lambda: embedder.encode(texts), **products}
    for call in calls.values():
        call()  # warm
    # In turns, so that other work on the machine weighs on each alike; medians.
    found: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.turns):
        found["encode"].append(rate(calls["encode"], len(texts), 1))
        for name in products:
            found[name].append(rate(products[name], 2 * M * K * N, args.rounds))
    torch_texts_per_s = statistics.median(found.pop("encode"))
    rates = {name: statistics.median(r) for name, r in found.items()}
    achieved = torch_texts_per_s * flops_per_text

    rows = [["all-MiniLM-L6-v2, torch fp32 Embedder.encode", achieved, torch_texts_per_s]]
    rows += [
        [f"one {M}x{K} @ {K}x{N} product, {k}", r, r / flops_per_text] for k, r in rates.items()
    ]
    cpu = cpu_model()
    print_table(
        f"{len(texts)} texts of {args.beir.name}, {np.mean(tokens):.0f} tokens on average, "
        f"{flops_per_text / 1e9:.2f} GFLOP a text; {cpu['cpu_model']} {cpu['cpu_flags']}, "
        f"{torch.get_num_threads()} threads",
        [
            [r[0], f"{r[1] / 1e9:.1f}", f"{r[2]:.1f}", f"{r[2] / torch_texts_per_s:.2f}x"]
            for r in rows
        ],
        ["what runs", "GFLOP/s (int8: GOP/s)", "texts/s at that rate", "vs torch encode"],
    )
    out = write_json(
        args.out or default_out("matmul-ceiling"),
        "matmul_ceiling",
        {
            "texts": len(texts),
            "tokens_mean": float(np.mean(tokens)),
            "gflop_per_text": flops_per_text / 1e9,
            "torch_encode_texts_per_s": torch_texts_per_s,
            "torch_encode_gflop_per_s": achieved / 1e9,
            "product_gop_per_s": {k: v / 1e9 for k, v in rates.items()},
        },
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
