"""Text to model inputs: the one place where prompts and continuations are tokenised, cut and padded.

Scoring, decoding and (next) LM fine-tuning all read (prompt x, continuation y) text through here, so
the model sees the same tokens at training and at inference time:

- the prompt is tokenised with the tokenizer's own special tokens (e.g. a BOS for Llama), the
  continuation with none, and the ids are concatenated: a continuation has a token count that does
  not depend on the prompt before it;
- a pair longer than the context loses tokens from the start of its prompt (a leading BOS is kept),
  never from its continuation (`truncate_prompt`).

Two layouts come out: `PairBatch` (prompt ∘ continuation, right-padded, with the continuation tokens
marked as targets: scoring and the training loss) and `PromptBatch` (prompts alone, left-padded so
that every prompt ends in the last column: prefilling a KV cache and decoding).

Tokenising and padding are separate steps (`tokenize_pairs`, `collate_pairs`) so that a caller can
sort or shuffle the tokenised pairs before cutting them into batches; `encode_pairs` does both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

IGNORE_INDEX = -100
"""A target that is not scored (prompt and padding positions); the value PyTorch's losses ignore."""


def pad_id(tokenizer) -> int:
    """The id padded positions hold (they are masked out, so any valid id does)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def tokenize_continuations(tokenizer, continuations: Sequence[str]) -> list[list[int]]:
    """Token ids of each continuation, without special tokens."""
    return [list(x) for x in tokenizer(list(continuations), add_special_tokens=False)["input_ids"]]


def truncate_prompt(prompt: list[int], n_cont: int, max_length: int | None, bos_id: int | None) -> tuple[list[int], bool]:
    """Cut tokens from the start of the prompt so that prompt + continuation fit `max_length`.

    The continuation is what is being scored (or generated), so it is kept whole; the start of the
    prompt (the far end of a retrieved passage, in RA-DIT's `Background: ...` prompts) is the least
    relevant context. A leading BOS is kept, as the model was trained to see it first.

    Returns:
        The prompt ids, and whether they were cut.
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


def tokenize_prompts(
    tokenizer, prompts: Sequence[str], reserve: int | Sequence[int] = 0, max_length: int | None = None
) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each prompt (with special tokens), cut to leave `reserve` tokens within `max_length`.

    Args:
        tokenizer: the model's tokenizer.
        prompts: the contexts.
        reserve: the continuation's length in tokens, one for all prompts or one per prompt (for
            decoding: the most tokens that will be generated).
        max_length: the context limit; None cuts nothing.

    Returns:
        The ids of each prompt, and whether each was cut.

    Raises:
        ValueError: on a prompt with no tokens (the first continuation token needs a context).
    """
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    reserves = [reserve] * len(ids) if isinstance(reserve, int) else list(reserve)
    out, cut = [], []
    for prompt, x, n in zip(prompts, ids, reserves):
        if not x:
            raise ValueError(f"prompt {prompt!r} has no tokens (and the tokenizer adds no BOS); give a non-empty prompt")
        kept, was_cut = truncate_prompt(list(x), n, max_length, tokenizer.bos_token_id)
        out.append(kept)
        cut.append(was_cut)
    return out, cut


# --------------------------------------------------------------------------- (prompt, continuation) pairs


@dataclasses.dataclass
class TokenPair:
    """One (prompt, continuation) pair as token ids, after truncation."""

    prompt: list[int]
    continuation: list[int]
    truncated: bool = False
    """Whether the prompt lost tokens at its start to fit the context."""


def tokenize_pairs(
    tokenizer, prompts: Sequence[str], continuations: Sequence[str], max_length: int | None = None
) -> list[TokenPair]:
    """Tokenise (prompt, continuation) pairs and cut each prompt's start so the pair fits `max_length`.

    Raises:
        ValueError: on lists of different lengths, an empty prompt, or a continuation that leaves no
            room for its prompt.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"got {len(prompts)} prompts but {len(continuations)} continuations; pass one per pair")
    if not prompts:
        return []
    conts = tokenize_continuations(tokenizer, continuations)
    prompt_ids, cut = tokenize_prompts(tokenizer, prompts, [len(c) for c in conts], max_length)
    return [TokenPair(p, c, t) for p, c, t in zip(prompt_ids, conts, cut)]


@dataclasses.dataclass
class PairBatch:
    """B (prompt, continuation) pairs as one right-padded batch, continuation tokens marked as targets.

    Position t of `targets` holds the token the logits at position t are scored against: the next
    token when that one belongs to the continuation, `IGNORE_INDEX` elsewhere. So the loss of RA-DIT's
    LM fine-tuning (Eq. 3: -log p(y | c ∘ x), on the answer tokens only) and the scores of inference
    are both `radit.lm.scoring.target_logprobs(logits, targets)`.
    """

    input_ids: torch.Tensor
    """[B, W] prompt ∘ continuation ids, right-padded."""
    attention_mask: torch.Tensor
    """[B, W] 1 on real tokens, 0 on padding."""
    position_ids: torch.Tensor
    """[B, W] 0, 1, 2, ...: with right padding every row's real tokens start at column 0."""
    targets: torch.Tensor
    """[B, W] input_ids[:, t + 1] where that is a continuation token, else IGNORE_INDEX."""
    prompt_lengths: list[int]
    """Tokens of each row's prompt (after truncation)."""
    continuation_lengths: list[int]
    """Tokens of each row's continuation."""
    truncated: int = 0
    """Rows whose prompt was cut at the start."""

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's forward."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> PairBatch:
        tensors = {f: getattr(self, f).to(device) for f in ("input_ids", "attention_mask", "position_ids", "targets")}
        return dataclasses.replace(self, **tensors)

    def target_span(self) -> slice:
        """The columns whose logits predict some continuation token (an empty slice when none does).

        Only these need projecting onto the vocabulary: [B, W, V] logits are the memory peak.
        """
        spans = [(p - 1, p + c - 1) for p, c in zip(self.prompt_lengths, self.continuation_lengths) if c]
        if not spans:
            return slice(0, 0)
        return slice(min(s for s, _ in spans), max(e for _, e in spans))

    def split(self, values: torch.Tensor, start: int = 0) -> list[torch.Tensor]:
        """Each row's continuation part of per-position `values` [B, S] whose column 0 is column
        `start` of the batch (e.g. `target_span().start`) -> B tensors [continuation length]."""
        return [values[b, p - 1 - start : p - 1 - start + c]
                for b, (p, c) in enumerate(zip(self.prompt_lengths, self.continuation_lengths))]


def collate_pairs(pairs: Sequence[TokenPair], pad: int) -> PairBatch:
    """Right-pad tokenised pairs into one `PairBatch`; `pad` is the id padding holds (`pad_id`)."""
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    width = max(len(x.prompt) + len(x.continuation) for x in pairs)
    n = len(pairs)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    for b, x in enumerate(pairs):
        p, c = len(x.prompt), len(x.continuation)
        input_ids[b, : p + c] = torch.tensor(x.prompt + x.continuation, dtype=torch.long)
        attention_mask[b, : p + c] = 1
        if c:
            # Logit position t predicts token t + 1: the last prompt token predicts the first answer token.
            targets[b, p - 1 : p + c - 1] = input_ids[b, p : p + c]
    position_ids = torch.arange(width).expand(n, width)
    return PairBatch(input_ids, attention_mask, position_ids, targets,
                     [len(x.prompt) for x in pairs], [len(x.continuation) for x in pairs],
                     sum(x.truncated for x in pairs))


def encode_pairs(
    tokenizer, prompts: Sequence[str], continuations: Sequence[str], max_length: int | None = None
) -> PairBatch:
    """(prompt, continuation) text pairs -> one right-padded `PairBatch` (`tokenize_pairs` + `collate_pairs`).

    Args:
        tokenizer: the model's tokenizer.
        prompts: the contexts x (e.g. `Background: {chunk}\\n\\nQuestion: ...\\nAnswer:`).
        continuations: the targets y (`template.continuation(answer)`, e.g. ` Paris`).
        max_length: the context limit (`radit.lm.model.context_length(model)`); None cuts nothing.
    """
    return collate_pairs(tokenize_pairs(tokenizer, prompts, continuations, max_length), pad_id(tokenizer))


# --------------------------------------------------------------------------- prompts alone


@dataclasses.dataclass
class PromptBatch:
    """P prompts as one left-padded batch: every prompt ends in the last column, where decoding goes on."""

    input_ids: torch.Tensor
    """[P, W] ids, left-padded."""
    attention_mask: torch.Tensor
    """[P, W] 1 on real tokens."""
    position_ids: torch.Tensor
    """[P, W] positions counting real tokens only, so a padded row sees the positions it has alone."""

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}


def collate_prompts(ids: Sequence[Sequence[int]], pad: int) -> PromptBatch:
    """Left-pad token ids (from `tokenize_prompts`) into one `PromptBatch`."""
    if not ids:
        raise ValueError("collate_prompts needs at least one prompt")
    n, width = len(ids), max(len(x) for x in ids)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, width - len(x) :] = torch.tensor(list(x), dtype=torch.long)
        mask[i, width - len(x) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return PromptBatch(input_ids, mask, positions)
