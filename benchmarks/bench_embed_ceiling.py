"""How much batching can give at most: the embedding model alone, one question against 32.

Issue 5 asks 32 concurrent semantic lookups to reach 4x the throughput of one client. The
server batches concurrent embeddings into one model call, so that ratio cannot exceed what
the model itself gains from a batch. This times the shipped ONNX graph on its own (no HTTP,
no cache), on questions of 16 and 32 tokens, at the thread counts and spinning settings
worth comparing, and prints per-question time alone and in a batch of 32, the ratio, and the
arithmetic rate the batch reaches (about 21 MFLOP per token for all-MiniLM-L6-v2's six
layers, embeddings excluded), which shows how close to the CPU's limit it already runs.
Both graphs are timed: the default one and the int8 one (`onnx-int8`).

    .venv/bin/python benchmarks/bench_embed_ceiling.py > benchmarks/results/bench_embed_ceiling.txt
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datetime
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

import numpy as np
import onnxruntime

from embeddings.onnx_embedder import OnnxEmbedder

LAYERS, HIDDEN, FFN = 6, 384, 1536
FLOP_PER_TOKEN = 2 * LAYERS * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
"""Multiply-adds of the attention projections and the feed-forward block, per token."""
TOKEN_ID = 2000  # any ordinary word piece: the cost does not depend on which


def session(graph: Path, threads: int, spin: bool) -> Any:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    if spin:  # as the server does (embeddings/onnx_embedder.py): spin only within a call
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])


def per_question_ms(sess: Any, batch: int, tokens: int, repeats: int) -> float:
    shape = (batch, tokens)
    feed = {
        "input_ids": np.full(shape, TOKEN_ID, dtype=np.int64),
        "attention_mask": np.ones(shape, dtype=np.int64),
        "token_type_ids": np.zeros(shape, dtype=np.int64),
    }
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    for _ in range(5):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / batch


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.environ.get("SEMCACHE_GRAPH_DIR", tmp)
        graphs = {
            "fp32": OnnxEmbedder(cache_dir=folder).graph_path,
            "int8": OnnxEmbedder(cache_dir=folder, quantized=True).graph_path,
        }
        print(f"# bench_embed_ceiling  {datetime.datetime.now(datetime.UTC).isoformat()}")
        print(
            f"# platform: {platform.platform()}  cpus: {os.cpu_count()}  load avg: "
            + " ".join(f"{x:.2f}" for x in os.getloadavg())
        )
        print(f"# python {platform.python_version()}  onnxruntime {onnxruntime.__version__}")
        print(
            f"# graphs: fp32 {graphs['fp32'].name} (the server's default backend), "
            f"int8 {graphs['int8'].name} (SEMCACHE_EMBEDDER_BACKEND=onnx-int8)"
        )
        print("# per-question median ms over 60 single runs or 12 batch runs, after 5 warm-up")
        print(f"# GFLOP/s: the batch's arithmetic rate, {FLOP_PER_TOKEN / 1e6:.0f} MFLOP per token")
        print()
        print(
            f"{'graph':>5} {'threads':>7} {'spin':>5} {'tokens':>6} {'alone':>8} {'in 32':>8} "
            f"{'ratio':>6} {'GFLOP/s':>8}"
        )
        best: dict[tuple[str, int], float] = {}
        for kind, graph in graphs.items():
            for threads in (1, os.cpu_count() or 1):
                for spin in (False, True):
                    sess = session(graph, threads, spin)
                    for tokens in (16, 32):
                        alone = per_question_ms(sess, 1, tokens, 60)
                        batched = per_question_ms(sess, 32, tokens, 12)
                        rate = FLOP_PER_TOKEN * tokens / (batched / 1000) / 1e9
                        print(
                            f"{kind:>5} {threads:>7} {spin!s:>5} {tokens:>6} {alone:>8.2f} "
                            f"{batched:>8.2f} {alone / batched:>6.2f} {rate:>8.1f}"
                        )
                        if threads == (os.cpu_count() or 1) and spin:
                            best[kind, tokens] = alone / batched
    print()
    for (kind, tokens), ratio in best.items():
        print(
            f"# {kind}, the server's setting ({os.cpu_count()} threads, spinning within a "
            f"call), {tokens} tokens: a batch of 32 is {ratio:.2f}x as fast per question as "
            "one question alone; even with no HTTP, JSON or search cost, 32 clients can "
            "reach about that multiple of one client's throughput at best (target 4x)"
        )
    print(f"# total run time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
