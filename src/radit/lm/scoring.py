"""Per-token log p(y | x) of continuations under a causal LM, batched, and the paper's answer scores.

    python -m radit.lm.scoring --model smollm2-135m-instruct \
        --prompt $'Question: What is the capital of France?\\nAnswer:' --continuation " Paris" --continuation " London"

Everything here returns *log* scores, higher = better: `nll` is the summed log-probability, i.e. minus
the negative log-likelihood the paper names it after (App. B "scoring functions").

- `target_logprobs` and `pair_logprobs` are the differentiable core: log p of a `PairBatch`'s target
  tokens. Inference calls them under `torch.inference_mode`; LM fine-tuning (Eq. 3) calls them with
  gradients, on pairs encoded by the same `radit.lm.inputs.encode_pairs`.
- `continuation_logprobs`, `prefilled_logprobs`, `prefilled_pair_logprobs`, `shared_prompt_logprobs`
  and `candidate_logprobs` return per-token log-probs of text pairs (all but the first reuse the
  prompts' KV cache).
- The scores (`score`, `SCORERS`) are pure functions of those, testable without a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from radit.lm.inputs import (
    IGNORE_INDEX,
    PairBatch,
    collate_pairs,
    pad_id,
    tokenize_continuations,
    tokenize_pairs,
)
from radit.lm.model import context_length, logits_to_keep_supported, model_device
from radit.lm.prefill import Prefill, prefill, select_rows
from radit.runtime import autocast

COMP_PROMPT = "Answer:"
"""The context that `nll_comp` divides by: the caller scores each answer after just this prompt."""


# --------------------------------------------------------------------------- the differentiable core


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] per position, in float32; 0 where the target is `IGNORE_INDEX`.

    Pure and differentiable: the LM fine-tuning loss (Eq. 3) is minus its sum over the answer
    tokens. Computed as logit - logsumexp(logits), without materialising the full log-softmax.

    Args:
        logits: [B, S, V] next-token logits (any float dtype).
        targets: [B, S] the token each position is scored against, or IGNORE_INDEX.

    Returns:
        [B, S] float32 log-probabilities.
    """
    logits = logits.float()
    scored = targets != IGNORE_INDEX  # [B, S]
    picked = logits.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, S]
    return torch.where(scored, picked - logits.logsumexp(-1), torch.zeros_like(picked))


def pair_logprobs(model, batch: PairBatch) -> torch.Tensor:
    """[B, W] log p(target) at every position of `batch` (0 where nothing is scored), in float32.

    One forward pass; only the columns that predict a continuation token are projected onto the
    vocabulary (`PairBatch.target_span`). Runs with gradients unless the caller is in
    `torch.inference_mode` / `no_grad`, and in the caller's autocast precision. `batch.split(out)`
    gives each pair's per-token log-probs; -out.sum() is the summed NLL of the answer tokens (Eq. 3).
    """
    device = model_device(model)
    batch = batch.to(device)
    width = batch.targets.shape[1]
    span = batch.target_span()
    if span.start == span.stop:
        return torch.zeros(batch.targets.shape, dtype=torch.float32, device=device)
    if logits_to_keep_supported(model):
        logits = model(**batch.model_inputs(), use_cache=False,
                       logits_to_keep=torch.arange(span.start, span.stop, device=device)).logits  # [B, S, V]
    else:
        logits = model(**batch.model_inputs(), use_cache=False).logits[:, span]  # [B, S, V]
    lp = target_logprobs(logits, batch.targets[:, span])  # [B, S]
    return torch.nn.functional.pad(lp, (span.start, width - span.stop))  # [B, W]


# --------------------------------------------------------------------------- text pairs


def continuation_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    continuations: Sequence[str],
    batch_size: int = 8,
    dtype: str = "float32",
    max_length: int | None = None,
    stats: dict | None = None,
) -> list[torch.Tensor]:
    """log p(y_t | x, y_<t) for each continuation token, for each (prompt x, continuation y) pair.

    The pairs are encoded by `radit.lm.inputs.tokenize_pairs` (as for training), sorted by total
    length and batched with right padding, so that a batch wastes little compute on padding;
    results come back in the input order.

    Args:
        model: a causal LM (any `AutoModelForCausalLM`), on any device.
        tokenizer: its tokenizer.
        prompts: the contexts x (e.g. `Background: {passage}\\n\\nQuestion: ...\\nAnswer:`).
        continuations: the answers y, usually starting with a space (` Paris`).
        batch_size: pairs per forward pass.
        dtype: autocast precision (`float32`, `bfloat16`, `float16`); log-probs are computed in float32.
        max_length: longest prompt + continuation in tokens; longer pairs lose tokens from the start
            of the prompt (the continuation is kept whole). Default: the model's `max_position_embeddings`.
        stats: if given, `stats["truncated"]` is set to the number of pairs whose prompt was cut.

    Returns:
        One 1-D float32 CPU tensor per pair, of length = the continuation's token count (empty for an
        empty continuation).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pairs = tokenize_pairs(tokenizer, prompts, continuations, context_length(model, max_length))
    if stats is not None:
        stats["truncated"] = sum(x.truncated for x in pairs)
    results: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    # Longest first: a batch that does not fit in memory fails at once, not at the end of a long run.
    scored = [i for i, x in enumerate(pairs) if x.continuation]
    order = sorted(scored, key=lambda i: -(len(pairs[i].prompt) + len(pairs[i].continuation)))
    pad = pad_id(tokenizer)
    with torch.inference_mode(), autocast(model_device(model), dtype):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = collate_pairs([pairs[i] for i in rows], pad)
            token_lp = pair_logprobs(model, batch).cpu()  # [B, W]
            for i, lp in zip(rows, batch.split(token_lp)):
                results[i] = lp.clone()
    return results


def prefilled_logprobs(
    model,
    tokenizer,
    pre: Prefill,
    continuations: Sequence[str],
    dtype: str = "float32",
    max_rows: int | None = None,
) -> list[list[torch.Tensor]]:
    """`continuation_logprobs` of every continuation after every prefilled prompt, reading no prompt again.

    `prefilled_pair_logprobs` of all (prompt, continuation) pairs. The result equals
    `continuation_logprobs` on the same pairs up to float rounding.

    Args:
        model, tokenizer, dtype: as for `continuation_logprobs`.
        pre: the prompts after `radit.lm.prefill.prefill` (with `reserve` >= the longest
            continuation's tokens, so that none is cut).
        continuations: the candidate answers, the same for every prompt.
        max_rows: as for `prefilled_pair_logprobs`.

    Returns:
        [prompts][continuations] 1-D float32 CPU tensors of per-token log-probs.
    """
    n = len(continuations)
    flat = prefilled_pair_logprobs(model, tokenizer, pre, [(p, c) for p in range(len(pre.ids)) for c in continuations],
                                   dtype=dtype, max_rows=max_rows)
    return [flat[p * n : (p + 1) * n] for p in range(len(pre.ids))]


def prefilled_pair_logprobs(
    model,
    tokenizer,
    pre: Prefill,
    pairs: Sequence[tuple[int, str]],
    dtype: str = "float32",
    max_rows: int | None = None,
) -> list[torch.Tensor]:
    """Per-token log p(continuation | prompt) for (prompt row of `pre`, continuation) pairs.

    Each continuation's first token is scored by its prompt's stored next-token log-probs; the rest
    run in right-padded batches of (prompt, continuation) rows on copies of the prompts' KV cache,
    sorted by continuation length so that a forward pads little (0-shot answers range from one word
    to a 32-token sentence). Each row may have its own continuation: several questions joined by
    `radit.lm.prefill.concat_prefills` score their own candidates in the same forwards.

    Args:
        model, tokenizer, dtype: as for `continuation_logprobs`.
        pre: the prompts (with `reserve` >= the longest continuation's tokens).
        pairs: (row of `pre`, continuation text).
        max_rows: most pairs per forward; the cache copies of one forward hold max_rows x the
            prompts' width tokens, so lower it for long prompts on a big model. Default: 64 on
            accelerators; on CPU max(prompts, 16): with k = 10 prompts that is about one
            continuation after every prompt per forward, which measured fastest (5-8 sentence
            candidates, SmolLM2 on 2 cores: 2.9-3.4 s vs 3.7-5.7 s with 64 rows).

    Returns:
        One 1-D float32 CPU tensor per pair, as long as its continuation's tokens.
    """
    distinct = sorted({c for _, c in pairs})
    cont_ids = dict(zip(distinct, tokenize_continuations(tokenizer, distinct)))
    n_prompts = len(pre.ids)
    if any(not 0 <= p < n_prompts for p, _ in pairs):
        raise ValueError(f"a pair names a prompt row outside the prefill's {n_prompts} rows")
    device = model_device(model)
    if max_rows is None:
        max_rows = max(n_prompts, 16) if device.type == "cpu" else 64
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    first = pre.next_logprobs.cpu()  # [P, V]
    results = [first[p, cont_ids[c][:1]] for p, c in pairs]
    # Only continuations of 2+ tokens need a forward (the first token is scored by the prefill).
    # Sorted by length, then by text: the pairs of one continuation sit together, after every prompt.
    longer = sorted((i for i, (_, c) in enumerate(pairs) if len(cont_ids[c]) > 1),
                    key=lambda i: (len(cont_ids[pairs[i][1]]), pairs[i][1], pairs[i][0]))
    pad = pad_id(tokenizer)
    mask_device = pre.attention_mask.device
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(longer), max_rows):
            group = longer[start : start + max_rows]
            conts = [cont_ids[pairs[i][1]] for i in group]
            width = max(len(c) for c in conts) - 1
            # Feed each continuation but its last token: its position j predicts token j + 1.
            input_ids = torch.full((len(group), width), pad, dtype=torch.long)
            cont_mask = torch.zeros((len(group), width), dtype=torch.long)
            targets = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
            for r, c in enumerate(conts):
                input_ids[r, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                cont_mask[r, : len(c) - 1] = 1
                targets[r, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
            rows = torch.tensor([pairs[i][0] for i in group])
            cache = select_rows(pre.cache, rows)
            mask = torch.cat([pre.attention_mask[rows.to(mask_device)].cpu(), cont_mask], dim=1)  # [G, W + width]
            positions = pre.lengths[rows.to(mask_device)].cpu()[:, None] + torch.arange(width)
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                cache=cache,
                use_cache=True,
            ).logits  # [G, width, V]
            rest = target_logprobs(logits, targets.to(device)).cpu()  # [G, width]
            for r, (i, c) in enumerate(zip(group, conts)):
                results[i] = torch.cat([results[i], rest[r, : len(c) - 1]])
    return results


def shared_prompt_logprobs(
    model,
    tokenizer,
    prompt: str,
    continuations: Sequence[str],
    dtype: str = "float32",
    max_length: int | None = None,
    stats: dict | None = None,
) -> list[torch.Tensor]:
    """`continuation_logprobs` for many continuations of one prompt, reading the prompt once.

    One forward pass over the prompt fills a KV cache (`prefill`); all continuations then run in one
    right-padded batch on top of it (`prefilled_logprobs`). For long prompts (a retrieved passage
    plus a question) and several candidate answers this does the prompt's work once instead of once
    per answer. The result equals `continuation_logprobs` on the same pairs up to float rounding.

    Args:
        model, tokenizer, dtype: as for `continuation_logprobs`.
        prompt: the shared context x.
        continuations: the candidate answers.
        max_length: as for `continuation_logprobs`, except that the prompt is cut once, to fit the
            *longest* continuation, so every candidate sees the same context.
        stats: if given, `stats["truncated"]` is set to the number of pairs that saw a cut prompt
            (all of them, or none).

    Returns:
        One 1-D float32 CPU tensor per continuation.
    """
    if not continuations:
        if stats is not None:
            stats["truncated"] = 0
        return []
    longest = max(len(c) for c in tokenize_continuations(tokenizer, continuations))
    pre = prefill(model, tokenizer, [prompt], reserve=longest, dtype=dtype, max_length=max_length)
    if stats is not None:
        stats["truncated"] = len(continuations) if pre.truncated else 0
    return prefilled_logprobs(model, tokenizer, pre, continuations, dtype=dtype)[0]


def candidate_logprobs(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[str],
    *,
    dtype: str = "float32",
    naive: bool = False,
    pre: Prefill | None = None,
) -> list[list[torch.Tensor]]:
    """log p_LM(y | c ∘ x) per token, for every candidate y after every prompt c ∘ x.

    The LM side of RA-DIT's two equations:

    - Eq. 2 (the parallel ensemble): p_LM(y | x, C') = sum_c p_LM(y | c ∘ x) p_R(c | x) needs every
      candidate answer under every retrieved chunk's prompt;
    - Eq. 4 (LM-supervised retrieval): p_LSR(c | x, y) = softmax_c(log p_LM(y | c ∘ x) / τ) needs the
      gold answer y under every chunk, from the frozen LM (this runs under `torch.inference_mode`).

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        prompts: the P contexts c ∘ x (e.g. one question's k `Background: {chunk}` prompts).
        candidates: the C continuations y, as they follow the prompt (`template.continuation(answer)`).
        dtype: autocast precision (concrete: `radit.runtime.resolve_dtype` first).
        naive: one full forward per (prompt, candidate) pair (`continuation_logprobs(batch_size=1)`),
            the reference for the default: the prompts run once (`prefill`) and the candidates are
            scored on their KV cache (`prefilled_logprobs`). Equal up to float rounding.
        pre: the prompts already prefilled (e.g. after decoding from them), with room for the longest
            candidate; not with `naive`.

    Returns:
        [P][C] 1-D float32 CPU tensors: candidate j's per-token log-probs after prompt i.
    """
    if pre is not None and (naive or len(pre.ids) != len(prompts)):
        raise ValueError("pre must be the prefill of the same prompts, and is not used with naive=True")
    if not prompts:
        return []
    if not candidates:
        return [[] for _ in prompts]
    if naive:
        return [continuation_logprobs(model, tokenizer, [p] * len(candidates), candidates, batch_size=1, dtype=dtype)
                for p in prompts]
    if pre is None:
        longest = max(len(c) for c in tokenize_continuations(tokenizer, candidates))
        pre = prefill(model, tokenizer, prompts, reserve=longest, dtype=dtype)
    return prefilled_logprobs(model, tokenizer, pre, candidates, dtype=dtype)


# --------------------------------------------------------------------------- scores (pure)


def _nll(token_logprobs: torch.Tensor, continuation: str, comp_logprobs: torch.Tensor | None) -> float:
    return float(token_logprobs.double().sum())


def _nll_token(token_logprobs: torch.Tensor, continuation: str, comp_logprobs: torch.Tensor | None) -> float:
    if token_logprobs.numel() == 0:
        raise ValueError("nll_token is undefined for a continuation with no tokens")
    return float(token_logprobs.double().mean())


def _nll_char(token_logprobs: torch.Tensor, continuation: str, comp_logprobs: torch.Tensor | None) -> float:
    if not continuation:
        raise ValueError("nll_char is undefined for an empty continuation")
    return float(token_logprobs.double().sum()) / len(continuation)


def _nll_comp(token_logprobs: torch.Tensor, continuation: str, comp_logprobs: torch.Tensor | None) -> float:
    if comp_logprobs is None:
        raise ValueError(
            f"nll_comp needs comp_logprobs: the continuation's token log-probs given just {COMP_PROMPT!r} "
            f"(e.g. shared_prompt_logprobs(model, tokenizer, {COMP_PROMPT!r}, answers))"
        )
    # log [p(y | x) / p(y | "Answer:")]: discounts answers that are likely whatever the question.
    return float(token_logprobs.double().sum() - comp_logprobs.double().sum())


SCORERS: dict[str, Callable[[torch.Tensor, str, torch.Tensor | None], float]] = {
    "nll": _nll,
    "nll_token": _nll_token,
    "nll_char": _nll_char,
    "nll_comp": _nll_comp,
}
"""The paper's answer-scoring functions (App. B), each a log score where higher = better."""


def score(token_logprobs: torch.Tensor, continuation: str, method: str, comp_logprobs: torch.Tensor | None = None) -> float:
    """One answer's score from its per-token log-probs; higher = better for every method.

    Args:
        token_logprobs: [n_tokens] log p(y_t | x, y_<t), e.g. from `continuation_logprobs`.
        continuation: the answer text (its character count is `nll_char`'s denominator).
        method: `nll` (sum of log-probs = -NLL), `nll_token` (mean per token), `nll_char` (sum per
            character), or `nll_comp` (log p(y|x) - log p(y|"Answer:")).
        comp_logprobs: [n_tokens] log-probs of the same answer after just `COMP_PROMPT`; `nll_comp` only.
    """
    if method not in SCORERS:
        raise ValueError(f"unknown scoring method {method!r}; valid: {', '.join(SCORERS)}")
    return SCORERS[method](token_logprobs, continuation, comp_logprobs)


def main(argv: Sequence[str] | None = None) -> None:
    """Print every score of each continuation, one JSON line each."""
    import argparse
    import json

    from radit.lm.model import load_lm
    from radit.runtime import DTYPE_CHOICES, resolve_dtype

    parser = argparse.ArgumentParser(prog="python -m radit.lm.scoring", description=main.__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="folder, packaged name or hub name")
    parser.add_argument("--prompt", required=True, help="the context x")
    parser.add_argument("--continuation", action="append", required=True, help="a candidate answer y (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="auto: bfloat16 where it is fast")
    args = parser.parse_args(argv)

    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    dtype = resolve_dtype(args.dtype, model_device(model))
    logprobs = shared_prompt_logprobs(model, tokenizer, args.prompt, args.continuation, dtype=dtype)
    comp = shared_prompt_logprobs(model, tokenizer, COMP_PROMPT, args.continuation, dtype=dtype)
    for text, lp, clp in zip(args.continuation, logprobs, comp):
        scores = {m: round(score(lp, text, m, clp), 4) for m in SCORERS}
        print(json.dumps({"continuation": text, "tokens": lp.numel(), **scores}))


if __name__ == "__main__":
    main()
