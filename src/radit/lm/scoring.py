"""Per-token log p(y | x) of continuations under a causal LM, batched, and the paper's answer scores.

    python -m radit.lm.scoring --model smollm2-135m-instruct \
        --prompt $'Question: What is the capital of France?\\nAnswer:' --continuation " Paris" --continuation " London"

Everything here returns *log* scores, higher = better: `nll` is the summed log-probability, i.e. minus
the negative log-likelihood the paper names it after (App. B "scoring functions"). The model-facing
functions (`continuation_logprobs`, `prefilled_logprobs`, `shared_prompt_logprobs`) return per-token log-probs; the scores
(`score`, `SCORERS`) are pure functions of those, testable without a model.

Prompt and continuation are tokenised separately and their ids concatenated (`radit.lm.prefill`: the
prompt with the tokenizer's special tokens, the continuation with none), so a continuation has a
well-defined token count that does not depend on the prompt before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from radit.lm.prefill import (
    Prefill,
    context_length,
    encode_continuations,
    encode_prompts,
    logits_to_keep_supported,
    model_device,
    pad_id,
    prefill,
    select_rows,
    truncate_prompt,
)
from radit.runtime import autocast

COMP_PROMPT = "Answer:"
"""The context that `nll_comp` divides by: the caller scores each answer after just this prompt."""


# --------------------------------------------------------------------------- model calls


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[targets] in float32 without materialising the full log-softmax.

    logits: [B, S, V]; targets: [B, S] -> [B, S].
    """
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


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

    Pairs are sorted by total length and batched with right padding, so that a batch wastes little
    compute on padding; results come back in the input order.

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
    if not prompts and not continuations:
        if stats is not None:
            stats["truncated"] = 0
        return []
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations; pass one per pair")
    prompt_ids, cont_ids = encode_prompts(tokenizer, prompts), encode_continuations(tokenizer, continuations)
    limit = context_length(model, max_length)
    truncated = 0
    for i, (p, c) in enumerate(zip(prompt_ids, cont_ids)):
        prompt_ids[i], cut = truncate_prompt(p, len(c), limit, tokenizer.bos_token_id)
        truncated += cut
    if stats is not None:
        stats["truncated"] = truncated

    device = model_device(model)
    pad = pad_id(tokenizer)
    keep_logits = logits_to_keep_supported(model)
    results: list[torch.Tensor] = [torch.empty(0)] * len(prompt_ids)
    # Longest first: a batch that does not fit in memory fails at once, not at the end of a long run.
    scored = [i for i in range(len(prompt_ids)) if cont_ids[i]]
    order = sorted(scored, key=lambda i: -(len(prompt_ids[i]) + len(cont_ids[i])))

    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            p_lens = [len(prompt_ids[i]) for i in rows]
            c_lens = [len(cont_ids[i]) for i in rows]
            width = max(p + c for p, c in zip(p_lens, c_lens))
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for b, i in enumerate(rows):
                ids = prompt_ids[i] + cont_ids[i]
                input_ids[b, : len(ids)] = torch.tensor(ids)
                attention_mask[b, : len(ids)] = 1
            # Right padding: every row's real tokens sit at 0..len-1, so plain positions are right for
            # them; the padded tail is masked out and never read.
            position_ids = torch.arange(width).expand(len(rows), width)

            # Logit position t predicts token t + 1. Only the span that predicts some row's
            # continuation is projected onto the vocabulary: [B, T, V] logits are the memory peak.
            first = min(p - 1 for p in p_lens)
            last = max(p + c - 2 for p, c in zip(p_lens, c_lens))
            span = torch.arange(first, last + 1)
            kwargs = {"logits_to_keep": span.to(device)} if keep_logits else {}
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                use_cache=False,
                **kwargs,
            ).logits  # [B, S or T, V]
            if not keep_logits:
                logits = logits[:, first : last + 1]

            targets = torch.zeros((len(rows), len(span)), dtype=torch.long)  # [B, S]
            for b, i in enumerate(rows):
                offset = p_lens[b] - 1 - first
                targets[b, offset : offset + c_lens[b]] = torch.tensor(cont_ids[i])
            token_lp = _token_logprobs(logits, targets.to(device)).cpu()  # [B, S]
            for b, i in enumerate(rows):
                offset = p_lens[b] - 1 - first
                results[i] = token_lp[b, offset : offset + c_lens[b]].clone()
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

    Each continuation's first token is scored by the prompt's stored next-token log-probs; the rest
    run as one right-padded batch of (prompt, continuation) rows on copies of the prompts' KV cache.
    The result equals `continuation_logprobs` on the same pairs up to float rounding.

    Args:
        model, tokenizer, dtype: as for `continuation_logprobs`.
        pre: the prompts after `radit.lm.prefill.prefill` (with `reserve` >= the longest
            continuation's tokens, so that none is cut).
        continuations: the candidate answers, the same for every prompt.
        max_rows: most (prompt, continuation) rows per forward; the cache copies of one forward
            hold max_rows x the prompts' width tokens, so lower it for long prompts on a big model.
            Default: 64 on accelerators; on CPU max(prompts, 16): with k = 10 prompts that is one
            continuation (after every prompt) per forward, which pads nothing and measured fastest
            (5-8 sentence candidates, SmolLM2 on 2 cores: 2.9-3.4 s vs 3.7-5.7 s with 64 rows).

    Returns:
        [prompts][continuations] 1-D float32 CPU tensors of per-token log-probs.
    """
    cont_ids = encode_continuations(tokenizer, continuations)
    n_prompts, n_cont = len(pre.ids), len(cont_ids)
    device = model_device(model)
    if max_rows is None:
        max_rows = max(n_prompts, 16) if device.type == "cpu" else 64
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    first = pre.next_logprobs.cpu()  # [P, V]
    results = [[first[p, c[:1]] for c in cont_ids] for p in range(n_prompts)]
    # Only continuations of 2+ tokens need a forward (the first token is scored by the prefill). They
    # run sorted by length, in groups, so a forward pads little: 0-shot answers range from one word
    # to a 32-token sentence. Rows are prompt-major: row r * G + g is (prompt r, continuation g).
    longer = sorted((j for j, c in enumerate(cont_ids) if len(c) > 1), key=lambda j: len(cont_ids[j]))
    if not longer:
        return results
    per_prompts = min(n_prompts, max_rows)
    per_group = max(1, max_rows // per_prompts)
    pad = pad_id(tokenizer)
    mask_device = pre.attention_mask.device
    with torch.inference_mode(), autocast(device, dtype):
        for p_start in range(0, n_prompts, per_prompts):
            prompts = torch.arange(p_start, min(p_start + per_prompts, n_prompts))
            n_rows = len(prompts)
            for g_start in range(0, len(longer), per_group):
                group = longer[g_start : g_start + per_group]
                g = len(group)
                width = len(cont_ids[group[-1]]) - 1  # the longest in the group (sorted)
                # Feed each continuation but its last token: its position j predicts token j + 1.
                input_ids = torch.full((g, width), pad, dtype=torch.long)
                cont_mask = torch.zeros((g, width), dtype=torch.long)
                targets = torch.zeros((g, width), dtype=torch.long)
                for i, j in enumerate(group):
                    c = cont_ids[j]
                    input_ids[i, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
                    cont_mask[i, : len(c) - 1] = 1
                    targets[i, : len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
                cache = select_rows(pre.cache, prompts, repeats=g)
                prompt_mask = pre.attention_mask[prompts.to(mask_device)].cpu().repeat_interleave(g, 0)
                mask = torch.cat([prompt_mask, cont_mask.repeat(n_rows, 1)], dim=1)  # [R*G, W + width]
                positions = pre.lengths[prompts.to(mask_device)].cpu().repeat_interleave(g)[:, None] + torch.arange(width)
                logits = model(
                    input_ids=input_ids.repeat(n_rows, 1).to(device),
                    attention_mask=mask.to(device),
                    position_ids=positions.to(device),
                    cache=cache,
                    use_cache=True,
                ).logits  # [R*G, width, V]
                rest = _token_logprobs(logits, targets.repeat(n_rows, 1).to(device)).cpu()  # [R*G, width]
                for r, p in enumerate(prompts.tolist()):
                    for i, j in enumerate(group):
                        results[p][j] = torch.cat([results[p][j], rest[r * g + i, : len(cont_ids[j]) - 1]])
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
    longest = max(len(c) for c in encode_continuations(tokenizer, continuations))
    pre = prefill(model, tokenizer, [prompt], reserve=longest, dtype=dtype, max_length=max_length)
    if stats is not None:
        stats["truncated"] = len(continuations) if pre.truncated else 0
    return prefilled_logprobs(model, tokenizer, pre, continuations, dtype=dtype)[0]


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

    parser = argparse.ArgumentParser(prog="python -m radit.lm.scoring", description=main.__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="folder, packaged name or hub name")
    parser.add_argument("--prompt", required=True, help="the context x")
    parser.add_argument("--continuation", action="append", required=True, help="a candidate answer y (repeatable)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    logprobs = shared_prompt_logprobs(model, tokenizer, args.prompt, args.continuation, dtype=args.dtype)
    comp = shared_prompt_logprobs(model, tokenizer, COMP_PROMPT, args.continuation, dtype=args.dtype)
    for text, lp, clp in zip(args.continuation, logprobs, comp):
        scores = {m: round(score(lp, text, m, clp), 4) for m in SCORERS}
        print(json.dumps({"continuation": text, "tokens": lp.numel(), **scores}))


if __name__ == "__main__":
    main()
