"""Greedy decoding, per prompt or with the prompts' next-token distributions mixed (REPLUG).

    python -m radit.lm.generate --model smollm2-135m-instruct \
        --prompt $'Question: What is the capital of France?\\nAnswer:' --prompt $'Q: Who wrote Hamlet?\\nA:'

RA-DIT decodes one greedy answer per retrieved chunk (App. B "Inference"), and the paper's short
answers are the first line of that text (`radit.answers.extract_answer`).

- `greedy_generate` decodes with Hugging Face's `model.generate` in left-padded batches: the
  reference the KV-cache paths are tested against.
- `greedy_from_prefill` and `ensemble_from_prefill` continue from prompts already run once
  (`radit.lm.prefill.prefill`), through one decoding loop whose only difference is how each step
  picks the next token: each row its own argmax, or the argmax of the k rows' next-token
  distributions mixed with p_R (REPLUG's token-level ensemble, `radit.ensemble.token_mixture`).

Prompts are tokenised and cut as everywhere else (`radit.lm.inputs`); only the new text comes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from radit.answers import answer_complete, extract_answer
from radit.ensemble import token_mixture
from radit.lm.inputs import collate_prompts, pad_id, tokenize_prompts
from radit.lm.model import context_length, logits_to_keep_supported, model_device
from radit.lm.prefill import Prefill, select_rows
from radit.runtime import autocast


class _StopAtAnswerEnd(StoppingCriteria):
    """Stops a row once its new text holds a complete answer line, i.e. what `extract_answer` keeps.

    Called by `generate` after every step with all sequences so far; returns one bool per row. The
    text after that line is never read, so stopping there changes no extracted answer, and it saves
    most of `max_new_tokens` steps (short QA answers are a few tokens long).
    """

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width :], skip_special_tokens=True)
        done = [answer_complete(t) for t in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def greedy_generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 8,
    dtype: str = "float32",
    max_length: int | None = None,
    stats: dict | None = None,
    stop_at_answer_end: bool = False,
    min_new_tokens: int = 1,
) -> list[str]:
    """Greedy continuations of `prompts` by `model.generate`, batched with left padding.

    Args:
        model: a causal LM (any `AutoModelForCausalLM`), on any device.
        tokenizer: its tokenizer (with a pad token, as `load_lm` gives it).
        prompts: the contexts to continue.
        max_new_tokens: decoding steps per prompt (fewer if the model emits its eos token).
        batch_size: prompts per `generate` call. Prompts are sorted by length first, so a batch
            holds little padding; outputs come back in the input order.
        dtype: autocast precision (`float32`, `bfloat16`, `float16`).
        max_length: longest prompt + new tokens; longer prompts lose tokens from the start (a
            leading BOS is kept). Default: the model's `max_position_embeddings`.
        stats: if given, `stats["truncated"]` is set to the number of prompts that were cut.
        stop_at_answer_end: stop a row as soon as it holds a complete first answer line (see
            `extract_answer`); the returned text then ends at that line's newline token.
        min_new_tokens: the eos token is not chosen before this many new tokens. The default 1 keeps
            a model from answering nothing at all: SmolLM2-135M-Instruct ends many plain
            `Question: ...\nAnswer:` prompts at once (an empty answer, never right).

    Returns:
        The decoded new text of each prompt, special tokens removed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if stats is not None:
        stats["truncated"] = 0
    if not prompts:
        return []
    # The new tokens play the part of the continuation: the prompt's start makes room for them.
    ids, cut = tokenize_prompts(tokenizer, prompts, max_new_tokens, context_length(model, max_length))
    if stats is not None:
        stats["truncated"] = sum(cut)

    device = model_device(model)
    pad = pad_id(tokenizer)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs: list[str] = [""] * len(ids)
    with torch.inference_mode(), autocast(device, dtype):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            # Left padding puts every prompt's last token in the last column, where generation
            # continues; `generate` derives position ids from the mask, so a padded row sees the
            # same positions as it would alone.
            batch = collate_prompts([ids[i] for i in rows], pad)
            width = batch.input_ids.shape[1]
            kwargs = {}
            if stop_at_answer_end:
                kwargs["stopping_criteria"] = StoppingCriteriaList([_StopAtAnswerEnd(tokenizer, width)])
            out = model.generate(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad,
                **kwargs,
            )
            texts = tokenizer.batch_decode(out[:, width:].cpu(), skip_special_tokens=True)
            for i, text in zip(rows, texts):
                outputs[i] = text
    return outputs


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a generation: the model's generation config's, else the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


# --------------------------------------------------------------------------- decoding from a prefill

ChooseNext = Callable[[torch.Tensor], torch.Tensor]
"""One decoding step's choice: [R, V] float32 next-token log-probs of the rows still decoding ->
[R] the token each row takes."""


def argmax_next(logprobs: torch.Tensor) -> torch.Tensor:
    """Greedy decoding, each row on its own: [R, V] -> [R]."""
    return logprobs.argmax(-1)


def mixture_next(log_weights: torch.Tensor) -> ChooseNext:
    """REPLUG's token-level ensemble: every row takes the argmax of the k rows' next-token
    distributions mixed with p_R (log_weights [k]); [k, V] -> [k], one token repeated."""

    def choose(logprobs: torch.Tensor) -> torch.Tensor:
        mixed = token_mixture(logprobs, log_weights.to(device=logprobs.device, dtype=torch.float32))  # [V]
        return mixed.argmax().expand(logprobs.shape[0])

    return choose


def _decode_from_prefill(
    model, tokenizer, pre: Prefill, choose: ChooseNext, max_new_tokens: int, dtype: str,
    stop_at_answer_end: bool, min_new_tokens: int,
) -> list[list[int]]:
    """The decoding loop: feed each row the token `choose` picks until the row stops; its new token ids.

    A row stops at an eos token (not kept), after `max_new_tokens` tokens, or (`stop_at_answer_end`)
    once its text holds a complete first answer line. Decodes on a copy of `pre`'s cache, so `pre`
    can be decoded from or scored on again.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model_device(model)
    n = len(pre.ids)
    cache = select_rows(pre.cache, torch.arange(n))
    mask = pre.attention_mask
    positions = pre.lengths[:, None].clone()  # [R, 1] the position of each row's next token
    logprobs = pre.next_logprobs  # [R, V]
    stop = sorted(eos_ids(model, tokenizer))
    keep_logits = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    tokens: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))  # the rows still decoding, in the order of the cache's batch
    with torch.inference_mode(), autocast(device, dtype):
        for step in range(max_new_tokens):
            if step < min_new_tokens and stop:
                logprobs = logprobs.clone()
                logprobs[:, stop] = float("-inf")
            chosen = choose(logprobs).tolist()
            keep = []  # positions in `active` of the rows that go on
            for r, (i, t) in enumerate(zip(active, chosen)):
                if t in stop:
                    continue
                tokens[i].append(t)
                if not (stop_at_answer_end and answer_complete(tokenizer.decode(tokens[i], skip_special_tokens=True))):
                    keep.append(r)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(active):
                # Finished rows leave the batch: the cache stops growing (and being copied) for them.
                idx = torch.tensor(keep, device=mask.device)
                cache.batch_select_indices(idx)
                mask, positions = mask[idx], positions[idx]
                active, chosen = [active[r] for r in keep], [chosen[r] for r in keep]
            feed = torch.tensor([[t] for t in chosen], device=device)
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], dim=1)
            out = model(input_ids=feed, attention_mask=mask, position_ids=positions.to(device),
                        cache=cache, use_cache=True, **keep_logits)
            positions += 1
            logprobs = out.logits[:, -1].float().log_softmax(-1)  # [R, V]
    return tokens


def greedy_from_prefill(
    model,
    tokenizer,
    pre: Prefill,
    max_new_tokens: int = 32,
    dtype: str = "float32",
    stop_at_answer_end: bool = False,
    min_new_tokens: int = 1,
) -> list[str]:
    """Greedy continuations of prefilled prompts: `greedy_generate` without reading the prompts again.

    Decodes all rows of `pre` together on a copy of its cache (`pre` itself is left as it was, so
    the same prompts can be scored afterwards). Stops a row at an eos token, after `max_new_tokens`
    tokens, or (`stop_at_answer_end`) once it holds a complete first answer line; the outputs are
    those of `greedy_generate` on the same prompts, up to float rounding. `pre` must leave room for
    `max_new_tokens` (`prefill(reserve=max_new_tokens)`); `min_new_tokens` as for `greedy_generate`.

    Returns:
        The decoded new text of each prompt, special tokens removed.
    """
    tokens = _decode_from_prefill(model, tokenizer, pre, argmax_next, max_new_tokens, dtype,
                                  stop_at_answer_end, min_new_tokens)
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def ensemble_from_prefill(
    model,
    tokenizer,
    pre: Prefill,
    log_weights: torch.Tensor,
    max_new_tokens: int = 32,
    dtype: str = "float32",
    stop_at_answer_end: bool = False,
    min_new_tokens: int = 1,
) -> str:
    """One answer decoded from k prefilled prompts by REPLUG's token-level ensemble.

    Each step mixes the k next-token distributions with p_R,
    log sum_c p_LM(token | c ∘ x, y_<t) p_R(c | x), takes the argmax and feeds it to all k prompts.
    With one prompt (or all of p_R on one) this is `greedy_from_prefill` of that prompt.

    Args:
        pre: the k prompts (`prefill(reserve=max_new_tokens)`).
        log_weights: [k] log p_R(c | x) of the prompts (`radit.ensemble.retrieval_log_weights`).
        Others: as for `greedy_from_prefill`.

    Returns:
        The decoded new text, special tokens removed.
    """
    if log_weights.shape != (len(pre.ids),):
        raise ValueError(f"log_weights must have one entry per prompt ({len(pre.ids)}), got shape {tuple(log_weights.shape)}")
    tokens = _decode_from_prefill(model, tokenizer, pre, mixture_next(log_weights), max_new_tokens, dtype,
                                  stop_at_answer_end, min_new_tokens)
    # Every row took the same tokens (and so stopped at the same step): any row is the answer.
    return tokenizer.decode(tokens[0], skip_special_tokens=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Print each prompt's greedy continuation and the answer extracted from it, one JSON line each."""
    import argparse
    import json

    from radit.lm.model import load_lm
    from radit.runtime import DTYPE_CHOICES, resolve_dtype

    parser = argparse.ArgumentParser(prog="python -m radit.lm.generate", description=main.__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="folder, packaged name or hub name")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt to continue (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help="auto: bfloat16 where it is fast")
    args = parser.parse_args(argv)

    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    dtype = resolve_dtype(args.dtype, model_device(model))
    texts = greedy_generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, dtype=dtype)
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "generated": text, "answer": extract_answer(text)}))


if __name__ == "__main__":
    main()
