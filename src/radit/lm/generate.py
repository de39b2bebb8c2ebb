"""Batched greedy decoding, and the short answer a QA prompt's continuation holds.

    python -m radit.lm.generate --model smollm2-135m-instruct \
        --prompt $'Question: What is the capital of France?\\nAnswer:' --prompt $'Q: Who wrote Hamlet?\\nA:'

Prompts are tokenised as in `radit.lm.scoring` (with the tokenizer's own special tokens, e.g. a BOS),
left-padded into batches and decoded with `model.generate(do_sample=False)`; only the new text comes
back. RA-DIT decodes one greedy answer per retrieved chunk (App. B "Inference"), and the paper's short
answers are the first line of that text (`extract_answer`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from radit.answers import answer_complete, extract_answer
from radit.lm.prefill import Prefill, context_length, logits_to_keep_supported, model_device, pad_id, select_rows, truncate_prompt
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
    """Greedy continuations of `prompts`, batched with left padding; only the new text is returned.

    Args:
        model: a causal LM (any `AutoModelForCausalLM`), on any device.
        tokenizer: its tokenizer (with a pad token, as `load_lm` gives it); its `padding_side` is
            set to "left" while batching and restored afterwards.
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
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    limit = context_length(model, max_length)
    truncated = 0
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {prompts[i]!r} has no tokens (and the tokenizer adds no BOS); give a non-empty prompt")
        # The new tokens play the part of the continuation: the prompt's start makes room for them.
        ids[i], cut = truncate_prompt(list(p), max_new_tokens, limit, tokenizer.bos_token_id)
        truncated += cut
    if stats is not None:
        stats["truncated"] = truncated

    device = model_device(model)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    outputs: list[str] = [""] * len(ids)
    saved_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode(), autocast(device, dtype):
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                # Left padding puts every prompt's last token in the last column, where generation
                # continues; `generate` derives position ids from the mask, so a padded row sees the
                # same positions as it would alone.
                batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                input_ids = batch["input_ids"].to(device)
                kwargs = {}
                if stop_at_answer_end:
                    kwargs["stopping_criteria"] = StoppingCriteriaList([_StopAtAnswerEnd(tokenizer, input_ids.shape[1])])
                out = model.generate(
                    input_ids=input_ids,
                    attention_mask=batch["attention_mask"].to(device),
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id(tokenizer),
                    **kwargs,
                )
                texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :].cpu(), skip_special_tokens=True)
                for i, text in zip(rows, texts):
                    outputs[i] = text
    finally:
        tokenizer.padding_side = saved_side
    return outputs


def eos_ids(model, tokenizer) -> set[int]:
    """The token ids that end a generation: the model's generation config's, else the tokenizer's eos."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set() if eos is None else {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


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
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model_device(model)
    n = len(pre.ids)
    cache = select_rows(pre.cache, torch.arange(n))
    mask = pre.attention_mask
    positions = pre.lengths[:, None].clone()  # [P, 1] the position of each row's next token
    next_logits = pre.next_logprobs
    stop = eos_ids(model, tokenizer)
    keep_logits = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    tokens: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))  # the rows still decoding, in the order of the cache's batch
    with torch.inference_mode(), autocast(device, dtype):
        for step in range(max_new_tokens):
            if step < min_new_tokens and stop:
                next_logits = next_logits.clone()
                next_logits[:, sorted(stop)] = float("-inf")
            chosen = next_logits.argmax(-1).tolist()
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
            next_logits = out.logits[:, -1]
    return [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]


def main(argv: Sequence[str] | None = None) -> None:
    """Print each prompt's greedy continuation and the answer extracted from it, one JSON line each."""
    import argparse
    import json

    from radit.lm.model import load_lm

    parser = argparse.ArgumentParser(prog="python -m radit.lm.generate", description=main.__doc__)
    parser.add_argument("--model", default="smollm2-135m-instruct", help="folder, packaged name or hub name")
    parser.add_argument("--prompt", action="append", required=True, help="a prompt to continue (repeatable)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)

    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    texts = greedy_generate(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "generated": text, "answer": extract_answer(text)}))


if __name__ == "__main__":
    main()
