"""Eq. 2 (parallel retrieval-augmented ensemble) against hand-computed numbers and naive versions."""

from __future__ import annotations

import math

import pytest
import torch

from radit.answers import normalize_answer
from radit.ensemble import (
    choose,
    dedupe_candidates,
    ensemble_choice,
    mix_log_probs,
    retrieval_log_weights,
    retrieval_weights,
    token_mixture,
)

# 1 query, 2 chunks with retrieval scores [2, 0], 2 candidates (a, b).
SCORES = torch.tensor([[2.0, 0.0]])
# p_LM(candidate | chunk ∘ x): chunk 1 mildly prefers a, chunk 2 strongly prefers b.
P_LM = torch.tensor([[[0.5, 0.4], [0.1, 0.9]]])


def test_weights_by_hand():
    # T = 1: [e² / (e² + 1), 1 / (e² + 1)] = [0.880797..., 0.119203...]
    w = retrieval_weights(SCORES)
    assert w.tolist()[0] == pytest.approx([0.8807970779778824, 0.11920292202211755], abs=1e-7)
    assert w[0, 0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1), abs=1e-7)
    torch.testing.assert_close(retrieval_log_weights(SCORES).exp(), w)


def test_eq2_by_hand_and_argmax_flips_with_temperature():
    # T = 1:   a = 0.880797·0.5 + 0.119203·0.1 = 0.452319;  b = 0.880797·0.4 + 0.119203·0.9 = 0.459601 -> b
    choice, mixed = ensemble_choice(P_LM.log(), SCORES, temperature=1.0)
    assert mixed.exp()[0].tolist() == pytest.approx([0.45231883119115296, 0.4596014610110588], abs=1e-6)
    assert choice.tolist() == [1]
    # T = 0.5: weights [e⁴/(e⁴+1), 1/(e⁴+1)] = [0.982014, 0.017986]
    #          a = 0.982014·0.5 + 0.017986·0.1 = 0.492806;  b = 0.982014·0.4 + 0.017986·0.9 = 0.408993 -> a
    choice, mixed = ensemble_choice(P_LM.log(), SCORES, temperature=0.5)
    assert mixed.exp()[0].tolist() == pytest.approx([0.49280551601516337, 0.4089931049810458], abs=1e-6)
    assert choice.tolist() == [0]


def test_mix_matches_naive_on_random_batch():
    torch.manual_seed(0)
    q, k, c = 3, 5, 4
    p_lm = torch.rand(q, k, c, dtype=torch.float64)
    w = retrieval_weights(torch.randn(q, k, dtype=torch.float64), temperature=0.7)
    naive = (p_lm * w[:, :, None]).sum(dim=1)  # [Q, C]
    mixed = mix_log_probs(p_lm.log(), w.log())
    torch.testing.assert_close(mixed.exp(), naive)
    assert choose(mixed).tolist() == naive.argmax(dim=-1).tolist()


def test_stable_where_naive_underflows():
    log_p_lm = torch.tensor([[[-1000.0, -1001.0], [-1002.0, -1000.0]]])
    log_p_r = torch.log(torch.tensor([[0.5, 0.5]]))
    naive = (log_p_lm.exp() * log_p_r.exp()[:, :, None]).sum(1).log()
    assert torch.isinf(naive).all()  # exp(-1000) is 0 even in float64
    mixed = mix_log_probs(log_p_lm, log_p_r)
    # a: log(0.5 e^-1000 + 0.5 e^-1002) = -1000 + log(0.5 (1 + e^-2)); b: -1000 + log(0.5 (e^-1 + 1))
    assert mixed[0].tolist() == pytest.approx([-1000 + math.log(0.5 * (1 + math.exp(-2))),
                                               -1000 + math.log(0.5 * (math.exp(-1) + 1))], abs=1e-3)
    assert choose(mixed).tolist() == [1]


def test_minus_inf_means_probability_zero():
    # Candidate a has probability 0 under chunk 2: only chunk 1 contributes to it.
    w = torch.tensor([[0.25, 0.75]])
    log_p_lm = torch.tensor([[[math.log(0.4), math.log(0.2)], [-math.inf, math.log(0.6)]]])
    mixed = mix_log_probs(log_p_lm, w.log())
    assert mixed.exp()[0].tolist() == pytest.approx([0.25 * 0.4, 0.25 * 0.2 + 0.75 * 0.6])
    # A candidate impossible under every chunk mixes to -inf, not NaN; a padded chunk (score -inf) weighs 0.
    all_inf = mix_log_probs(torch.full((1, 2, 1), -math.inf), w.log())
    assert all_inf.item() == -math.inf
    assert retrieval_weights(torch.tensor([[1.0, -math.inf]])).tolist() == [[1.0, 0.0]]


def test_nan_and_shape_errors():
    with pytest.raises(ValueError, match="NaN"):
        mix_log_probs(torch.tensor([[[math.nan]]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"\[Q, k, C\]"):
        mix_log_probs(torch.zeros(2, 3, 4), torch.zeros(2, 4))


def test_equal_scores_give_uniform_weights():
    w = retrieval_weights(torch.full((2, 4), 0.73), temperature=0.05)
    torch.testing.assert_close(w, torch.full((2, 4), 0.25))


def test_small_temperature_gives_one_hot():
    # Cosine-like scores a hundredth apart: nearly uniform at T = 1, one-hot at T = 1e-4.
    scores = torch.tensor([[0.51, 0.50, 0.49]])
    assert retrieval_weights(scores).max().item() < 0.35
    w = retrieval_weights(scores, temperature=1e-4)
    assert not torch.isnan(w).any()
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan])
def test_temperature_validated(temperature):
    with pytest.raises(ValueError, match="temperature"):
        retrieval_weights(SCORES, temperature)
    with pytest.raises(ValueError, match="temperature"):
        ensemble_choice(P_LM.log(), SCORES, temperature)


def test_token_mixture_is_a_distribution():
    torch.manual_seed(0)
    k, v = 4, 11
    next_lp = torch.log_softmax(torch.randn(k, v), dim=-1)
    log_p_r = retrieval_log_weights(torch.randn(k))
    mixed = token_mixture(next_lp, log_p_r)
    assert mixed.shape == (v,)
    assert mixed.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(mixed.exp(), (next_lp.exp() * log_p_r.exp()[:, None]).sum(0))
    with pytest.raises(ValueError):
        token_mixture(next_lp, log_p_r[:2])


def test_dedupe_candidates():
    answers = ["The Eiffel Tower", "eiffel tower.", "", "Paris", "  ", "the", "paris!", "Lyon"]
    assert dedupe_candidates(answers, normalize_answer) == ["The Eiffel Tower", "Paris", "Lyon"]
    assert dedupe_candidates(["a", "A", "b"], str.strip) == ["a", "A", "b"]
    assert dedupe_candidates([], normalize_answer) == []
