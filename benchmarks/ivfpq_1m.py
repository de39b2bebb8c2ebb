"""IVF-PQ on 1M synthetic 384-d vectors: build time, peak memory, queries/s and recall@10 vs exact.

    python benchmarks/ivfpq_1m.py [--n 1000000] [--queries 1000]

By default the vectors are drawn from a Gaussian with the mean and covariance of real MiniLM passage
embeddings (those of `radit quickstart`'s index), then unit-normalised: isotropic noise has no
low-dimensional structure and is the worst case for product quantisation, real embeddings are not.
`--data clustered` uses points around 2,000 random centres instead. Queries are held-out draws.
The index is built by radit's own `build_faiss` from shards, as `radit index --index-type ivfpq`
does; the exact oracle is a flat inner-product index.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import faiss
import numpy as np
from common import peak_rss_gib, save

from radit.config import IndexConfig
from radit.retriever.index import build_faiss
from radit.retriever.search import rerank_exact


def clustered(n: int, dim: int, seed: int, centres: int = 2000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def like_real(n: int, real: np.ndarray, seed: int) -> np.ndarray:
    """Gaussian with the mean and covariance of `real` embeddings, unit-normalised, in float32."""
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov))).astype(np.float32)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for i in range(0, n, 100_000):
        z = rng.standard_normal((min(100_000, n - i), real.shape[1]), dtype=np.float32)
        out[i : i + len(z)] = z @ chol.T + mean
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=100_000)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--rerank", type=int, nargs="+", default=[0, 100], help="exact re-ranking depths to measure (0 = off)")
    ap.add_argument("--pq-m", type=int, default=0, help="PQ sub-quantisers; 0: radit's default dim/8")
    ap.add_argument("--data", choices=["like-minilm", "clustered"], default="like-minilm")
    ap.add_argument("--real", default="runs/quickstart/index/embeddings", help="shards whose covariance --data like-minilm copies")
    args = ap.parse_args()

    if args.data == "like-minilm":
        real = np.concatenate([np.load(p) for p in sorted(Path(args.real).glob("shard_*.npy"))]).astype(np.float64)
        args.dim = real.shape[1]
        data, queries = like_real(args.n, real, seed=0), like_real(args.queries, real, seed=1)
    else:
        data, queries = clustered(args.n, args.dim, seed=0), clustered(args.queries, args.dim, seed=1)
    shards = [data[i : i + args.shard_size] for i in range(0, args.n, args.shard_size)]
    rss_before = peak_rss_gib()

    cfg = IndexConfig(index_type="ivfpq", pq_m=args.pq_m)
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
    vectors = lambda r: np.where((r >= 0)[..., None], data[r], 0)  # noqa: E731 - the searcher reads memmapped shards
    for nprobe in args.nprobe:
        ivf.nprobe = nprobe
        for rerank in args.rerank:
            t = time.perf_counter()
            if rerank:
                _, cand = index.search(queries, rerank)
                _, found = rerank_exact(queries, cand, vectors, 10)
            else:
                _, found = index.search(queries, 10)
            s = time.perf_counter() - t
            recall = np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, truth)])
            rows.append({"nprobe": nprobe, "rerank": rerank, "queries_per_s": round(args.queries / s, 1), "recall@10": round(float(recall), 4)})
            print(f"nprobe {nprobe:>4} rerank {rerank:>4}: {args.queries / s:8.1f} q/s  recall@10 {recall:.3f}")
    print(f"build {build_s:.1f}s ({params}); peak RSS {rss_build:.2f} GiB (vectors alone {data.nbytes / 2**30:.2f} GiB, "
          f"{rss_before:.2f} GiB before the build); exact search {args.queries / exact_s:.1f} q/s; "
          f"index size {index.sa_code_size() * args.n / 2**20:.0f} MiB of codes")
    save(
        f"ivfpq_1m-{args.data}-pq{params['pq_m']}",
        {
            "data": args.data,
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
