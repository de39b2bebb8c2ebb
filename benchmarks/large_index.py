"""Large indexes: IVF-PQ recall on real embeddings, and memory / build time / latency at 10M vectors.

    # 1. recall against exact search on real MiniLM embeddings (a dense flat index built by radit index)
    python benchmarks/large_index.py real --index runs/big-corpus/index
    # 2. 10M synthetic 384-d vectors: build from memory-mapped shards, memory, p50/p99 latency
    python benchmarks/large_index.py synthetic --n 10000000 --work runs/large-index
    # 3. the table that extrapolates both to the paper's 399M chunks (reads the two results files)
    python benchmarks/large_index.py extrapolate

`real` reads the shards of an existing flat index (every vector is a real passage embedding), encodes
real questions (SQuAD-open test from the bundled split, NQ-open test from --data-dir) with the index's
query tower, takes the flat index's top-10 as the truth, and builds each IVF-PQ variant with radit's own
`build_faiss` (as `radit index --index-type ivfpq` does). Per variant and nprobe: recall@10 (share of the
exact top-10 found), top-1 agreement, SQuAD answer-hit@10 (exact vs approximate: what a user loses),
single-query latency p50/p99 and batched queries/s, with and without exact re-ranking of 100 candidates.

`synthetic` writes N vectors, drawn from a Gaussian with the mean and covariance of real MiniLM
embeddings (--like: the shards of a real index) and unit-normalised, as float16 shards of --shard-size
rows (memory-mapped .npy), builds IVF-PQ with an HNSW coarse quantizer from them in batches, records
peak memory (anonymous RSS, sampled; file pages of the memory map are the OS's cache, not the index's),
build time per phase and the index file size, then serves the index in a fresh process, loaded into RAM
and memory-mapped: RSS after loading, single-query latency p50/p99 per nprobe, recall@10 against exact
search (brute force over the shards) for 100 queries. Gaussian draws have no cluster structure, so their
recall is a worst case; `real` is the recall to believe.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
from common import RESULTS, save

from radit.config import IndexConfig
from radit.retriever.index import build_faiss

K = 10


# --------------------------------------------------------------------------- memory


def rss_gib(field: str = "VmRSS") -> float:
    """A field of /proc/self/status (VmRSS: all resident pages; RssAnon: heap only) in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    raise KeyError(field)


class PeakSampler:
    """Samples RssAnon every 50 ms in a thread: the peak of the heap the build itself allocates."""

    def __init__(self) -> None:
        self.peak = rss_gib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_gib("RssAnon"))

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_gib("RssAnon"))


# --------------------------------------------------------------------------- measuring a built index


def latency_ms(index: faiss.Index, queries: np.ndarray, search=None) -> dict[str, float]:
    """Single-query latency over `queries`, one at a time, after 20 warm-up queries: p50, p99, mean (ms)."""
    search = search or (lambda q: index.search(q, K))
    for q in queries[:20]:
        search(q[None])
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - t)
    ms = 1000 * np.array(times)
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-K found in its approximate top-K."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def exact_rerank(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Top-K rows among `candidates` [Q, C] by exact inner product with the stored vectors."""
    from radit.retriever.search import rerank_exact

    rows = lambda r: np.where((r >= 0)[..., None], vectors[np.maximum(r, 0)], 0).astype(np.float32)  # noqa: E731
    return rerank_exact(queries, candidates, rows, K)[1]


# --------------------------------------------------------------------------- real embeddings


def search_fn(index: faiss.Index, rerank: int, vectors: np.ndarray):
    """queries [Q, dim] -> top-K rows [Q, K]: the index's own ranking, or its top `rerank` re-scored exactly."""
    if rerank:
        return lambda q: exact_rerank(q, index.search(q, rerank)[1], vectors)
    return lambda q: index.search(q, K)[1]


def load_real(index_dir: Path) -> tuple[np.ndarray, dict]:
    manifest = json.loads((index_dir / "manifest.json").read_text())
    if manifest.get("index_type") != "flat":
        raise SystemExit(f"{index_dir}: need a flat (exact) dense index, this one is {manifest.get('index_type')}")
    shards = [np.load(p, mmap_mode="r") for p in sorted((index_dir / "embeddings").glob("shard_*.npy"))]
    return np.concatenate([np.asarray(s, dtype=np.float32) for s in shards]), manifest


def real_questions(data_dir: Path, n_nq: int) -> tuple[list[str], list[list[str]], int]:
    """SQuAD-open test (bundled, with answers) + up to `n_nq` NQ-open test questions; and how many are SQuAD."""
    from radit.data.qa import load_questions

    squad = load_questions("quickstart:squad-open/test")
    texts, answers = [q.question for q in squad], [list(q.answers) for q in squad]
    nq_file = data_dir / "nq_open" / "test.jsonl"
    if nq_file.is_file() and n_nq:
        nq = load_questions(str(nq_file), limit=n_nq)
        texts += [q.question for q in nq]
    return texts, answers, len(squad)


def run_real(args: argparse.Namespace) -> None:
    from radit.eval.metrics import answer_hit_at_k
    from radit.retriever.search import load_searcher

    index_dir = Path(args.index)
    vectors, manifest = load_real(index_dir)
    n, dim = vectors.shape
    searcher = load_searcher(index_dir, device="cpu")
    texts, answers, n_squad = real_questions(Path(args.data_dir), args.nq)
    queries = searcher.encode_queries(texts).astype(np.float32)
    print(f"{n:,} real passage vectors ({dim}-d) from {index_dir}; {len(texts):,} questions "
          f"({n_squad:,} SQuAD-open test, {len(texts) - n_squad:,} NQ-open test)")

    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    t = time.perf_counter()
    _, truth = exact.search(queries, K)
    exact_qps = len(queries) / (time.perf_counter() - t)
    lat_queries = queries[np.random.default_rng(0).choice(len(queries), args.latency_queries, replace=False)]
    exact_lat = latency_ms(exact, lat_queries)

    store = searcher.store

    def hit10(rows: np.ndarray) -> float:
        """SQuAD-open answer-hit@10 (%) of the first n_squad queries' rows."""
        hits = [answer_hit_at_k([p["text"] for p in store.get_many(r[r >= 0].tolist())], a, [K])[K] for r, a in zip(rows[:n_squad], answers)]
        return round(100 * float(np.mean(hits)), 2)

    exact_hit = hit10(truth)
    print(f"exact (flat): {exact_qps:,.0f} q/s batched, p50 {exact_lat['p50_ms']} ms; SQuAD answer-hit@10 {exact_hit}")
    variants = []
    for spec in args.variants:
        m, opq, quantizer = spec.split(":") if spec.count(":") == 2 else (spec, "no-opq", "flat")
        cfg = IndexConfig(index_type="ivfpq", pq_m=int(m), opq=opq == "opq", ivf_quantizer=quantizer, nlist=args.nlist)
        shards = [vectors[i : i + 16384] for i in range(0, n, 16384)]
        t = time.perf_counter()
        index, params = build_faiss(shards, dim, cfg)
        build_s = time.perf_counter() - t
        rows = []
        for nprobe in args.nprobe:
            faiss.extract_index_ivf(index).nprobe = nprobe
            for rerank in (0, 100):
                search = search_fn(index, rerank, vectors)
                t = time.perf_counter()
                found = search(queries)
                qps = len(queries) / (time.perf_counter() - t)
                row = {"nprobe": nprobe, "rerank": rerank, "recall@10": round(recall(found, truth), 4),
                       "top1_agreement": round(float(np.mean(found[:, 0] == truth[:, 0])), 4),
                       "squad_answer_hit@10": hit10(found), "queries_per_s": round(qps, 1),
                       **latency_ms(index, lat_queries, search)}
                rows.append(row)
                print(f"  {spec:<18} nprobe {nprobe:>4} rerank {rerank:>3}: recall@10 {row['recall@10']:.3f} top1 "
                      f"{row['top1_agreement']:.3f} hit@10 {row['squad_answer_hit@10']:.1f} p50 {row['p50_ms']:.2f} ms")
        variants.append({"variant": spec, "params": params, "build_seconds": round(build_s, 1),
                         "code_bytes_per_vector": index.sa_code_size(), "by_nprobe": rows})
    save("large_index-real", {
        "index": str(index_dir), "passages": n, "dim": dim, "queries": len(queries), "squad_queries": n_squad,
        "encoder": manifest["encoder"].get("query_model"),
        "exact": {"queries_per_s": round(exact_qps, 1), **exact_lat, "squad_answer_hit@10": exact_hit},
        "variants": variants,
    })


# --------------------------------------------------------------------------- 10M synthetic


def like_real_batches(n: int, real: np.ndarray, seed: int, batch: int = 100_000):
    """Yield unit-normalised float32 draws from N(mean, cov) of `real`, `batch` rows at a time."""
    rng = np.random.default_rng(seed)
    mean, cov = real.mean(0), np.cov(real, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov))).astype(np.float32)
    for i in range(0, n, batch):
        z = rng.standard_normal((min(batch, n - i), real.shape[1]), dtype=np.float32) @ chol.T + mean.astype(np.float32)
        yield z / np.linalg.norm(z, axis=1, keepdims=True)


def write_synthetic(work: Path, n: int, shard_size: int, real: np.ndarray) -> list[Path]:
    """N vectors as float16 shards (a rerun reuses complete ones); returns their paths."""
    paths = []
    gen = like_real_batches(n, real, seed=0)
    pending = np.empty((0, real.shape[1]), dtype=np.float32)
    for i in range(math.ceil(n / shard_size)):
        rows = min(shard_size, n - i * shard_size)
        path = work / f"shard_{i:05d}.npy"
        paths.append(path)
        done = path.is_file() and np.load(path, mmap_mode="r").shape[0] == rows
        while len(pending) < rows:
            pending = np.concatenate([pending, next(gen)])  # the same draws whether or not a shard is reused
        block, pending = pending[:rows], pending[rows:]
        if not done:
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, block.astype(np.float16))
            tmp.rename(path)
        print(f"\r  shard {i + 1}/{math.ceil(n / shard_size)}", end="", flush=True)
    print()
    return paths


def run_synthetic(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    real, _ = load_real(Path(args.like))
    t = time.perf_counter()
    paths = write_synthetic(work, args.n, args.shard_size, real)
    gen_s = time.perf_counter() - t
    queries = next(like_real_batches(args.queries, real, seed=1))
    shards = [np.load(p, mmap_mode="r") for p in paths]
    cfg = IndexConfig(index_type="ivfpq", nlist=args.nlist, pq_m=args.pq_m, ivf_quantizer="hnsw", mmap=True)
    rss0 = rss_gib("RssAnon")
    t = time.perf_counter()
    phases: dict[str, float] = {}
    with PeakSampler() as peak:
        index, params = build_faiss(shards, real.shape[1], cfg, timings=phases)
    build_s = time.perf_counter() - t
    index_path = work / "faiss.index"
    faiss.write_index(index, str(index_path))
    del index
    print(f"build {build_s:.0f}s; peak heap {peak.peak:.2f} GiB ({rss0:.2f} before); index file "
          f"{index_path.stat().st_size / 2**30:.2f} GiB")

    # Exact truth for the first 100 queries: brute force over the float16 shards, a shard at a time.
    t = time.perf_counter()
    q = queries[:100]
    best_s, best_i = np.full((len(q), K), -np.inf, np.float32), np.zeros((len(q), K), np.int64)
    offset = 0
    for s in shards:
        scores = q @ np.asarray(s, dtype=np.float32).T
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
        cand_i = np.concatenate([best_i, top + offset], 1)
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
        offset += len(s)
    exact_s = time.perf_counter() - t
    np.save(work / "truth.npy", best_i)
    np.save(work / "queries.npy", queries)

    serving = {}
    for mode in ("ram", "mmap"):
        out = subprocess.run([sys.executable, __file__, "serve", "--work", str(work), "--mode", mode,
                              "--nprobe", *map(str, args.nprobe)], capture_output=True, text=True, check=True)
        serving[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        for row in serving[mode]["by_nprobe"]:
            print(f"  {mode:<4} nprobe {row['nprobe']:>4}: p50 {row['p50_ms']:.2f} ms p99 {row['p99_ms']:.2f} ms "
                  f"recall@10 {row['recall@10']:.3f} (RSS {serving[mode]['rss_gib_loaded']:.2f} GiB loaded)")
    save(f"large_index-synthetic-{args.n // 1_000_000}m", {
        "n": args.n, "dim": real.shape[1], "data": f"Gaussian with the mean/covariance of {args.like}, unit-normalised",
        "shards": {"count": len(paths), "rows": args.shard_size, "dtype": "float16",
                   "gib_on_disk": round(sum(p.stat().st_size for p in paths) / 2**30, 2), "write_seconds": round(gen_s, 1)},
        "params": params, "build_seconds": round(build_s, 1), **{k: round(v, 1) for k, v in phases.items()},
        "build_peak_heap_gib": round(peak.peak, 2), "heap_gib_before_build": round(rss0, 2),
        "index_file_gib": round(index_path.stat().st_size / 2**30, 3),
        "exact_bruteforce_seconds_for_100_queries": round(exact_s, 1),
        "serving": serving,
    })


def run_serve(args: argparse.Namespace) -> None:
    """In a fresh process: load faiss.index (into RAM or memory-mapped), measure RSS and latency; print JSON."""
    work = Path(args.work)
    before = rss_gib()
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if args.mode == "mmap" else 0
    t = time.perf_counter()
    index = faiss.read_index(str(work / "faiss.index"), flags)
    load_s = time.perf_counter() - t
    loaded = rss_gib()
    queries, truth = np.load(work / "queries.npy"), np.load(work / "truth.npy")
    rows = []
    for nprobe in args.nprobe:
        faiss.extract_index_ivf(index).nprobe = nprobe
        found = index.search(queries[: len(truth)], K)[1]
        rows.append({"nprobe": nprobe, "recall@10": round(recall(found, truth), 4), **latency_ms(index, queries)})
    print(json.dumps({"load_seconds": round(load_s, 2), "rss_gib_before": round(before, 3), "rss_gib_loaded": round(loaded, 3),
                      "rss_gib_after_queries": round(rss_gib(), 3), "threads": faiss.omp_get_max_threads(), "by_nprobe": rows}))


# --------------------------------------------------------------------------- 399M


def run_extrapolate(args: argparse.Namespace) -> None:
    """Memory, build time and latency at the paper's 399M chunks, scaled from the measured 10M build.

    Scalings, stated as such: the index file by vectors (codes + ids dominate); adding by vectors;
    k-means training by nlist^2 (64 x nlist sampled points against nlist centroids); the
    search cost by the PQ codes a query scans, nprobe x N / nlist (the coarse HNSW search is small);
    embedding by the passages/s of benchmarks/index_throughput.py on the same CPU.
    """
    syn = json.loads((RESULTS / args.synthetic).read_text())
    n, target, nlist = syn["n"], args.target, syn["params"]["nlist"]
    scale = target / n
    ram = next(r for r in syn["serving"]["ram"]["by_nprobe"] if r["nprobe"] == syn["params"]["nprobe"])
    scanned_ratio = (target / args.target_nlist) / (n / nlist)  # codes per probed list, 399M vs 10M
    throughput = json.loads((RESULTS / "index_throughput.json").read_text())["radit_index_passages_per_s"]
    rows = {
        "vectors": target,
        "target_nlist": args.target_nlist,
        "float32_vectors_gib_384d": round(target * 384 * 4 / 2**30),
        "float32_vectors_gib_768d": round(target * 768 * 4 / 2**30),
        "float16_shards_gib_384d": round(target * 384 * 2 / 2**30),
        "ivfpq_index_gib_384d_pq48": round(syn["index_file_gib"] * scale, 1),
        "ivfpq_index_gib_768d_pq96": round(syn["index_file_gib"] * scale * (96 + 8) / (48 + 8), 1),
        # k-means on 64 x nlist sampled points against nlist centroids: its cost grows as nlist^2.
        "train_hours_2_cores": round(syn["train_seconds"] * (args.target_nlist / nlist) ** 2 / 3600, 1),
        "add_hours_2_cores": round(syn["add_seconds"] * scale / 3600, 1),
        "nprobe": syn["params"]["nprobe"],
        "p50_ms_2_cores": round(ram["p50_ms"] * scanned_ratio, 1),
        "embed_days_2_cores_minilm": round(target / throughput / 86400),
        "embed_passages_per_s_2_cores": throughput,
    }
    print(json.dumps(rows, indent=2))
    save("large_index-399m", {"from": args.synthetic, "measured_n": n, "measured_nlist": nlist, **rows})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode_", required=True)
    real = sub.add_parser("real", help="recall of IVF-PQ variants against exact search on real embeddings")
    real.add_argument("--index", default="runs/big-corpus/index", help="a flat dense index built by radit index")
    real.add_argument("--data-dir", default="../shared/data")
    real.add_argument("--nq", type=int, default=1000, help="NQ-open test questions added to the SQuAD-open ones")
    real.add_argument("--nlist", type=int, default=0, help="IVF lists; 0: radit's default 4*sqrt(N)")
    real.add_argument("--variants", nargs="+", default=["48:no-opq:flat", "48:opq:flat", "96:no-opq:flat", "48:no-opq:hnsw"],
                      help="PQ_M:opq|no-opq:flat|hnsw")
    real.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    real.add_argument("--latency-queries", type=int, default=300)
    syn = sub.add_parser("synthetic", help="10M synthetic vectors: memory, build time, latency")
    syn.add_argument("--n", type=int, default=10_000_000)
    syn.add_argument("--work", default="runs/large-index")
    syn.add_argument("--like", default="runs/quickstart/index", help="a flat dense index whose embeddings the draws imitate")
    syn.add_argument("--shard-size", type=int, default=1_000_000)
    syn.add_argument("--nlist", type=int, default=8192)
    syn.add_argument("--pq-m", type=int, default=48)
    syn.add_argument("--queries", type=int, default=1000)
    syn.add_argument("--nprobe", type=int, nargs="+", default=[16, 32, 64])
    serve = sub.add_parser("serve", help="(internal) serve a built index in this process")
    serve.add_argument("--work", required=True)
    serve.add_argument("--mode", choices=["ram", "mmap"], required=True)
    serve.add_argument("--nprobe", type=int, nargs="+", required=True)
    ext = sub.add_parser("extrapolate", help="scale the 10M measurements to the paper's 399M chunks")
    ext.add_argument("--synthetic", default="large_index-synthetic-10m.json")
    ext.add_argument("--target", type=int, default=399_000_000)
    ext.add_argument("--target-nlist", type=int, default=65536, help="IVF lists assumed at --target vectors")
    args = ap.parse_args()
    {"real": run_real, "synthetic": run_synthetic, "serve": run_serve, "extrapolate": run_extrapolate}[args.mode_](args)


if __name__ == "__main__":
    main()
