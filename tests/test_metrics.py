"""Answer and ranking metrics on hand-made cases."""

import pytest

from radit.eval.metrics import (
    answer_hit_at_k,
    exact_match,
    f1_score,
    has_answer,
    normalize_answer,
    recall_at_k,
    reciprocal_rank,
)


def test_normalize_drops_articles_punctuation_case_and_spaces():
    assert normalize_answer("  The  Denver Broncos! ") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theater") == "theater"  # 'the' inside a word stays


def test_exact_match_and_f1():
    assert exact_match("the Denver Broncos.", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos of Denver", ["Denver Broncos"]) == 0.0
    assert f1_score("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)  # p=2/3, r=1
    assert f1_score("Carolina", ["Denver Broncos", "Carolina Panthers"]) == pytest.approx(2 / 3)
    assert f1_score("", ["x"]) == 0.0


def test_has_answer_matches_whole_tokens_only():
    assert has_answer("Founded by Zhu Yuanzhang in 1368.", ["zhu yuanzhang"])
    assert not has_answer("The year 13680 was far away", ["1368"])
    assert has_answer("It ended in 1368.", ["1368"])
    assert not has_answer("anything", ["the"])  # an answer that normalises to nothing never hits


def test_answer_hit_at_k_counts_from_first_hit():
    texts = ["nothing", "still nothing", "the answer is Paris", "Paris again"]
    assert answer_hit_at_k(texts, ["Paris"], [1, 2, 3, 10]) == {1: 0.0, 2: 0.0, 3: 1.0, 10: 1.0}
    assert answer_hit_at_k(texts, ["Rome"], [10]) == {10: 0.0}


def test_recall_and_mrr_accept_passage_or_document_labels():
    retrieved = [{"a#0", "a"}, {"b#1", "b"}, {"c#0", "c"}]
    assert recall_at_k(retrieved, {"b", "c#0"}, [1, 2, 3]) == {1: 0.0, 2: 0.5, 3: 1.0}
    assert reciprocal_rank(retrieved, {"b"}) == 0.5
    assert reciprocal_rank(retrieved, {"z"}) == 0.0
