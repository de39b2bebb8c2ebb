"""Running a batch of prompts once to keep their KV cache.

RA-DIT's inference (App. B) reads each of a question's k augmented prompts twice: once to decode an
answer under it, once more to rescore every distinct candidate answer under it. `prefill` runs the k
prompts as one left-padded batch and keeps the result (`Prefill`: the cache, the mask and each
prompt's next-token log-probs); `radit.lm.generate.greedy_from_prefill` decodes from it and
`radit.lm.scoring.prefilled_logprobs` scores candidates on it, so each prompt is read once.

Several questions answered together (`radit.augment.answer_generative_batch`) are read into one
Prefill, so that decoding and scoring run once for all the questions' rows: a decoding or scoring
step reads every weight of the model for a few tokens, so it costs about the same for 3 rows as for
24. Reading the prompts is compute-bound and gains little from a bigger batch, but questions asked
together often retrieved the same chunks, and the chunk comes first: `prefill_shared` reads each
shared beginning once and every prompt's rest on a copy of its cache. Without shared chunks, each
question's prompts are prefilled on their own (padding only to that question's longest prompt) and
joined (`concat_prefills`).

Prompts are tokenised and cut as everywhere else (`radit.lm.inputs`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

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
    pre = _read(model, ids, pad_id(tokenizer), dtype)
    pre.truncated = sum(cut)
    return pre


def _read(model, ids: Sequence[list[int]], pad: int, dtype: str, head: Prefill | None = None,
          heads: torch.Tensor | None = None) -> Prefill:
    """One left-padded forward over the rows `ids`; with `head`, row i goes on from row `heads[i]` of it.

    Continuing rows attend to their head row's tokens, then to their own; the head's padding stays
    between the two, masked out, and positions go on from the head row's real length.
    """
    device = model_device(model)
    batch = collate_prompts(ids, pad)
    inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
    if head is not None:
        heads = heads.to(device)
        inputs["attention_mask"] = torch.cat([head.attention_mask[heads], inputs["attention_mask"]], dim=1)
        inputs["position_ids"] = head.lengths[heads, None] + inputs["position_ids"]
        inputs["cache"] = select_rows(head.cache, heads)  # repeated rows are copies: each extends its own
    keep = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    with torch.inference_mode(), autocast(device, dtype):
        out = model(**inputs, use_cache=True, **keep)
    next_logprobs = out.logits[:, -1].float().log_softmax(-1)  # [P, V]
    return Prefill(list(ids), inputs["attention_mask"], out.cache, next_logprobs, 0)


def prefill_shared(
    model,
    tokenizer,
    prompts: Sequence[str],
    groups: Sequence[Hashable],
    reserve: int = 0,
    dtype: str = "float32",
    max_length: int | None = None,
    prefix_rows: int | None = None,
    max_rows: int | None = None,
    stats: dict | None = None,
) -> Prefill:
    """`prefill`, reading once the beginning that prompts of one group have in common.

    RA-DIT's prompts start with their chunk (`Background: {chunk}\n\n{question}`), and questions
    answered together often retrieved the same chunks: 8 consecutive SQuAD-open test questions hold
    15 distinct chunks among their 24 top-3 slots (63 %), 16 questions 54 %. Prompts with the same
    `groups` key (e.g. the chunk's id) share the longest run of leading tokens they all have (at
    least the chunk, as tokens: the split is exact whatever the tokenizer). Two forwards: the
    distinct shared beginnings, left-padded; then each prompt's remaining tokens (at least its last
    one) on a copy of its beginning's cache rows, positions going on from the beginning's length.
    A row of the result holds [beginning, padding, rest], the padding masked out: every prompt
    still ends in the last column, and decoding (`radit.lm.generate.greedy_from_prefill`) and
    scoring (`radit.lm.scoring.prefilled_pair_logprobs`) go on from it as from `prefill`'s, up to
    float rounding. A prompt alone in its group is read whole (its beginning is all but its last
    token).

    Args:
        groups: one key per prompt; only prompts of one key are compared.
        prefix_rows: beginnings per forward of the first pass, sorted by length so that each
            forward pads little. Default: 4 on CPU, 16 on accelerators (a guess: not measured on a
            GPU). Padding is computed like real tokens: on 2 AMD EPYC cores in fp32 (no AVX-512 or
            AMX), 48 SmolLM2 questions, 8 at a time at k=3,
            took 1.96 s a question with 4, 2.44 s with all ~15 beginnings in one forward, and 2.46
            s prefilled question by question.
        max_rows: most prompts per forward of the second pass. Default: 32 on CPU, 128 on
            accelerators. The parts of both passes are joined by `concat_prefills`.
        stats: if given, `stats["tokens"]` gets the prompts' token count and `stats["read"]` the
            tokens the two passes read.
        Others: as for `prefill`.

    Raises:
        ValueError: on `groups` of another length than `prompts`, a prompt of one token, or a model
            whose cache is not plain `DynamicLayer` layers (`plain_cache`).
    """
    if not prompts:
        raise ValueError("prefill_shared needs at least one prompt")
    if len(groups) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts need as many group keys, got {len(groups)}")
    if not plain_cache(model):
        raise ValueError("prefill_shared continues rows of plain DynamicLayer caches only; use prefill")
    ids, cut = tokenize_prompts(tokenizer, prompts, reserve, context_length(model, max_length))
    if min(len(x) for x in ids) < 2:
        raise ValueError("prefill_shared needs prompts of 2 tokens or more (a beginning and a rest); use prefill")
    cpu = model_device(model).type == "cpu"
    prefix_rows = (4 if cpu else 16) if prefix_rows is None else prefix_rows
    max_rows = (32 if cpu else 128) if max_rows is None else max_rows
    if prefix_rows < 1 or max_rows < 1:
        raise ValueError(f"prefix_rows and max_rows must be >= 1, got {prefix_rows} and {max_rows}")
    members: dict[Hashable, list[int]] = {}
    for row, key in enumerate(groups):
        members.setdefault(key, []).append(row)
    beginnings: list[list[int]] = []
    head_of, split = [0] * len(ids), [0] * len(ids)  # each row's beginning, and where its rest starts
    for rows in members.values():
        # A group's rows share their common tokens, but each keeps at least its last token to read itself.
        common = min(_common_length([ids[r] for r in rows]), min(len(ids[r]) for r in rows) - 1) if len(rows) > 1 else 0
        if common:  # one beginning for the group
            beginnings.append(ids[rows[0]][:common])
            for r in rows:
                head_of[r], split[r] = len(beginnings) - 1, common
        else:  # each row its own beginning: all but its last token
            for r in rows:
                beginnings.append(ids[r][:-1])
                head_of[r], split[r] = len(beginnings) - 1, len(ids[r]) - 1
    pad = pad_id(tokenizer)
    # Pass 1: the beginnings, longest first in each forward (those of similar lengths pad little).
    order = sorted(range(len(beginnings)), key=lambda b: -len(beginnings[b]))
    heads = concat_prefills([_read(model, [beginnings[b] for b in order[i : i + prefix_rows]], pad, dtype)
                             for i in range(0, len(order), prefix_rows)])
    where = torch.empty(len(order), dtype=torch.long)
    where[torch.tensor(order)] = torch.arange(len(order))  # beginning -> its row in `heads`
    # Pass 2: each prompt's rest on its beginning's cache, in prompt order.
    parts = []
    for i in range(0, len(ids), max_rows):
        rows = range(i, min(i + max_rows, len(ids)))
        part = _read(model, [ids[r][split[r]:] for r in rows], pad, dtype, head=heads,
                     heads=where[[head_of[r] for r in rows]])
        part.ids = [ids[r] for r in rows]
        parts.append(part)
    out = concat_prefills(parts)
    out.truncated = sum(cut)
    if stats is not None:
        stats["tokens"] = sum(len(x) for x in ids)
        stats["read"] = sum(len(b) for b in beginnings) + sum(len(x) - s for x, s in zip(ids, split))
    return out


def _common_length(seqs: Sequence[list[int]]) -> int:
    """How many leading tokens all of `seqs` share."""
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def plain_cache(model) -> bool:
    """Whether the model's KV cache is plain `DynamicLayer` layers, the only kind that `concat_prefills`
    can pad and `prefill_shared` can continue with a gap (sliding-window or chunked layers cannot)."""
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # an unusual config: take the safe path
        return False
    return all(type(layer) is DynamicLayer for layer in cache.layers)


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
