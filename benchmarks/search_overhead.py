"""Search overhead of radit over calling FAISS directly, on the same index and query vectors.

    python benchmarks/search_overhead.py --index runs/quickstart/index [--queries 1000] [--k 10]

Compares `faiss_index.search(q, k)` with `DenseSearcher.search_ids(q, k)` (FAISS + mapping rows to
passage ids) on identical float32 query vectors; target: <= 10 % overhead. Query encoding and
fetching passage texts are timed separately, since raw FAISS does neither.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from common import save

from radit.data.qa import load_questions
from radit.retriever.search import DenseSearcher


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    searcher = DenseSearcher(args.index, device="cpu")
    questions = [q.question for split in ("test", "dev", "train") for q in load_questions(f"quickstart:squad-open/{split}")][: args.queries]

    t = time.perf_counter()
    q = searcher.encode_queries(questions)
    encode_s = time.perf_counter() - t
    single = [time.perf_counter()]
    for question in questions[:100]:
        searcher.encode_queries([question])
        single.append(time.perf_counter())
    single_ms = statistics.median(np.diff(single)) * 1000

    _ = searcher.ids  # load the id table once, as a long-lived searcher does
    faiss_s = best_of(lambda: searcher.index.search(q, args.k), args.repeats)
    radit_s = best_of(lambda: searcher.search_ids(q, args.k), args.repeats)
    scores_a, rows = searcher.index.search(q, args.k)
    scores_b, ids = searcher.search_ids(q, args.k)
    assert np.array_equal(scores_a, scores_b) and all(searcher.ids[r] == i for r, i in zip(rows.ravel(), ids.ravel()))
    text_s = best_of(lambda: [searcher._hits(r, s) for r, s in zip(rows, scores_a)], 3)

    overhead = radit_s / faiss_s - 1
    print(f"{len(q)} queries, k={args.k}, {searcher.count} passages ({searcher.manifest['index_type']})")
    print(f"  faiss direct       {faiss_s * 1000:8.2f} ms")
    print(f"  radit search_ids   {radit_s * 1000:8.2f} ms  overhead {overhead:+.1%} (target <= 10%)")
    print(f"  + passage texts    {text_s * 1000:8.2f} ms  (reading {q.shape[0] * args.k} passages from disk)")
    print(f"  query encoding     {encode_s:8.2f} s batched ({len(q) / encode_s:.0f} q/s), {single_ms:.1f} ms one query")
    save(
        "search_overhead",
        {
            "queries": len(q),
            "k": args.k,
            "passages": searcher.count,
            "index_type": searcher.manifest["index_type"],
            "faiss_ms": round(faiss_s * 1000, 3),
            "radit_search_ids_ms": round(radit_s * 1000, 3),
            "overhead": round(overhead, 4),
            "target": "<= 0.10",
            "passage_text_fetch_ms": round(text_s * 1000, 2),
            "query_encoding_batched_s": round(encode_s, 3),
            "query_encoding_single_ms_median": round(single_ms, 2),
        },
    )


if __name__ == "__main__":
    main()
