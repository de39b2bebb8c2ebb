"""Training examples as token rows: packed several to a row without attention across them, or one per row.

The paper packs its examples up to the 2,048-token context, "each wrapped in <bos>/<eos>, with
attention restricted to tokens of the same example" (OPT-IML; App. B). Here:

- an example is `(prompt, target)` text, tokenised by `radit.lm.inputs.tokenize_pairs`, the one place
  text becomes ids (the prompt with the tokenizer's own special tokens: a BOS for Llama, none for
  SmolLM2, exactly as at inference), then the tokenizer's **eos appended to the target** and scored,
  so the model learns to stop after the answer;
- examples longer than `max_length` are skipped and counted, never cut (the data builder already
  fits them; a cut target would teach a wrong answer, a cut prompt a different one);
- rows are filled greedily, first fit, in a seeded shuffled order (`plan_epoch`): deterministic given
  (seed, epoch), so a resumed run sees the same rows;
- a packed row restarts its position ids at 0 for every example and goes to the model with
  `attention_mask=None`: transformers v5 (`masking_utils.find_packed_sequence_indices`, used by
  Llama, Qwen, Mistral, ... with sdpa, eager and flash attention, when no cache is passed) reads the
  example boundaries off the position ids and builds a block-diagonal causal mask. A token never sees
  another example, and its position is what it would be alone: the packed log-probs equal the
  unpacked ones (tests/test_packing.py). Padding at a row's end restarts at 0 too, a block of its own;
- the training loop pads every packed micro-batch to `max_length` columns (`width`), not to its
  longest row: one tensor shape for the whole run. On a GPU each new shape costs a kernel build
  (cuDNN's attention plans): measured on an H200 (SmolLM2-135M, 8 x 2,048, bf16), 16 steps padded to
  the longest row took 0.17-0.19 s each plus 2-3.5 s on every step that met a new width (6.0 s mean
  over the first 8 steps), against 0.16-0.20 s for every step padded to 2,048: 3.5x the tokens/s over
  the run's first 16 steps. On CPU, where shapes cost nothing, it adds 0.1-1.3 % pad tokens on the
  quickstart data (first fit leaves rows nearly full);
- unpacked (`pack=False`), each row is one example right-padded with an attention mask: the very
  `radit.lm.inputs.collate_pairs` layout that scoring uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from radit.lm.inputs import IGNORE_INDEX, PairBatch, TokenPair, collate_pairs, tokenize_pairs


def encode_examples(tokenizer, prompts: Sequence[str], targets: Sequence[str], max_length: int) -> tuple[list[TokenPair | None], int]:
    """Tokenise training examples, eos appended to each target; those over `max_length` become None.

    Returns:
        One `TokenPair` per example (None where it does not fit), and the number that did not fit.

    Raises:
        ValueError: the tokenizer has no eos token, or a prompt has no tokens.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token to end each training target with; save it with one")
    pairs: list[TokenPair | None] = []
    skipped = 0
    for pair in tokenize_pairs(tokenizer, prompts, targets, max_length=None):  # never cut
        pair = TokenPair(pair.prompt, pair.continuation + [eos])
        if len(pair.prompt) + len(pair.continuation) > max_length:
            pairs.append(None)
            skipped += 1
        else:
            pairs.append(pair)
    return pairs, skipped


def first_fit(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit bin packing: each item, in the given order, goes into the first row it fits.

    Args:
        lengths: item sizes, each <= capacity.
        capacity: the row size (max_length).

    Returns:
        Rows of item indices, rows in order of opening, items in each row in order of arrival.
    """
    rows: list[list[int]] = []
    free: list[int] = []
    open_rows: list[int] = []  # rows with any room left, in order (full ones drop out of the scan)
    for i, n in enumerate(lengths):
        if n > capacity:
            raise ValueError(f"item {i} has {n} tokens, more than the row's {capacity}")
        pos = next((j for j, r in enumerate(open_rows) if free[r] >= n), None)
        if pos is None:
            pos = len(open_rows)
            open_rows.append(len(rows))
            rows.append([])
            free.append(capacity)
        r = open_rows[pos]
        rows[r].append(i)
        free[r] -= n
        if free[r] == 0:
            open_rows.pop(pos)
    return rows


def plan_epoch(lengths: Sequence[int | None], max_length: int, batch_size: int, pack: bool, seed: int, epoch: int,
               shuffle: bool = True) -> list[list[list[int]]]:
    """The micro-batches of one epoch: [micro-batch][row][example index].

    Examples whose length is None (skipped) are left out. The order is a permutation seeded by
    (seed, epoch); rows are filled first-fit (`pack`) or hold one example each; consecutive rows
    make micro-batches of `batch_size` rows (the last one may be smaller).
    """
    kept = np.array([i for i, n in enumerate(lengths) if n is not None], dtype=np.int64)
    if shuffle:
        kept = kept[np.random.default_rng([seed, epoch]).permutation(len(kept))]
    order = kept.tolist()
    if pack:
        rows = [[order[j] for j in row] for row in first_fit([lengths[i] for i in order], max_length)]
    else:
        rows = [[i] for i in order]
    return [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]


@dataclasses.dataclass
class PackedBatch:
    """Rows of several examples each, positions restarting per example; fed with `attention_mask=None`."""

    input_ids: torch.Tensor
    """[B, W] the examples' prompt ∘ target ids one after another, pad at the end of short rows."""
    position_ids: torch.Tensor
    """[B, W] 0, 1, ... within each example (and within the trailing pad): the example boundaries."""
    targets: torch.Tensor
    """[B, W] the next token where it is a target token, else IGNORE_INDEX (as `PairBatch.targets`)."""
    spans: list[list[tuple[int, int, int]]]
    """Per row, per example: (start column, prompt tokens, target tokens)."""

    def model_inputs(self) -> dict[str, torch.Tensor]:
        # No attention mask: the model derives the block-diagonal causal mask from position_ids.
        return {"input_ids": self.input_ids, "position_ids": self.position_ids}

    def to(self, device: torch.device | str) -> PackedBatch:
        return dataclasses.replace(self, input_ids=self.input_ids.to(device), position_ids=self.position_ids.to(device),
                                   targets=self.targets.to(device))

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """Each example's target part of per-position `values` [B, W], rows in order, examples in row order."""
        return [values[b, s + p - 1 : s + p - 1 + c] for b, row in enumerate(self.spans) for s, p, c in row]


def collate_packed(rows: Sequence[Sequence[TokenPair]], pad: int, width: int | None = None) -> PackedBatch:
    """Lay out rows of tokenised examples into one `PackedBatch` of `width` columns (default: the longest row)."""
    if not rows:
        raise ValueError("collate_packed needs at least one row")
    longest = max(sum(len(x.prompt) + len(x.continuation) for x in row) for row in rows)
    if width is None:
        width = longest
    elif longest > width:
        raise ValueError(f"a row holds {longest} tokens, more than the batch width {width}")
    n = len(rows)
    input_ids = torch.full((n, width), pad, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    targets = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    spans: list[list[tuple[int, int, int]]] = []
    for b, row in enumerate(rows):
        start, row_spans = 0, []
        for x in row:
            p, c = len(x.prompt), len(x.continuation)
            input_ids[b, start : start + p + c] = torch.tensor(x.prompt + x.continuation, dtype=torch.long)
            position_ids[b, start : start + p + c] = torch.arange(p + c)
            if c:
                # Position t predicts token t + 1: the prompt's last token predicts the first target token.
                targets[b, start + p - 1 : start + p + c - 1] = input_ids[b, start + p : start + p + c]
            row_spans.append((start, p, c))
            start += p + c
        position_ids[b, start:] = torch.arange(width - start)
        spans.append(row_spans)
    return PackedBatch(input_ids, position_ids, targets, spans)


def collate_rows(rows: Sequence[Sequence[TokenPair]], pad: int, pack: bool, width: int | None = None) -> PackedBatch | PairBatch:
    """`collate_packed` (padded to `width` columns) when packing, else `collate_pairs` (one example per
    row, right-padded to the longest: a fixed width would mostly add padding there)."""
    if pack:
        return collate_packed(rows, pad, width)
    if any(len(row) != 1 for row in rows):
        raise ValueError("unpacked rows hold one example each")
    return collate_pairs([row[0] for row in rows], pad)
