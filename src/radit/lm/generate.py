"""Batched greedy decoding, and the short answer a QA prompt's continuation holds.

    python -m radit.lm.generate --model smollm2-135m-instruct \
        --prompt $'Question: What is the capital of France?\\nAnswer:' --prompt $'Q: Who wrote Hamlet?\\nA:'

Prompts are tokenised as in `radit.lm.scoring` (with the tokenizer's own special tokens, e.g. a BOS),
left-padded into batches and decoded with `model.generate(do_sample=False)`; only the new text comes
back. RA-DIT decodes one greedy answer per retrieved chunk (App. B "Inference"), and the paper's short
answers are the first line of that text (`extract_answer`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from radit.lm.scoring import _device, _max_length, _truncate_prompt
from radit.runtime import autocast

# A leading answer marker the model may repeat ("Answer: Paris", "A: Paris").
_MARKER = re.compile(r"^(?:answer|a)\s*:\s*", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The paper-style short answer: the first line that is non-empty once stripped of a leading
    "Answer:" / "A:" marker, stripped. "" when there is none.

        extract_answer(" Paris\\nQuestion: ...")  ->  "Paris"
        extract_answer("\\nAnswer: Zhu Yuanzhang") ->  "Zhu Yuanzhang"
    """
    for line in text.splitlines():
        answer = _MARKER.sub("", line.strip()).strip()
        if answer:
            return answer
    return ""


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
        done = [("\n" in t) and bool(extract_answer(t[: t.rfind("\n")])) for t in texts]
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
    limit = _max_length(model, max_length)
    truncated = 0
    for i, p in enumerate(ids):
        if not p:
            raise ValueError(f"prompt {prompts[i]!r} has no tokens (and the tokenizer adds no BOS); give a non-empty prompt")
        # The new tokens play the part of the continuation: the prompt's start makes room for them.
        ids[i], cut = _truncate_prompt(list(p), max_new_tokens, limit, tokenizer.bos_token_id)
        truncated += cut
    if stats is not None:
        stats["truncated"] = truncated

    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad_id,
                    **kwargs,
                )
                texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :].cpu(), skip_special_tokens=True)
                for i, text in zip(rows, texts):
                    outputs[i] = text
    finally:
        tokenizer.padding_side = saved_side
    return outputs


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
