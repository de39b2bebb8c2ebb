"""IVF-PQ on 1M synthetic 384-d vectors: build time, peak memory, queries/s and recall@10 vs exact.

    python benchmarks/ivfpq_1m.py [--n 1000000] [--queries 1000]

The vectors are unit-normalised points around 2,000 random centres (real embeddings cluster; uniform
random vectors would make any ANN index look bad). The index is built by radit's own `build_faiss`
from shards, as `radit index --index-type ivfpq` does; the exact oracle is a flat inner-product index.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np
from common import peak_rss_gib, save

from radit.config import IndexConfig
from radit.retriever.index import build_faiss


def synthetic(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    args = ap.parse_args()

    data = synthetic(args.n, args.dim, 2000, seed=0)
    rng = np.random.default_rng(1)
    queries = data[rng.choice(args.n, args.queries, replace=False)] + 0.3 * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    shards = [data[i : i + args.shard_size] for i in range(0, args.n, args.shard_size)]
    rss_before = peak_rss_gib()

    cfg = IndexConfig(index_type="ivfpq")
    t = time.perf_counter()
    index, params = build_faiss(shards, args.dim, cfg)
    build_s = time.perf_counter() - t
    rss_build = peak_rss_gib()

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(data)
    t = time.perf_counter()
    _, truth = exact.search(queries, 10)
    exact_s = time.perf_counter() - t

    rows = []
    ivf = faiss.extract_index_ivf(index)
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        t = time.perf_counter()
        _, found = index.search(queries, 10)
        s = time.perf_counter() - t
        recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])
        rows.append({"nprobe": nprobe, "queries_per_s": round(args.queries / s, 1), "recall@10": round(float(recall), 4)})
        print(f"nprobe {nprobe:>4}: {args.queries / s:8.1f} q/s  recall@10 {recall:.3f}")
    print(f"build {build_s:.1f}s ({params}); peak RSS {rss_build:.2f} GiB (vectors alone {data.nbytes / 2**30:.2f} GiB, "
          f"{rss_before:.2f} GiB before the build); exact search {args.queries / exact_s:.1f} q/s; "
          f"index size {index.sa_code_size() * args.n / 2**20:.0f} MiB of codes")
    save(
        "ivfpq_1m",
        {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "params": params,
            "build_seconds": round(build_s, 1),
            "peak_rss_gib_after_build": round(rss_build, 2),
            "peak_rss_gib_before_build": round(rss_before, 2),
            "vectors_gib": round(data.nbytes / 2**30, 2),
            "pq_code_bytes_per_vector": index.sa_code_size(),
            "exact_flat_queries_per_s": round(args.queries / exact_s, 1),
            "by_nprobe": rows,
        },
    )


if __name__ == "__main__":
    main()
