"""R-ft retrieval quality: answer-hit@k of the base query tower and of fine-tuned ones against the same
index, on every question of a split, with paired bootstrap intervals of the differences.

    python benchmarks/r_ft_quality.py --query-encoder runs/r-ft/model [--query-encoder OTHER ...] \
        [--index runs/quickstart/index] [--questions quickstart:squad-open/test] [--name NAME]

Each tuned tower is compared with the index's own query tower on the same questions (paired: one
bootstrap draw of questions for both, 2,000 draws, seed 0). The index's files are hashed before and
after, to show that R-ft's tower needs no re-indexing (the hashes are recorded).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
from common import save

from radit.data.qa import load_questions
from radit.eval.metrics import answer_hit_at_k, paired_bootstrap
from radit.retriever.hits import hits_from_rows
from radit.retriever.search import load_searcher

KS = (1, 5, 10, 20)


def index_digest(index_dir: Path) -> str:
    """sha256 over the index's files (names and bytes), leaving out the passages-verified note."""
    h = hashlib.sha256()
    for p in sorted(index_dir.rglob("*")):
        if p.is_file() and p.name != "passages_verified.json":
            h.update(str(p.relative_to(index_dir)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def per_question_hits(searcher, questions) -> dict[int, np.ndarray]:
    """{k: [Q] 0/1 answer-hit@k} searching with the searcher's query tower."""
    q = searcher.encode_queries([x.question for x in questions])
    _, rows = searcher.search_vectors(q, max(KS))
    out = {k: np.zeros(len(questions)) for k in KS}
    for i, (x, r) in enumerate(zip(questions, rows)):
        texts = [h.text for h in hits_from_rows(searcher.store, r, np.zeros(len(r)))]
        for k, v in answer_hit_at_k(texts, x.gold_answers, KS).items():
            out[k][i] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--query-encoder", action="append", required=True, help="a fine-tuned query tower (repeatable)")
    ap.add_argument("--questions", default="quickstart:squad-open/test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--name", default="r_ft_quality")
    args = ap.parse_args()

    index = Path(args.index)
    digest_before = index_digest(index)
    questions = load_questions(args.questions, limit=args.limit, require_answers=True)
    towers = {"base": None, **{str(q): q for q in args.query_encoder}}
    hits = {name: per_question_hits(load_searcher(index, query_encoder=q, device="cpu"), questions) for name, q in towers.items()}
    digest_after = index_digest(index)

    results: dict[str, dict] = {}
    print(f"{len(questions)} questions of {args.questions}, index {index}")
    print(f"{'query tower':<36}" + "".join(f"{'@' + str(k):>8}" for k in KS) + "   d@1 [95% CI]          d@10 [95% CI]")
    for name, h in hits.items():
        row = {f"answer_hit@{k}": 100 * float(h[k].mean()) for k in KS}
        line = f"{name:<36}" + "".join(f"{row[f'answer_hit@{k}']:>8.2f}" for k in KS)
        if name != "base":
            for k in (1, 10):
                ci = paired_bootstrap(hits["base"][k], h[k])
                row[f"diff@{k}"] = {key: (100 * v if key != "significant" else v) for key, v in ci.items()}
                line += f"   {100 * ci['diff']:+.2f} [{100 * ci['low']:+.2f}, {100 * ci['high']:+.2f}]"
        print(line)
        results[name] = row
    print(f"index files unchanged: {digest_before == digest_after} (sha256 {digest_after[:16]})")
    save(args.name, {"index": str(index), "questions": args.questions, "n": len(questions), "results": results,
                     "bootstrap": {"resamples": 2000, "seed": 0, "level": 0.95, "paired": True},
                     "index_sha256_before": digest_before, "index_sha256_after": digest_after})


if __name__ == "__main__":
    main()
