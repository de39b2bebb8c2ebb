"""Hybrid retrieval (BM25 + dense fusion) on the bundled SQuAD-open questions: the fusion weight tuned
on dev, then answer-hit@1/5/10/20 on all 2,192 test questions for BM25, dense, rrf and weighted fusion.

    python benchmarks/hybrid_retrieval.py [--dense-index runs/quickstart/index] [--bm25-index runs/quickstart/bm25] \\
        [--query-encoder runs/retriever-ft/query_encoder --name rft]

Builds the BM25 index from the dense index's passages when --bm25-index is missing. Each split's queries
are encoded and searched once (each side's top --depth candidates, `HybridSearcher.candidates`); the
sweep (weight 0, 0.1, ..., 1) and rrf then fuse those in numpy with `radit.retriever.hybrid.fuse`, and a
check runs the real `HybridSearcher.search` at the tuned weight on test questions and asserts the same
rankings. Also reports how peaked p_R = softmax(score / T) over the top-10 is for each searcher at its
temperature (mean top-1 weight), the yardstick of `radit.retriever.hybrid.FUSION_TEMPERATURE`.
Writes benchmarks/results/hybrid_retrieval[-NAME].json. Equivalent CLI for one row:

    radit index --backend hybrid --dense-index runs/quickstart/index --bm25-index runs/quickstart/bm25 \\
        --fusion weighted --fusion-weight W --output runs/quickstart/hybrid
    radit eval-retrieval --index runs/quickstart/hybrid --questions quickstart:squad-open/test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import save

from radit.config import HybridConfig, IndexConfig
from radit.data.qa import load_questions
from radit.eval.metrics import has_answer
from radit.retriever.bm25 import BM25Searcher
from radit.retriever.hybrid import FUSION_TEMPERATURE, HybridSearcher, fuse, hybrid_manifest
from radit.retriever.index import build_index
from radit.retriever.manifest import MANIFEST, load_manifest
from radit.retriever.search import DenseSearcher, search_batched
from radit.runtime import resolve_device

KS = [1, 5, 10, 20]
WEIGHTS = [round(0.1 * i, 1) for i in range(11)]


class Split:
    """One question set searched once: each side's candidates and a lazily filled answer table."""

    def __init__(self, searcher: HybridSearcher, spec: str, depth: int, limit: int | None, batch: int = 256):
        questions = load_questions(spec, limit=limit, require_answers=True)
        self.spec, self.questions = spec, questions
        self.gold = [q.gold_answers for q in questions]
        self.store = searcher.store
        t0 = time.time()
        parts = [searcher.candidates([q.question for q in questions[i : i + batch]], depth) for i in range(0, len(questions), batch)]
        self.dense = tuple(np.concatenate([p[0][j] for p in parts]) for j in range(2))
        self.bm25 = tuple(np.concatenate([p[1][j] for p in parts]) for j in range(2))
        # BM25 alone as `radit eval-retrieval` runs it: zero-score hits included.
        self.bm25_plain = searcher.bm25.search_rows([q.question for q in questions], max(KS))
        self.search_seconds = round(time.time() - t0, 1)
        self._hit: dict[tuple[int, int], bool] = {}

    def has_answer(self, q: int, row: int) -> bool:
        if (q, row) not in self._hit:
            self._hit[(q, row)] = has_answer(self.store[row]["text"], self.gold[q])
        return self._hit[(q, row)]

    def hits_at(self, rows: np.ndarray, ks: list[int] = KS) -> dict[str, float]:
        """rows [Q, >= max(ks)] ranked -> answer-hit@k in %, as `radit.eval.retrieval.retrieval_metrics`."""
        first = []
        for q, ranked in enumerate(rows):
            first.append(next((i for i, r in enumerate(ranked[: max(ks)]) if r >= 0 and self.has_answer(q, int(r))), max(ks)))
        first = np.array(first)
        return {f"answer_hit@{k}": round(100 * float(np.mean(first < k)), 2) for k in ks}


def top1_weight(scores: np.ndarray, temperature: float, k: int = 10) -> float:
    """Mean over queries of the largest p_R = softmax(score / T) over the top-k (-inf: no hit)."""
    s = np.asarray(scores[:, :k], dtype=np.float64) / temperature
    p = np.exp(s - s.max(1, keepdims=True))
    return float(np.mean(p.max(1) / p.sum(1)))


def matching_temperature(scores: np.ndarray, target: float) -> float:
    """The T at which `top1_weight(scores, T)` equals `target` (bisection in log T; it falls as T grows)."""
    lo, hi = 1e-6, 1e3
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if top1_weight(scores, mid) > target else (lo, mid)
    return float((lo * hi) ** 0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense-index", default="runs/quickstart/index")
    ap.add_argument("--bm25-index", default="runs/quickstart/bm25", help="built from the dense index's passages if missing")
    ap.add_argument("--query-encoder", default=None, help="an R-ft query tower for the dense side")
    ap.add_argument("--depth", type=int, default=100, help="candidates per side before fusing")
    ap.add_argument("--rrf-k", type=int, default=60)
    ap.add_argument("--limit", type=int, default=None, help="first N questions of each split (a smoke run)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default=None, help="results file hybrid_retrieval-NAME.json (default: none, or the query encoder's folder name)")
    args = ap.parse_args()

    dense_dir, bm25_dir = Path(args.dense_index), Path(args.bm25_index)
    if not (bm25_dir / MANIFEST).is_file():
        passages = load_manifest(dense_dir)["passages"]["path"]
        print(f"building the BM25 index {bm25_dir} from {passages}")
        build_index(IndexConfig(passages=passages, output=str(bm25_dir), backend="bm25"))
    device = str(resolve_device(args.device))
    dense = DenseSearcher(dense_dir, query_encoder=args.query_encoder, device=device)
    bm25 = BM25Searcher(bm25_dir)

    def searcher(**fusion) -> HybridSearcher:  # in memory: the manifest `radit index --backend hybrid` would write
        out = Path("runs/hybrid-benchmark")
        cfg = HybridConfig(dense_index=str(dense_dir), bm25_index=str(bm25_dir), fusion_depth=args.depth, rrf_k=args.rrf_k, **fusion)
        return HybridSearcher(out, hybrid_manifest(cfg, out), dense, bm25)

    base = searcher()
    dev = Split(base, "quickstart:squad-open/dev", args.depth, args.limit)
    test = Split(base, "quickstart:squad-open/test", args.depth, args.limit)

    def fused(split: Split, method: str, weight: float = 0.5, k: int = max(KS)) -> tuple[np.ndarray, np.ndarray]:
        return fuse(split.dense, split.bm25, k, method, weight, args.rrf_k)

    # Dev: the weight sweep (answer-hit@1, then @10 breaks ties; then the weight nearer 0.5) and rrf.
    sweep = {w: dev.hits_at(fused(dev, "weighted", w)[1], [1, 10]) for w in WEIGHTS}
    best = max(WEIGHTS, key=lambda w: (sweep[w]["answer_hit@1"], sweep[w]["answer_hit@10"], -abs(w - 0.5)))
    dev_rrf = dev.hits_at(fused(dev, "rrf")[1], [1, 10])
    print(f"dev ({len(dev.questions)} questions): weighted fusion, w = weight of the dense side")
    print(f"  {'w':>5} {'hit@1':>7} {'hit@10':>7}")
    for w in WEIGHTS:
        print(f"  {w:>5.1f} {sweep[w]['answer_hit@1']:>7.2f} {sweep[w]['answer_hit@10']:>7.2f}" + ("  <- tuned" if w == best else ""))
    print(f"  {'rrf':>5} {dev_rrf['answer_hit@1']:>7.2f} {dev_rrf['answer_hit@10']:>7.2f}")

    # Test: each searcher at its own top-k.
    runs = {
        "bm25": test.hits_at(test.bm25_plain[1]),
        "dense": test.hits_at(test.dense[1]),
        "rrf": test.hits_at(fused(test, "rrf")[1]),
        f"weighted w={best}": test.hits_at(fused(test, "weighted", best)[1]),
    }
    print(f"\ntest ({len(test.questions)} questions), answer-hit@k:")
    print(f"  {'':<18}" + "".join(f"{'@' + str(k):>8}" for k in KS))
    for name, m in runs.items():
        print(f"  {name:<18}" + "".join(f"{m[f'answer_hit@{k}']:>8.2f}" for k in KS))

    # The real search path gives the rankings the numpy sweep scored.
    check = test.questions[:256]
    tuned = searcher(fusion="weighted", fusion_weight=best)
    real = search_batched(tuned, [q.question for q in check], max(KS), progress=False)
    expected = fused(test, "weighted", best)[1][: len(check)]
    assert all([h.row for h in hits] == [int(r) for r in rows if r >= 0] for hits, rows in zip(real, expected)), "search != sweep"

    # How peaked p_R is over the top-10 on dev at each searcher's temperature.
    dense_t = dense.retrieval_temperature
    target = top1_weight(dev.dense[0], dense_t)
    peaked = {
        "dense": {"temperature": dense_t, "top1_weight": round(target, 3)},
        "bm25": {"temperature": bm25.retrieval_temperature, "top1_weight": round(top1_weight(dev.bm25_plain[0], bm25.retrieval_temperature), 3)},
    }
    for method, weight in (("rrf", 0.5), ("weighted", best)):
        scores = fused(dev, method, weight, 10)[0]
        peaked[method] = {
            "temperature": FUSION_TEMPERATURE[method],
            "top1_weight": round(top1_weight(scores, FUSION_TEMPERATURE[method]), 3),
            "temperature_matching_dense": float(f"{matching_temperature(scores, target):.3g}"),
        }
    print("\np_R = softmax(score / T) over the top-10 on dev: mean top-1 weight")
    for name, p in peaked.items():
        match = f" (T matching dense: {p['temperature_matching_dense']})" if "temperature_matching_dense" in p else ""
        print(f"  {name:<9} T = {p['temperature']:<6} {p['top1_weight']:.3f}{match}")

    name = args.name or (Path(args.query_encoder).name if args.query_encoder else None)
    save("hybrid_retrieval" + (f"-{name}" if name else ""), {
        "dense_index": str(dense_dir),
        "encoder": dense.spec.query_model,
        "query_encoder": args.query_encoder,
        "bm25_index": str(bm25_dir),
        "passages": dense.count,
        "depth": args.depth,
        "rrf_k": args.rrf_k,
        "dev": {"split": dev.spec, "questions": len(dev.questions), "weighted": {str(w): m for w, m in sweep.items()},
                "rrf": dev_rrf, "tuned_weight": best},
        "test": {"split": test.spec, "questions": len(test.questions), "answer_hit": runs},
        "search_seconds": {"dev": dev.search_seconds, "test": test.search_seconds},
        "p_R_top1_weight_dev": peaked,
    }, device=device)
    print(json.dumps({"tuned_weight": best}))


if __name__ == "__main__":
    main()
