"""Tokenising prompts for a causal LM, and running a batch of them once to keep their KV cache.

RA-DIT's inference (App. B) reads each of a question's k augmented prompts twice: once to decode an
answer under it, once more to rescore every distinct candidate answer under it. `prefill` runs the k
prompts as one left-padded batch and keeps the result (`Prefill`: the cache, the mask and each
prompt's next-token log-probs); `radit.lm.generate.greedy_from_prefill` decodes from it and
`radit.lm.scoring.prefilled_logprobs` scores candidates on it, so each prompt is read once.

Prompts are tokenised with the tokenizer's own special tokens (e.g. a BOS for Llama), continuations
with none, and the ids concatenated: a continuation has a token count that does not depend on the
prompt before it.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Sequence

import torch

from radit.runtime import autocast


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def context_length(model, max_length: int | None = None) -> int | None:
    """`max_length` if given, else the model's `max_position_embeddings` (None if it has none)."""
    return max_length if max_length is not None else getattr(model.config, "max_position_embeddings", None)


def logits_to_keep_supported(model) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def pad_id(tokenizer) -> int:
    """The id padded positions hold (they are masked out, so any valid id does)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def encode_prompts(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's special tokens; an error for an empty one."""
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    for prompt, x in zip(prompts, ids):
        if not x:
            # The first continuation token needs a context to be predicted from.
            raise ValueError(f"prompt {prompt!r} has no tokens (and the tokenizer adds no BOS); give a non-empty prompt")
    return [list(x) for x in ids]


def encode_continuations(tokenizer, continuations: Sequence[str]) -> list[list[int]]:
    """Token ids of each continuation, without special tokens."""
    return [list(x) for x in tokenizer(list(continuations), add_special_tokens=False)["input_ids"]]


def truncate_prompt(prompt: list[int], n_cont: int, max_length: int | None, bos_id: int | None) -> tuple[list[int], bool]:
    """Cut tokens from the start of the prompt so that prompt + continuation fit `max_length`.

    The continuation is what is being scored (or generated), so it is kept whole; the start of the
    prompt (the far end of a retrieved passage, in RA-DIT's `Background: ...` prompts) is the least
    relevant context. A leading BOS is kept, as the model was trained to see it first.
    """
    if max_length is None or len(prompt) + n_cont <= max_length:
        return prompt, False
    head = prompt[:1] if bos_id is not None and prompt[0] == bos_id else []
    budget = max_length - n_cont - len(head)
    if budget < 1:
        raise ValueError(
            f"a continuation of {n_cont} tokens leaves no room for the prompt within max_length={max_length}; "
            "raise max_length or shorten the continuation"
        )
    return head + prompt[-budget:], True


@dataclasses.dataclass
class Prefill:
    """P prompts after one forward pass: what decoding and scoring continue from."""

    ids: list[list[int]]
    """Each prompt's token ids (after truncation)."""
    attention_mask: torch.Tensor
    """[P, W] 1 for real tokens; prompts are left-padded, so every prompt ends in column W - 1."""
    cache: object
    """The KV cache of the P prompts (a transformers `Cache`, [P, ..., W, ...] per layer). Never
    extended in place: `select_rows` gives each user its own copy to extend."""
    next_logprobs: torch.Tensor
    """[P, V] float32 log p(next token | prompt) at each prompt's end: the first token of any continuation."""
    truncated: int
    """Prompts cut at the start to leave room for the continuation."""

    @property
    def lengths(self) -> torch.Tensor:
        """[P] real tokens per prompt: the position the first continuation token takes."""
        return self.attention_mask.sum(-1)


def prefill(
    model,
    tokenizer,
    prompts: Sequence[str],
    reserve: int = 0,
    dtype: str = "float32",
    max_length: int | None = None,
) -> Prefill:
    """Run `prompts` through the model as one left-padded batch and keep the KV cache.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        prompts: the contexts (e.g. one question's k `Background: {chunk}` prompts).
        reserve: tokens to leave free after each prompt within `max_length` (the longest answer that
            will be decoded or scored); longer prompts lose tokens from the start.
        dtype: autocast precision.
        max_length: the context limit; default the model's `max_position_embeddings`.
    """
    if not prompts:
        raise ValueError("prefill needs at least one prompt")
    ids = encode_prompts(tokenizer, prompts)
    limit, truncated = context_length(model, max_length), 0
    for i, x in enumerate(ids):
        ids[i], cut = truncate_prompt(x, reserve, limit, tokenizer.bos_token_id)
        truncated += cut
    n, width = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((n, width), pad_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x) :] = torch.tensor(x)
        mask[i, width - len(x) :] = 1
    # Left padding: positions count real tokens only, so a padded row sees the positions it has alone.
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    device = model_device(model)
    keep = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    with torch.inference_mode(), autocast(device, dtype):
        out = model(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                    position_ids=positions.to(device), use_cache=True, **keep)
    next_logprobs = out.logits[:, -1].float().log_softmax(-1)  # [P, V]
    return Prefill(ids, mask.to(device), out.cache, next_logprobs, truncated)


def select_rows(cache, rows: torch.Tensor, repeats: int = 1):
    """A new cache holding `rows` of `cache`, each repeated `repeats` times (rows of one prompt adjacent).

    The layers are copied shallowly and their tensors re-indexed, so `cache` itself is left as it
    was; extending the copy (decoding, scoring) never touches the prompts' own cache.
    """
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    out.batch_select_indices(rows.to(_cache_device(cache)))
    if repeats > 1:
        out.batch_repeat_interleave(repeats)
    return out


def _cache_device(cache) -> torch.device:
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor):
            return keys.device
    return torch.device("cpu")
