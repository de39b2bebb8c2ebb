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

import torch

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
