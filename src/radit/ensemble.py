"""The parallel retrieval-augmented ensemble (RA-DIT Eq. 2, after REPLUG), as pure tensor functions.

    p_LM(y | x, C') = sum_{c in C'} p_LM(y | c ∘ x) · p_R(c | x),   p_R(c | x) = softmax_{C'}(s(x, c) / T)

Everything is done in log space: `mix_log_probs` is a logsumexp over the chunk axis, so answers whose
probability underflows (long answers, log p ≈ -1000) still compare correctly.

Shapes: Q queries, k retrieved chunks per query, C candidate answers (options of a multiple-choice
question, or the distinct answers decoded under the k chunks), V vocabulary.

Every candidate must be scored under every chunk: for generation tasks, an answer decoded under chunk i
is rescored under all k chunks before mixing. A -inf entry of `log_p_lm` means probability zero, not
"not scored"; using it as a missing-value marker would silently drop that chunk's vote.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _float(t: Tensor) -> Tensor:
    # At least fp32: half-precision scores differ by less than fp16's resolution for cosine encoders.
    return t.to(torch.promote_types(t.dtype, torch.float32))


def retrieval_log_weights(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """log p_R(c | x) = log_softmax(s / T) over the top-k.  scores [..., k] -> [..., k].

    The paper has no temperature (T = 1, which suits DRAGON+'s raw dot products); normalised encoders
    (MiniLM, e5, bge) give cosines a few hundredths apart and need T ≈ 0.05. A -inf score (padding
    for a query with fewer than k hits) gets weight zero.
    """
    _check_temperature(temperature)
    return torch.log_softmax(_float(scores) / temperature, dim=-1)


def retrieval_weights(scores: Tensor, temperature: float = 1.0) -> Tensor:
    """p_R(c | x) = softmax(s / T) over the top-k.  scores [Q, k] (or any [..., k]) -> [Q, k]."""
    _check_temperature(temperature)
    return torch.softmax(_float(scores) / temperature, dim=-1)


def _mix(log_p: Tensor, log_p_r: Tensor) -> Tensor:
    # log_p [..., k, X], log_p_r [..., k] -> [..., X]: log sum_c exp(log_p[c] + log_p_r[c])
    if torch.isnan(log_p).any() or torch.isnan(log_p_r).any():
        raise ValueError("NaN in the log-probabilities to mix")
    return torch.logsumexp(_float(log_p) + _float(log_p_r).unsqueeze(-1), dim=-2)


def mix_log_probs(log_p_lm: Tensor, log_p_r: Tensor) -> Tensor:
    """Eq. 2 in log space: log sum_c p_LM(y | c ∘ x) p_R(c | x).

    Args:
        log_p_lm: [Q, k, C] log p_LM(candidate | chunk ∘ question), every candidate under every chunk
            (or a length-normalised score, for the nll_char / nll_token / nll_comp variants).
        log_p_r: [Q, k] log retrieval weights, e.g. `retrieval_log_weights(scores, T)`.

    Returns:
        [Q, C] the mixed log-probability of each candidate.
    """
    if log_p_lm.dim() != 3 or log_p_r.shape != log_p_lm.shape[:2]:
        raise ValueError(f"expected log_p_lm [Q, k, C] and log_p_r [Q, k], got "
                         f"{tuple(log_p_lm.shape)} and {tuple(log_p_r.shape)}")
    return _mix(log_p_lm, log_p_r)


def choose(mixed: Tensor) -> Tensor:
    """The best candidate per query.  mixed [Q, C] -> [Q] (ties go to the lower index)."""
    return mixed.argmax(dim=-1)


def ensemble_choice(log_p_lm: Tensor, scores: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """Retrieval scores [Q, k] + LM log-probs [Q, k, C] -> (chosen index [Q], mixed log-probs [Q, C])."""
    mixed = mix_log_probs(log_p_lm, retrieval_log_weights(scores, temperature))
    return choose(mixed), mixed


def token_mixture(next_token_log_probs: Tensor, log_p_r: Tensor) -> Tensor:
    """REPLUG-style token-level ensemble for one decoding step.

    Args:
        next_token_log_probs: [k, V] (or [..., k, V]) log p_LM(next token | chunk ∘ prefix), normalised.
        log_p_r: [k] (or [..., k]) log retrieval weights.

    Returns:
        [V] (or [..., V]) log-probabilities of the mixed next-token distribution.
    """
    if next_token_log_probs.dim() < 2 or log_p_r.shape != next_token_log_probs.shape[:-1]:
        raise ValueError(f"expected next_token_log_probs [k, V] and log_p_r [k], got "
                         f"{tuple(next_token_log_probs.shape)} and {tuple(log_p_r.shape)}")
    return _mix(next_token_log_probs, log_p_r)


def dedupe_candidates(per_chunk_answers: Iterable[str], normalize: Callable[[str], str]) -> list[str]:
    """The distinct answers decoded under the k chunks, in first-seen order.

    Two answers are the same if `normalize` maps them to the same string (e.g.
    `radit.answers.normalize_answer`); the first spelling is kept. Answers that normalise to
    the empty string are dropped.
    """
    seen: set[str] = set()
    out = []
    for answer in per_chunk_answers:
        key = normalize(answer)
        if key and key not in seen:
            seen.add(key)
            out.append(answer)
    return out
