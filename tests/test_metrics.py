"""Answer and ranking metrics on hand-made cases."""

import pytest

from radit.answers import compile_answer_pattern, gold_answers
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


# --- regex answers (DPR's CuratedTREC): searched for, ignoring case, as DPR's regex_match ----------


def test_regex_answers_em_f1_and_has_answer():
    (oswald,) = gold_answers(["Lee\\s+Harvey\\s+Oswald"], "regex")
    assert exact_match("lee  harvey OSWALD", [oswald]) == 1.0
    assert exact_match("It was Lee Harvey Oswald, in 1963.", [oswald]) == 1.0  # search, not a match of the whole text
    assert exact_match("Oswald", [oswald]) == 0.0
    # F1 of a regex answer is its EM: a pattern has no tokens to overlap
    assert f1_score("It was Lee Harvey Oswald", [oswald]) == 1.0 and f1_score("Harvey", [oswald]) == 0.0
    assert has_answer("Passage: lee harvey oswald shot ...", [oswald])
    assert not has_answer("Harvey Milk", [oswald])
    assert answer_hit_at_k(["nothing", "Lee Harvey Oswald"], [oswald], [1, 2]) == {1: 0.0, 2: 1.0}


def test_regex_is_not_read_as_text_and_text_is_not_read_as_regex():
    # as text, "1[0-9]{3}" is the literal string; as a regex it matches any year 1000-1999
    assert exact_match("1969", ["1[0-9]{3}"]) == 0.0
    assert exact_match("1969", gold_answers(["1[0-9]{3}"], "regex")) == 1.0
    assert gold_answers(["a.b"]) == ["a.b"] and not has_answer("axb", ["a.b"])
    # strings and patterns may be mixed; the best one counts
    mixed = ["Denver Broncos", compile_answer_pattern("panthers?")]
    assert exact_match("the Carolina Panthers", mixed) == 1.0 and f1_score("Denver", mixed) == pytest.approx(2 / 3)


def test_regex_answers_are_compared_in_nfd_like_dpr():
    (cafe,) = gold_answers(["caf\u00e9"], "regex")  # composed é
    assert has_answer("Un CAFE\u0301 cr\u00e8me", [cafe])  # decomposed É


def test_paired_bootstrap_interval():
    from radit.eval.metrics import paired_bootstrap

    a = [0, 1, 0, 1] * 50
    same = paired_bootstrap(a, a)
    assert same == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}
    better = paired_bootstrap(a, [1] * 200)  # +0.5 on every other question
    assert better["diff"] == 0.5 and 0.4 < better["low"] < 0.5 < better["high"] < 0.6 and better["significant"]
    noisy = paired_bootstrap([0, 1] * 10, [1, 0] * 9 + [1, 1])  # one question's gain in 20: not significant
    assert noisy["diff"] == 0.05 and noisy["low"] < 0 < noisy["high"] and not noisy["significant"]
    assert paired_bootstrap(a, [1] * 200, seed=0) == better  # fixed seed, same interval
