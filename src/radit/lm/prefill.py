"""Running a batch of prompts once to keep their KV cache.

RA-DIT's inference (App. B) reads each of a question's k augmented prompts twice: once to decode an
answer under it, once more to rescore every distinct candidate answer under it. `prefill` runs the k
prompts as one left-padded batch and keeps the result (`Prefill`: the cache, the mask and each
prompt's next-token log-probs); `radit.lm.generate.greedy_from_prefill` decodes from it and
`radit.lm.scoring.prefilled_logprobs` scores candidates on it, so each prompt is read once.

Several questions answered together (`radit.augment.answer_generative_batch`) prefill each question's
prompts on their own, so that a question's batch pads only to its own longest prompt, and then join
them (`concat_prefills`): decoding and scoring run once for all the questions' rows. Reading prompts
is compute-bound, so it gains little from a bigger batch; a decoding or scoring step reads every
weight of the model for a few tokens, so it costs about the same for 3 rows as for 24.

Prompts are tokenised and cut as everywhere else (`radit.lm.inputs`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicLayer

from radit.lm.inputs import collate_prompts, pad_id, tokenize_prompts
from radit.lm.model import context_length, logits_to_keep_supported, model_device
from radit.runtime import autocast


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
        dtype: autocast precision (concrete: `radit.runtime.resolve_dtype` first).
        max_length: the context limit; default the model's `max_position_embeddings`.
    """
    if not prompts:
        raise ValueError("prefill needs at least one prompt")
    ids, cut = tokenize_prompts(tokenizer, prompts, reserve, context_length(model, max_length))
    device = model_device(model)
    batch = collate_prompts(ids, pad_id(tokenizer))
    keep = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    with torch.inference_mode(), autocast(device, dtype):
        out = model(**{k: v.to(device) for k, v in batch.model_inputs().items()}, use_cache=True, **keep)
    next_logprobs = out.logits[:, -1].float().log_softmax(-1)  # [P, V]
    return Prefill(ids, batch.attention_mask.to(device), out.cache, next_logprobs, sum(cut))


def concat_prefills(pres: Sequence[Prefill]) -> Prefill:
    """One Prefill holding the rows of `pres` in order, as if their prompts had been prefilled together.

    Every row is left-padded to the widest (zeros in the cache, 0 in the attention mask), so it keeps
    its prompt's positions: decoding or scoring on the result gives each row what it gets on its own
    Prefill, up to float rounding. A single Prefill comes back as it is.

    Raises:
        ValueError: for a cache other than plain dynamic layers (sliding-window or quantised layers
            cannot be padded this way); answer the prompt groups one at a time instead.
    """
    if not pres:
        raise ValueError("concat_prefills needs at least one Prefill")
    if len(pres) == 1:
        return pres[0]
    caches = [p.cache for p in pres]
    n_layers = len(caches[0].layers)
    if any(len(c.layers) != n_layers or any(type(layer) is not DynamicLayer for layer in c.layers) for c in caches):
        raise ValueError("concat_prefills joins caches of plain DynamicLayer layers only")
    width = max(p.attention_mask.shape[1] for p in pres)

    def left_pad(x: torch.Tensor, dim: int) -> torch.Tensor:  # zeros before column 0 of `dim`, up to `width`
        missing = width - x.shape[dim]
        if not missing:
            return x
        shape = list(x.shape)
        shape[dim] = missing
        return torch.cat([x.new_zeros(shape), x], dim=dim)

    out = copy.copy(caches[0])
    out.layers = [copy.copy(layer) for layer in caches[0].layers]
    for i, layer in enumerate(out.layers):
        # DynamicLayer tensors are [rows, heads, width, head_dim].
        layer.keys = torch.cat([left_pad(c.layers[i].keys, 2) for c in caches])
        layer.values = torch.cat([left_pad(c.layers[i].values, 2) for c in caches])
    mask = torch.cat([left_pad(p.attention_mask, 1) for p in pres])
    return Prefill([ids for p in pres for ids in p.ids], mask, out,
                   torch.cat([p.next_logprobs for p in pres]), sum(p.truncated for p in pres))


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
