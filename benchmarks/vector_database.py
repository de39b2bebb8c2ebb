"""The Qdrant backend against FAISS on the same vectors: upload time, latency, agreement, answer-hit.

    python benchmarks/vector_database.py --index runs/big-corpus/index

Takes a flat dense index built by `radit index` and builds `radit index --backend qdrant` of the same
passages beside it (`<index>-qdrant`), reusing the dense build's embedding shards (the same vectors,
so only the upload into the collection is timed: `build_seconds`). Without --url the collection is in
Qdrant's server-less local mode (exact search in numpy, one process): what the tests and offline
users get; a server searches its HNSW graph instead, which this machine cannot run (no network).

Then, for real questions (SQuAD-open test, bundled, + NQ-open test from --data-dir) encoded once with
the index's query tower: batched queries/s and single-query p50/p99 of the vector search alone (no
encoding), the share of FAISS's exact top-10 that Qdrant returns, and SQuAD answer-hit@10 of both.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import save
from large_index import latency_ms, real_questions, recall

from radit.config import IndexConfig, QdrantConfig
from radit.config_io import from_dict, load_yaml
from radit.eval.metrics import answer_hit_at_k
from radit.retriever.index import build_index
from radit.retriever.search import load_searcher
from radit.retriever.shards import EMBEDDINGS_DIR, STATE_FILE

K = 10


def build_qdrant_beside(dense: Path, out: Path, url: str | None) -> float:
    """`radit index --backend qdrant` of the dense index's passages into `out`, its shards reused; seconds."""
    manifest = json.loads((dense / "manifest.json").read_text())
    if (out / "manifest.json").is_file():
        return json.loads((out / "manifest.json").read_text())["build_seconds"]
    shutil.copytree(dense / EMBEDDINGS_DIR, out / EMBEDDINGS_DIR, dirs_exist_ok=True)
    state = json.loads((out / EMBEDDINGS_DIR / STATE_FILE).read_text())
    (out / EMBEDDINGS_DIR / STATE_FILE).write_text(json.dumps({**state, "backend": "qdrant"}))  # the same vectors
    built = from_dict(IndexConfig, load_yaml(dense / "config.yaml"), where=str(dense / "config.yaml"))
    cfg = dataclasses.replace(built, output=str(out), backend="qdrant", dtype=manifest["dtype"], device="cpu",
                              qdrant=QdrantConfig(url=url) if url else QdrantConfig())
    t = time.perf_counter()
    build_index(cfg)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/big-corpus/index", help="a flat dense index built by radit index")
    ap.add_argument("--data-dir", default="../shared/data")
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--url", default=None, help="a Qdrant server (default: local mode in the index folder)")
    ap.add_argument("--latency-queries", type=int, default=200)
    args = ap.parse_args()

    dense_dir = Path(args.index)
    qdrant_dir = dense_dir.with_name(dense_dir.name + "-qdrant")
    build_s = build_qdrant_beside(dense_dir, qdrant_dir, args.url)
    dense, qdrant = load_searcher(dense_dir, device="cpu"), load_searcher(qdrant_dir, device="cpu")
    texts, answers, n_squad = real_questions(Path(args.data_dir), args.nq)
    q = dense.encode_queries(texts).astype(np.float32)
    lat_q = q[np.random.default_rng(0).choice(len(q), args.latency_queries, replace=False)]
    print(f"{dense.count:,} passages; {len(q):,} questions; qdrant build (upload) {build_s:.1f}s")

    def hit10(rows: np.ndarray) -> float:
        return round(100 * float(np.mean([answer_hit_at_k([p["text"] for p in dense.store.get_many(r.tolist())], a, [K])[K]
                                          for r, a in zip(rows[:n_squad], answers)])), 2)

    results, truth = {}, None
    for name, searcher in (("faiss-flat", dense), ("qdrant-local" if not args.url else "qdrant-server", qdrant)):
        t = time.perf_counter()
        scores, rows = searcher.search_vectors(q, K)
        qps = len(q) / (time.perf_counter() - t)
        truth = rows if truth is None else truth
        results[name] = {"queries_per_s": round(qps, 1), **latency_ms(None, lat_q, lambda x, s=searcher: s.search_vectors(x, K)),
                         "top10_agreement_with_faiss": round(recall(rows, truth), 4), "squad_answer_hit@10": hit10(rows)}
        print(f"{name:<14} {qps:8.1f} q/s batched, p50 {results[name]['p50_ms']:.2f} ms, p99 {results[name]['p99_ms']:.2f} ms, "
              f"top-10 agreement {results[name]['top10_agreement_with_faiss']:.4f}, answer-hit@10 {results[name]['squad_answer_hit@10']}")
    save("vector_database-qdrant", {
        "index": str(dense_dir), "qdrant_index": str(qdrant_dir), "mode": "server " + args.url if args.url else "local (no server)",
        "passages": dense.count, "queries": len(q), "squad_queries": n_squad, "qdrant_upload_seconds": round(build_s, 1),
        "results": results,
    })


if __name__ == "__main__":
    main()
