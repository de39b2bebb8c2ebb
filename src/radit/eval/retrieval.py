"""Retrieval quality of an index on a question set: answer-hit@k, recall@k and MRR.

    radit eval-retrieval --index runs/index --questions quickstart:squad-open/test --output runs/eval-retrieval
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from radit.artifacts import atomic_write_json, check_output_target
from radit.config import EvalRetrievalConfig
from radit.config_io import save_yaml
from radit.data.qa import load_questions
from radit.eval.metrics import answer_hit_at_k, recall_at_k, reciprocal_rank
from radit.retriever.search import Hit, load_searcher, search_batched, write_run

log = logging.getLogger(__name__)


def retrieval_metrics(results: list[list[Hit]], answers: list[list[str]], positives: list[list[str]], ks: list[int]) -> dict[str, float]:
    """Mean answer-hit@k over all questions; recall@k and MRR over the questions that have labels."""
    hit = {k: [] for k in ks}
    rec: dict[int, list[float]] = {k: [] for k in ks}
    rr: list[float] = []
    for hits, gold, pos in zip(results, answers, positives):
        for k, v in answer_hit_at_k([h.text for h in hits], gold, ks).items():
            hit[k].append(v)
        if pos:
            ids = [{h.id, h.doc_id} for h in hits]
            for k, v in recall_at_k(ids, set(pos), ks).items():
                rec[k].append(v)
            rr.append(reciprocal_rank(ids, set(pos)))
    metrics: dict[str, float] = {f"answer_hit@{k}": 100 * float(np.mean(v)) for k, v in hit.items()}
    if rr:
        metrics.update({f"recall@{k}": 100 * float(np.mean(v)) for k, v in rec.items()})
        metrics[f"mrr@{max(ks)}"] = float(np.mean(rr))
    return metrics


def evaluate_retrieval(cfg: EvalRetrievalConfig) -> dict[str, Any]:
    """The `radit eval-retrieval` stage: search every question, write run.jsonl and metrics.json.

    The questions, the index (and query encoder) and the output paths are all checked before the first
    write, so a run that fails on bad input leaves `cfg.output` as it was.
    """
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--output {out} is a file; eval-retrieval writes a directory (run.jsonl, metrics.json)")
    questions = load_questions(cfg.questions, limit=cfg.limit, require_answers=True, on_error=cfg.on_error,
                               answers_are_regex=cfg.answers_are_regex)
    searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device, verify=cfg.verify)
    for name in ("config.yaml", "run.jsonl", "metrics.json"):
        check_output_target(out / name)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(cfg, out / "config.yaml")
    t0 = time.time()
    results = search_batched(searcher, [q.question for q in questions], max(cfg.ks), batch_size=cfg.batch_size)
    seconds = time.time() - t0
    write_run(out / "run.jsonl", [q.id for q in questions], [q.question for q in questions], results)
    metrics = retrieval_metrics(results, [q.gold_answers for q in questions], [q.positive_ids for q in questions], cfg.ks)
    report = {
        "index": str(cfg.index),
        "backend": getattr(searcher, "manifest", {}).get("backend"),
        "query_encoder": cfg.query_encoder,
        "questions": cfg.questions,
        "n": len(questions),
        "search_seconds": round(seconds, 2),
        "metrics": metrics,
    }
    atomic_write_json(out / "metrics.json", report)
    return report
