"""answer-hit@1/5/10 (and recall@k / MRR against the gold paragraph) of MiniLM dense vs BM25 on the
bundled SQuAD-open test questions.

    python benchmarks/retrieval_quality.py [--workdir runs/bench] [--limit N]

Builds (or reuses) the bundled corpus's passages, a flat MiniLM index and a BM25 index under
--workdir, then runs `radit eval-retrieval` on both.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import save

from radit.config import CorpusConfig, EvalRetrievalConfig, IndexConfig
from radit.corpus import build_passages
from radit.data.qa import quickstart_documents
from radit.eval.retrieval import evaluate_retrieval
from radit.retriever.index import build_index
from radit.retriever.manifest import MANIFEST


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/quickstart", help="reuses passages.jsonl and index/ of `radit quickstart`")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()

    work = Path(args.workdir)
    passages = work / "passages.jsonl"
    if not passages.is_file():
        build_passages(CorpusConfig(inputs=[str(quickstart_documents())], output=str(passages)))
    results = {}
    for name, backend, index_dir in [("minilm", "dense", work / "index"), ("bm25", "bm25", work / "index-bm25")]:
        if not (index_dir / MANIFEST).is_file():
            build_index(IndexConfig(passages=str(passages), output=str(index_dir), backend=backend, device="cpu"))
        report = evaluate_retrieval(
            EvalRetrievalConfig(
                index=str(index_dir), output=str(work / f"eval-retrieval-{name}"), ks=[1, 5, 10, 20], limit=args.limit, device="cpu"
            )
        )
        results[name] = report["metrics"] | {"search_seconds": report["search_seconds"]}
        n = report["n"]
    names = list(next(iter(results.values())))
    print(f"{n} SQuAD-open test questions, {sum(1 for _ in open(passages))} passages")
    print(f"{'metric':<16}" + "".join(f"{k:>10}" for k in results))
    for m in names:
        print(f"{m:<16}" + "".join(f"{results[k][m]:>10.2f}" for k in results))
    save("retrieval_quality", {"questions": n, "split": "quickstart:squad-open/test", "results": results})


if __name__ == "__main__":
    main()
