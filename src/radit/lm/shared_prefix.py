"""KV-cache prefix reuse: log p(y | prefix ∘ suffix) for many requests that share a few prefixes.

    python benchmarks/lsr_scoring.py --n 10     # shared vs naive on SQuAD-open questions and their top-10 chunks

RA-DIT's retriever fine-tuning (LSR, Eq. 4) needs log p_LM(y | c ∘ x) from the frozen LM for every
(chunk c, query x, gold answer y) in the top-k of every query, and queries share chunks. The chunk
comes first in the prompt (`Background: {chunk}` then `\\n\\nQuestion: {x}\\nAnswer:`), so each
distinct chunk is read once (its KV cache is kept) and every query that retrieved it continues from
a copy of that cache: `shared_prefix_logprobs`.

A request is (prefix index, suffix, continuation); its token sequence is

    ids(prefix, with the tokenizer's special tokens) + ids(suffix) + ids(continuation)   (no special tokens)

as `radit.lm.inputs` encodes a (prompt, continuation) pair. This equals the ids of the whole
string prefix + suffix + continuation when the text is split where the tokenizer's pre-tokenizer
splits anyway. For SmolLM2 (byte-level BPE, GPT-2 pre-tokenizer) that holds at the end of the chunk
text, before the `\\n\\n` of the template, provided the chunk text does not end in whitespace: a
non-space character followed by a newline is always a pre-token boundary, but trailing spaces or
newlines merge with the next newline when the string is tokenised whole (`"x \\n\\nQ"` gives
`Ġx ĠĊ Ċ Q`, split it gives `Ġx Ġ Ċ Ċ Q`). So strip the chunk and split `template.render(x,
background=chunk)` right after it. The continuation boundary (`Answer:` | ` y`) is the one that
`continuation_logprobs` and LM fine-tuning use already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from radit.lm.inputs import (
    IGNORE_INDEX,
    PromptBatch,
    collate_prompts,
    pad_id,
    tokenize_continuations,
    tokenize_prompts,
)
from radit.lm.model import context_length, logits_to_keep_supported, model_device
from radit.lm.prefill import select_rows
from radit.lm.scoring import target_logprobs
from radit.runtime import autocast

Request = tuple[int, str, str]
"""(prefix index, suffix text, continuation text)."""


def shared_prefix_logprobs(
    model,
    tokenizer,
    prefixes: Sequence[str],
    requests: Sequence[Request],
    *,
    dtype: str = "float32",
    max_length: int | None = None,
    naive: bool = False,
    prefix_batch: int | None = None,
    max_rows: int | None = None,
    stats: dict | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[torch.Tensor]:
    """log p(continuation token t | prefix ∘ suffix ∘ continuation_<t) for every request.

    Prefixes are read once each: batches of `prefix_batch` prefixes run left-padded and keep their
    KV cache, then the requests' suffix ∘ continuation rows run on row copies of that cache, with
    positions continuing from each prefix's length. `naive=True` is the oracle and the baseline: one
    full prefix ∘ suffix ∘ continuation row per request, `max_rows` rows per forward. Both read the
    same token sequence (see the module docstring) and agree up to float rounding. Rows of both are
    left-padded, so every continuation ends in the last column and only the last columns are
    projected onto the vocabulary: the baseline wastes no more on logits than the shared path.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        prefixes: the P distinct shared contexts (e.g. `Background: {chunk}`).
        requests: (prefix index, suffix, continuation) triples, e.g. (chunk i,
            `\\n\\nQuestion: {x}\\nAnswer:`, ` {y}`); in any order, prefixes may have any number.
        dtype: autocast precision (concrete: `radit.runtime.resolve_dtype` first).
        max_length: the context limit; default the model's `max_position_embeddings`. A prefix is cut
            once, at its start (a leading BOS is kept, `radit.lm.inputs.truncate_prompt`), to fit the
            longest suffix + continuation among its requests; `naive` cuts it the same way.
        naive: score without prefix reuse.
        prefix_batch: prefixes per prefill forward. Default: 8 on CPU, 32 on accelerators.
        max_rows: most request rows per forward (of the naive path too); a forward's cache copies
            hold max_rows x the widest prefix of its batch tokens, so lower it for long prefixes on
            a big model. Default: 32 on CPU, 128 on accelerators (a guess: not measured on a GPU).
            On CPU small batches are as fast as any: SmolLM2-135M, 200 LSR slots on 70 chunks,
            2 cores, took 30-31 s with 4/16, 8/16 and 8/32 (prefix_batch/max_rows), 34 s with
            16/64 and 45 s with 32/128.
        stats: if given, `stats["truncated"]` is set to the number of requests whose prefix was cut.
        on_progress: called with the number of requests finished after each forward (for a progress
            bar); the calls add up to `len(requests)`.

    Returns:
        One 1-D float32 CPU tensor per request, of length = the continuation's token count (empty for
        an empty continuation).

    Raises:
        ValueError: on a prefix index out of range, an empty prefix, a request that leaves no room
            for its prefix within `max_length`, or a batch size below 1.
    """
    device = model_device(model)
    if prefix_batch is None:
        prefix_batch = 8 if device.type == "cpu" else 32
    if max_rows is None:
        max_rows = 32 if device.type == "cpu" else 128
    if prefix_batch < 1 or max_rows < 1:
        raise ValueError(f"prefix_batch and max_rows must be >= 1, got {prefix_batch} and {max_rows}")
    if not requests:
        if stats is not None:
            stats["truncated"] = 0
        return []
    prefix_ids, cut, suffixes, conts = _tokenize(tokenizer, prefixes, requests, context_length(model, max_length))
    if stats is not None:
        stats["truncated"] = sum(cut[p] for p, _, _ in requests)
    results: list[torch.Tensor] = [torch.empty(0) for _ in requests]
    progress = on_progress or (lambda n: None)
    empty = sum(not c for c in conts)
    if empty:
        progress(empty)  # nothing to compute
    pad = pad_id(tokenizer)
    with torch.inference_mode(), autocast(device, dtype):
        if naive:
            _naive(model, pad, prefix_ids, requests, suffixes, conts, max_rows, results, progress)
        else:
            _shared(model, pad, prefix_ids, requests, suffixes, conts, prefix_batch, max_rows, results, progress)
    return results


def _tokenize(
    tokenizer, prefixes: Sequence[str], requests: Sequence[Request], max_length: int | None
) -> tuple[dict[int, list[int]], dict[int, bool], list[list[int]], list[list[int]]]:
    """Ids of the used prefixes (cut to fit their longest request), whether each was cut, and each
    request's suffix and continuation ids. The one tokenisation of both paths."""
    for p, _, _ in requests:
        if not 0 <= p < len(prefixes):
            raise ValueError(f"request prefix index {p} is out of range for {len(prefixes)} prefixes")
    suffixes = tokenize_continuations(tokenizer, [s for _, s, _ in requests])
    conts = tokenize_continuations(tokenizer, [c for _, _, c in requests])
    reserve: dict[int, int] = {}
    for (p, _, _), s, c in zip(requests, suffixes, conts):
        reserve[p] = max(reserve.get(p, 0), len(s) + len(c))
    used = sorted(reserve)
    ids, was_cut = tokenize_prompts(tokenizer, [prefixes[p] for p in used], [reserve[p] for p in used], max_length)
    return dict(zip(used, ids)), dict(zip(used, was_cut)), suffixes, conts


def _naive(model, pad, prefix_ids, requests, suffixes, conts, batch_size, results, progress) -> None:
    """One prefix ∘ suffix ∘ continuation row per request, `batch_size` rows a forward, nothing reused."""
    device = model_device(model)
    seqs = {r: prefix_ids[p] + suffixes[r] + conts[r] for r, (p, _, _) in enumerate(requests) if conts[r]}
    # Longest first: a batch that does not fit in memory fails at once, not at the end of a long run.
    order = sorted(seqs, key=lambda r: -len(seqs[r]))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch, targets = _scored_rows([seqs[r] for r in rows], [len(conts[r]) for r in rows], pad)
        inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
        logits = _forward(model, inputs, targets.shape[1], use_cache=False).logits  # [R, K, V]
        lp = target_logprobs(logits, targets.to(device)).cpu()  # [R, K]
        for b, r in enumerate(rows):
            results[r] = lp[b, lp.shape[1] - len(conts[r]) :].clone()
        progress(len(rows))


def _shared(model, pad, prefix_ids, requests, suffixes, conts, prefix_batch, max_rows, results, progress) -> None:
    """Prefill `prefix_batch` prefixes at a time, then score their requests on copies of the cache."""
    device = model_device(model)
    by_prefix: dict[int, list[int]] = {}
    for r, (p, _, _) in enumerate(requests):
        if conts[r]:
            by_prefix.setdefault(p, []).append(r)
    # Longest first (fail fast on memory), and prefixes of similar length together (little left padding).
    order = sorted(by_prefix, key=lambda p: -len(prefix_ids[p]))
    for start in range(0, len(order), prefix_batch):
        group = order[start : start + prefix_batch]
        batch = collate_prompts([prefix_ids[p] for p in group], pad)
        prefix_mask = batch.attention_mask.to(device)  # [G, W]
        out = _forward(model, {k: v.to(device) for k, v in batch.model_inputs().items()}, 1, use_cache=True)
        # Only a request with an empty suffix needs the prefix's own next-token distribution.
        next_lp = out.logits[:, -1].float().log_softmax(-1).cpu()  # [G, V]
        rows, first = [], {}
        for g, p in enumerate(group):
            for r in by_prefix[p]:
                if not suffixes[r]:
                    first[r] = next_lp[g, conts[r][:1]]
                if len(suffixes[r]) + len(conts[r]) > 1:
                    rows.append((g, r))
                else:
                    results[r] = first[r]  # a one-token continuation right after the prefix: done
        if done := sum(len(by_prefix[p]) for p in group) - len(rows):
            progress(done)
        rows.sort(key=lambda x: -(len(suffixes[x[1]]) + len(conts[x[1]])))  # similar lengths pad little
        for r_start in range(0, len(rows), max_rows):
            chunk = rows[r_start : r_start + max_rows]
            tails = [suffixes[r] + conts[r] for _, r in chunk]
            n_scored = [len(conts[r]) - (r in first) for _, r in chunk]
            batch, targets = _scored_rows(tails, n_scored, pad)
            g_idx = torch.tensor([g for g, _ in chunk], device=device)
            inputs = {
                "input_ids": batch.input_ids.to(device),
                "attention_mask": torch.cat([prefix_mask[g_idx], batch.attention_mask.to(device)], dim=1),  # [R, W + S]
                # Each row goes on from its prefix's real length (padding in between is masked out).
                "position_ids": prefix_mask.sum(-1)[g_idx, None] + batch.position_ids.to(device),  # [R, S]
                "cache": select_rows(out.cache, g_idx),  # repeated indices copy the rows: each extends its own
            }
            logits = _forward(model, inputs, targets.shape[1], use_cache=True).logits  # [R, K, V]
            lp = target_logprobs(logits, targets.to(device)).cpu()  # [R, K]
            for b, ((_, r), n) in enumerate(zip(chunk, n_scored)):
                rest = lp[b, lp.shape[1] - n :]
                results[r] = torch.cat([first[r], rest]) if r in first else rest.clone()
            progress(len(chunk))


def _scored_rows(seqs: Sequence[list[int]], n_scored: Sequence[int], pad: int) -> tuple[PromptBatch, torch.Tensor]:
    """Left-padded rows that score the last `n_scored[b]` tokens of each sequence `seqs[b]`.

    Each row holds its sequence but the last token (position t predicts token t + 1), left-padded
    so that every row ends in the last column: the scored tokens are predicted by the last K =
    max(n_scored) columns, and only those need projecting onto the vocabulary ([R, S, V] logits
    are the memory peak).

    Returns:
        the rows (`PromptBatch`: input_ids, mask, positions [R, S]), and targets [R, K]: the token
        each of the last K columns is scored against, right-aligned, IGNORE_INDEX where none is.
    """
    batch = collate_prompts([x[:-1] for x in seqs], pad)
    targets = torch.full((len(seqs), max(n_scored)), IGNORE_INDEX, dtype=torch.long)
    for b, (x, n) in enumerate(zip(seqs, n_scored)):
        targets[b, targets.shape[1] - n :] = torch.tensor(x[len(x) - n :], dtype=torch.long)
    return batch, targets


def _forward(model, inputs: dict, keep: int, use_cache: bool):
    """The model's output, its logits [R, keep, V] for the last `keep` columns only."""
    if logits_to_keep_supported(model):
        return model(**inputs, use_cache=use_cache, logits_to_keep=keep)
    out = model(**inputs, use_cache=use_cache)
    out.logits = out.logits[:, -keep:]
    return out
