"""The LM fine-tuning loss (RA-DIT Eq. 3) as pure tensor functions.

    L(D_L) = - sum_i sum_j log p_LM(y_i | c_ij ∘ x_i)

summed over the *target* tokens only (the "label-loss objective": prompt, Background and padding
positions carry `IGNORE_INDEX` and add nothing). Training minimises its per-token mean.

Normalisation and gradient accumulation: the loss of one optimizer step is the summed NLL of all its
target tokens divided by the number of those tokens, over every micro-batch of the step (and every
process). Each micro-batch therefore divides its own NLL sum by the step's total (`num_targets`),
not by its own count, and the micro-batch gradients simply add up: batch 4 x accumulation 1 and
batch 2 x accumulation 2 give the same loss and the same gradient. (Averaging per-micro-batch means
would weight a token of a micro-batch with few target tokens more than one of a full micro-batch.)
"""

from __future__ import annotations

import math

import torch

from radit.ensemble import retrieval_log_weights
from radit.lm.inputs import IGNORE_INDEX
from radit.lm.scoring import target_logprobs


def count_targets(targets: torch.Tensor) -> int:
    """Number of scored positions (not `IGNORE_INDEX`) in `targets` [...]."""
    return int((targets != IGNORE_INDEX).sum())


def nll_from_logprobs(token_logprobs: torch.Tensor, targets: torch.Tensor, num_targets: int | torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 from per-position log-probs: -sum of the target positions' log p, / `num_targets`.

    Args:
        token_logprobs: [B, S] log p(target) per position (e.g. `radit.lm.scoring.target_logprobs`);
            positions whose target is `IGNORE_INDEX` are masked out whatever they hold.
        targets: [B, S] target ids, `IGNORE_INDEX` where nothing is scored.
        num_targets: the denominator: the target-token count of the whole optimizer step when this is
            one of several micro-batches (see the module docstring); default: this batch's own count
            (the per-token mean of this batch).

    Returns:
        A float32 scalar; 0 (with a gradient path) when there is no target token.
    """
    scored = targets != IGNORE_INDEX  # [B, S]
    total = -torch.where(scored, token_logprobs.float(), torch.zeros_like(token_logprobs, dtype=torch.float32)).sum()
    if num_targets is None:
        num_targets = scored.sum()
    if isinstance(num_targets, torch.Tensor):
        return total / num_targets.clamp(min=1).to(total)
    return total / max(int(num_targets), 1)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, num_targets: int | torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 3 from logits: the mean NLL of the target tokens (float32 log-softmax).

    Args:
        logits: [B, S, V] next-token logits (position t predicts `targets[:, t]`).
        targets: [B, S] target ids or `IGNORE_INDEX` (`radit.lm.inputs.PairBatch.targets` layout).
        num_targets: denominator, as for `nll_from_logprobs`.
    """
    return nll_from_logprobs(target_logprobs(logits, targets), targets, num_targets)


# --------------------------------------------------------------------------- retriever fine-tuning (Eq. 4-5)
#
#   p_LSR(c | x, y) = softmax_c(p_LM(y | c ∘ x) / τ)                                    (Eq. 4)
#   L(D_R) = E_(x,y) KL(p_R(c | x) ‖ p_LSR(c | x, y))                                  (Eq. 5)
#
# over the k chunks retrieved for x, with p_R = softmax(s(x, c) / T), the same retrieval weights as
# the Eq. 2 ensemble (`radit.ensemble.retrieval_log_weights`). Chunks a pair lacks (fewer than k
# retrieved) are masked out of both distributions.


def lsr_scores(logprob_sum: torch.Tensor, n_tokens: torch.Tensor, form: str) -> torch.Tensor:
    """What p_LSR is a softmax of, from the LM's summed log p(y | c ∘ x) per chunk.

    Args:
        logprob_sum: [B, k] sum over y's tokens of log p_LM(y_t | c ∘ x, y_<t), per chunk.
        n_tokens: [B] tokens of each pair's y.
        form: `prob` = p_LM(y | c ∘ x) = exp(sum), the paper's Eq. 4; `logprob` = the sum itself;
            `mean-logprob` = the per-token mean (sum / n_tokens), as Atlas's perplexity distillation.

    Returns:
        [B, k] float64 scores (higher = the LM finds the chunk more useful).
    """
    s = logprob_sum.double()
    if form == "prob":
        return s.exp()  # underflows to 0 for every chunk when y is long: see docs/paper-fidelity.md
    if form == "logprob":
        return s
    if form == "mean-logprob":
        return s / n_tokens.double().clamp(min=1).unsqueeze(-1)
    raise ValueError(f"unknown LSR target form {form!r}; valid: prob, logprob, mean-logprob")


def lsr_log_targets(scores: torch.Tensor, temperature: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p_LSR = log_softmax(scores / τ) over the k chunks (Eq. 4); masked chunks get -inf.

    scores [B, k] (from `lsr_scores`), mask [B, k] bool (True = a real chunk) -> [B, k] float64.
    """
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"the LSR temperature must be a finite number > 0, got {temperature!r}")
    z = scores.double() / temperature
    if mask is not None:
        z = z.masked_fill(~mask, -math.inf)
    return torch.log_softmax(z, dim=-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) = sum_c p (log p - log q) per row, [B, k] -> [B]; terms with p = 0 are 0."""
    p = log_p.exp()
    keep = p > 0
    # -inf log-probs (masked chunks) are replaced before the product: inf * 0 would be NaN, also in backward.
    log_p, log_q = torch.where(keep, log_p, 0.0), torch.where(keep, log_q, 0.0)
    return (p * (log_p - log_q)).sum(-1)


def lsr_loss(
    retrieval_scores: torch.Tensor,
    log_p_lsr: torch.Tensor,
    retrieval_temperature: float,
    direction: str = "retriever-lsr",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 5: the mean over pairs of KL between p_R(c | x) and p_LSR(c | x, y).

    Args:
        retrieval_scores: [B, k] s(x, c) = E_q(x) · E_d(c), with gradients through the query tower.
        log_p_lsr: [B, k] log targets from the frozen LM (`lsr_log_targets`); no gradient flows into them.
        retrieval_temperature: T of p_R = softmax(s / T) (the index's: MiniLM 0.05, DRAGON+ 1).
        direction: `retriever-lsr` = KL(p_R ‖ p_LSR), Eq. 5 as printed (mode-seeking: p_R is pushed
            off chunks the LM rates low); `lsr-retriever` = KL(p_LSR ‖ p_R), what Atlas computes with
            `F.kl_div(log p_R, p_LSR)` (mass-covering: the cross-entropy to p_LSR plus a constant).
        mask: [B, k] bool, True for real chunks; masked ones are out of both distributions.

    Returns:
        A float32 scalar.
    """
    scores = retrieval_scores.float()
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    log_p_r = retrieval_log_weights(scores, retrieval_temperature).double()
    log_p_lsr = log_p_lsr.detach().double()
    if direction == "retriever-lsr":
        kl = _kl(log_p_r, log_p_lsr)
    elif direction == "lsr-retriever":
        kl = _kl(log_p_lsr, log_p_r)
    else:
        raise ValueError(f"unknown KL direction {direction!r}; valid: retriever-lsr, lsr-retriever")
    return kl.mean().float()
