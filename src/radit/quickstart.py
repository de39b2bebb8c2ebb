"""The offline quickstart: bundled documents -> passages -> MiniLM index -> retrieval eval -> a question.

    radit quickstart                # ~5 min on 2 CPU cores; rerunning reuses finished stages
    radit quickstart --limit 500    # a smoke run on the first 500 documents

Each stage writes its files under --output and is skipped when they are already complete, so an
interrupted quickstart continues where it stopped.
"""

from __future__ import annotations

import gzip
import itertools
import logging
from pathlib import Path

from radit.artifacts import atomic_open, atomic_write_json
from radit.config import CorpusConfig, EvalRetrievalConfig, IndexConfig, QuickstartConfig, save_yaml
from radit.corpus import build_passages
from radit.data.qa import quickstart_documents
from radit.eval.retrieval import evaluate_retrieval
from radit.retriever.index import MANIFEST, build_index
from radit.retriever.search import format_hits, load_searcher

log = logging.getLogger(__name__)


def _documents(cfg: QuickstartConfig, out: Path) -> Path:
    source = quickstart_documents()
    if cfg.limit is None:
        return source
    subset = out / f"documents.first{cfg.limit}.jsonl"
    if not subset.is_file():
        with gzip.open(source, "rt", encoding="utf-8") as f, atomic_open(subset) as g:
            g.writelines(itertools.islice(f, cfg.limit))
    return subset


def run_quickstart(cfg: QuickstartConfig) -> dict:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")

    passages = out / "passages.jsonl"
    if passages.is_file():
        log.info("[1/4] passages: reusing %s", passages)
    else:
        log.info("[1/4] passages: chunking the bundled corpus")
        stats = build_passages(CorpusConfig(inputs=[str(_documents(cfg, out))], output=str(passages)))
        log.info("%d documents -> %d passages", stats.documents, stats.passages)

    index_dir = out / "index"
    if (index_dir / MANIFEST).is_file():
        log.info("[2/4] index: reusing %s", index_dir)
    else:
        log.info("[2/4] index: embedding passages with all-MiniLM-L6-v2")
        build_index(IndexConfig(passages=str(passages), output=str(index_dir), device=cfg.device, dtype=cfg.dtype))

    log.info("[3/4] retrieval eval on the bundled SQuAD-open test questions")
    report = evaluate_retrieval(
        EvalRetrievalConfig(index=str(index_dir), questions="quickstart:squad-open/test", output=str(out / "eval-retrieval"), device=cfg.device)
    )
    print(f"\nanswer-hit@k on {report['n']} SQuAD-open test questions (MiniLM, exact search):")
    print("  " + "  ".join(f"{k}={v:.1f}" for k, v in report["metrics"].items() if k.startswith("answer_hit")))

    log.info("[4/4] a sample question")
    searcher = load_searcher(index_dir, device=cfg.device)
    hits = searcher.search([cfg.query], 3)[0]
    print("\n" + format_hits(cfg.query, hits))
    summary = {"passages": str(passages), "index": str(index_dir), "retrieval": report["metrics"]}
    atomic_write_json(out / "summary.json", summary)
    print(f"\nall outputs in {out}/ (summary.json, eval-retrieval/metrics.json)")
    return summary
