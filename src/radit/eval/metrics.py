"""Answer and ranking metrics as plain functions: SQuAD normalisation, EM, F1, answer-hit@k, recall@k, MRR."""

from __future__ import annotations

import collections
from collections.abc import Sequence

from radit.answers import normalize_answer

def exact_match(prediction: str, answers: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def _f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[str]) -> float:
    """Token F1 against the best-matching gold answer."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def has_answer(text: str, answers: Sequence[str]) -> bool:
    """Whether any gold answer occurs in `text` as a whole-token span after SQuAD normalisation."""
    padded = f" {normalize_answer(text)} "
    return any((norm := normalize_answer(a)) and f" {norm} " in padded for a in answers)


def answer_hit_at_k(texts: Sequence[str], answers: Sequence[str], ks: Sequence[int]) -> dict[int, float]:
    """1.0 at every k at or after the first retrieved text that contains an answer."""
    first = next((i for i, t in enumerate(texts) if has_answer(t, answers)), None)
    return {k: float(first is not None and first < k) for k in ks}


def recall_at_k(retrieved: Sequence[set[str]], positives: set[str], ks: Sequence[int]) -> dict[int, float]:
    """Fraction of `positives` found in the top k; `retrieved[i]` holds the ids rank i answers to
    (a passage id and its document id, so labels may name either)."""
    out = {}
    for k in ks:
        found = set().union(*retrieved[:k]) & positives if retrieved[:k] else set()
        out[k] = len(found) / len(positives)
    return out


def reciprocal_rank(retrieved: Sequence[set[str]], positives: set[str]) -> float:
    return next((1.0 / (i + 1) for i, ids in enumerate(retrieved) if ids & positives), 0.0)
