"""Answer and ranking metrics as plain functions: EM, F1, answer-hit@k, recall@k, MRR.

A gold answer is a string, matched after SQuAD normalisation, or a compiled regular expression (the
`gold_answers` of a question whose `answer_type` is "regex", such as DPR's CuratedTREC), matched as
DPR's `regex_match` does: searched for anywhere in the NFD-normalised text, ignoring case.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Sequence

from radit.answers import normalize_answer, pattern_found

Answer = str | re.Pattern[str]
"""A gold answer: text, or a regex answer compiled by `radit.answers.compile_answer_pattern`."""


def exact_match(prediction: str, answers: Sequence[Answer]) -> float:
    """1.0 when the prediction equals a string answer after SQuAD normalisation, or a regex answer
    occurs in it (DPR's rule: `pattern.search`, not a match of the whole prediction)."""
    pred = normalize_answer(prediction)
    return float(any(pattern_found(a, prediction) if isinstance(a, re.Pattern) else pred == normalize_answer(a)
                     for a in answers))


def _f1(prediction: str, answer: Answer) -> float:
    if isinstance(answer, re.Pattern):
        # A pattern has no tokens to overlap, and scoring against the span it matched would put F1
        # under EM whenever the match is part of the prediction: F1 is the regex EM, 1 or 0.
        return float(pattern_found(answer, prediction))
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    common = collections.Counter(pred) & collections.Counter(gold)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, answers: Sequence[Answer]) -> float:
    """Token F1 against the best-matching gold answer (1 or 0 for a regex answer, see `_f1`)."""
    return max((_f1(prediction, a) for a in answers), default=0.0)


def has_answer(text: str, answers: Sequence[Answer]) -> bool:
    """Whether any gold answer occurs in `text`: a string as a whole-token span after SQuAD
    normalisation, a regex anywhere (as DPR's retrieval accuracy for CuratedTREC)."""
    padded = f" {normalize_answer(text)} "
    for a in answers:
        if isinstance(a, re.Pattern):
            if pattern_found(a, text):
                return True
        elif (norm := normalize_answer(a)) and f" {norm} " in padded:
            return True
    return False


def answer_hit_at_k(texts: Sequence[str], answers: Sequence[Answer], ks: Sequence[int]) -> dict[int, float]:
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


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """The mean of b - a over the same questions and its percentile bootstrap interval.

    Args:
        a, b: one score per question (e.g. answer-hit@1 as 0/1) of two systems, in the same question order.
        resamples: bootstrap samples of the questions (drawn with replacement, the same draw for both).
        seed: the draws' seed (fixed: a report reproduces its own interval).
        level: the interval's coverage.

    Returns:
        {"diff": mean(b - a), "low": ..., "high": ..., "significant": 0 is outside [low, high]}; in the
        scores' own units (x 100 for percentages is the caller's).
    """
    import numpy as np

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"paired_bootstrap needs two equal-length, non-empty score lists, got {x.shape} and {y.shape}")
    d = y - x
    draws = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[draws].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"diff": float(d.mean()), "low": float(low), "high": float(high), "significant": bool(low > 0 or high < 0)}


def bootstrap_interval(scores: Sequence[float], resamples: int = 2000, seed: int = 0,
                       level: float = 0.95) -> dict[str, float]:
    """The mean of one system's per-question scores and its percentile bootstrap interval.

    Args:
        scores: one score per question (e.g. EM as 0/1).
        resamples: bootstrap samples of the questions, drawn with replacement.
        seed: the draws' seed; with the same seed and question count they are `paired_bootstrap`'s draws.
        level: the interval's coverage.

    Returns:
        {"mean": mean(scores), "low": ..., "high": ...}, in the scores' own units.
    """
    import numpy as np

    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 1 or not len(x):
        raise ValueError(f"bootstrap_interval needs a non-empty list of scores, got shape {x.shape}")
    draws = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = x[draws].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"mean": float(x.mean()), "low": float(low), "high": float(high)}
