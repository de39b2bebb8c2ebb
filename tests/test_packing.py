"""Packing training examples: first-fit rows, no attention across examples (packed == unpacked log-probs)."""

from __future__ import annotations

import pytest
import torch

from radit.lm.inputs import IGNORE_INDEX, collate_pairs, pad_id
from radit.lm.scoring import pair_logprobs
from radit.train.lm_ft import batch_logprobs
from radit.train.losses import lm_loss, nll_from_logprobs
from radit.train.packing import collate_packed, collate_rows, encode_examples, first_fit, plan_epoch

PROMPTS = [
    "Background: The Ming dynasty was founded by Zhu Yuanzhang in 1368.\n\nQuestion: who founded the Ming dynasty?\nAnswer:",
    "Question: What is the capital of France?\nAnswer:",
    "Background: Oxygen has atomic number 8.\n\nQ: what is the atomic number of oxygen?\nA:",
    "Q: Hi\nA:",
    "Background: The Nile flows into the Mediterranean.\n\nQuestion: where does the Nile end?\nAnswer:",
]
TARGETS = [" Zhu Yuanzhang", " Paris", " 8", " Hello there, friend", " the Mediterranean Sea"]


def test_first_fit_is_greedy_and_deterministic():
    assert first_fit([5, 4, 3, 2, 1], 6) == [[0, 4], [1, 3], [2]]
    assert first_fit([6, 6], 6) == [[0], [1]]
    assert first_fit([], 6) == []
    assert first_fit([2, 5, 2, 2], 6) == [[0, 2, 3], [1]]
    with pytest.raises(ValueError, match="more than"):
        first_fit([7], 6)


def test_plan_epoch_seeded_skips_none_and_batches():
    lengths = [3, None, 2, 4, 1, 5, 2]
    a = plan_epoch(lengths, 6, batch_size=2, pack=True, seed=0, epoch=0)
    assert a == plan_epoch(lengths, 6, batch_size=2, pack=True, seed=0, epoch=0)
    flat = sorted(i for mb in a for row in mb for i in row)
    assert flat == [0, 2, 3, 4, 5, 6]  # every kept example exactly once, the skipped one never
    assert all(sum(lengths[i] for i in row) <= 6 for mb in a for row in mb)
    assert all(len(mb) <= 2 for mb in a)
    other_epoch = plan_epoch(lengths, 6, batch_size=2, pack=True, seed=0, epoch=1)
    assert sorted(i for mb in other_epoch for row in mb for i in row) == flat
    unpacked = plan_epoch(lengths, 6, batch_size=4, pack=False, seed=0, epoch=0, shuffle=False)
    assert unpacked == [[[0], [2], [3], [4]], [[5], [6]]]


def test_encode_examples_appends_eos_and_skips_long(tiny_lm):
    _, tokenizer = tiny_lm
    pairs, skipped = encode_examples(tokenizer, PROMPTS, TARGETS, max_length=30)
    assert skipped == sum(p is None for p in pairs) >= 1
    kept = [(p, t) for p, t, x in zip(PROMPTS, TARGETS, pairs) if x is not None]
    for (prompt, target), x in zip(kept, [x for x in pairs if x is not None]):
        assert x.continuation[-1] == tokenizer.eos_token_id
        assert x.continuation[:-1] == tokenizer(target, add_special_tokens=False).input_ids
        assert x.prompt == tokenizer(prompt).input_ids  # never cut
        assert len(x.prompt) + len(x.continuation) <= 30


def test_packed_layout_positions_and_targets(tiny_lm):
    _, tokenizer = tiny_lm
    pairs, _ = encode_examples(tokenizer, PROMPTS[:3], TARGETS[:3], max_length=128)
    batch = collate_packed([pairs[:2], pairs[2:]], pad_id(tokenizer))
    p0, c0 = len(pairs[0].prompt), len(pairs[0].continuation)
    assert batch.position_ids[0, : p0 + c0].tolist() == list(range(p0 + c0))
    assert batch.position_ids[0, p0 + c0] == 0  # the second example restarts
    # Targets: exactly the continuation tokens (answer + eos), each at the position before it.
    scored = (batch.targets != IGNORE_INDEX).sum(1).tolist()
    assert scored == [c0 + len(pairs[1].continuation), len(pairs[2].continuation)]
    assert batch.targets[0, p0 - 1 : p0 + c0 - 1].tolist() == pairs[0].continuation
    assert (batch.targets[0, : p0 - 1] == IGNORE_INDEX).all()


def test_packed_equals_unpacked_on_tiny_llama(tiny_lm):
    model, tokenizer = tiny_lm
    pairs, skipped = encode_examples(tokenizer, PROMPTS, TARGETS, max_length=128)
    assert skipped == 0
    pad = pad_id(tokenizer)
    rows = [pairs[:3], pairs[3:]]  # 3 examples in one row, 2 in the other (with padding)
    packed = collate_packed(rows, pad)
    with torch.no_grad():
        lp_packed = batch_logprobs(model, packed)
        # The oracle: the inference path, one right-padded example per row with an attention mask.
        unpacked = collate_pairs(pairs, pad)
        lp_unpacked = pair_logprobs(model, unpacked)
    for a, b in zip(packed.split(lp_packed), unpacked.split(lp_unpacked)):
        assert a.shape == b.shape and a.numel() > 1
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    loss_packed = nll_from_logprobs(lp_packed, packed.targets)
    loss_unpacked = nll_from_logprobs(lp_unpacked, unpacked.targets)
    torch.testing.assert_close(loss_packed, loss_unpacked, atol=1e-5, rtol=1e-5)
    # And the loop's unpacked layout (collate_rows, pack=False) is the same collate_pairs batch.
    with torch.no_grad():
        lp_rows = batch_logprobs(model, collate_rows([[x] for x in pairs], pad, pack=False))
    torch.testing.assert_close(lp_rows, lp_unpacked, atol=1e-6, rtol=1e-6)


def test_fixed_width_padding_changes_no_target_logprob(tiny_lm):
    """The loop pads packed batches to max_length (one shape per run); the extra columns score nothing."""
    model, tokenizer = tiny_lm
    pairs, _ = encode_examples(tokenizer, PROMPTS, TARGETS, max_length=128)
    pad = pad_id(tokenizer)
    rows = [pairs[:3], pairs[3:]]
    longest = collate_packed(rows, pad)
    fixed = collate_rows(rows, pad, pack=True, width=128)
    assert fixed.input_ids.shape == (2, 128) and longest.input_ids.shape[1] < 128
    assert torch.equal(fixed.targets[:, : longest.targets.shape[1]], longest.targets)
    assert (fixed.targets[:, longest.targets.shape[1] :] == IGNORE_INDEX).all()
    with torch.no_grad():
        a = longest.split(batch_logprobs(model, longest))
        b = fixed.split(batch_logprobs(model, fixed))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="more than the batch width 8"):
        collate_packed(rows, pad, width=8)


def test_changing_one_example_leaves_its_row_neighbours_alone(tiny_lm):
    model, tokenizer = tiny_lm
    pairs, _ = encode_examples(tokenizer, PROMPTS[:3], TARGETS[:3], max_length=128)
    other, _ = encode_examples(tokenizer, ["Question: something else entirely, and longer?\nAnswer:"], [" no"], 128)
    pad = pad_id(tokenizer)
    with torch.no_grad():
        base = collate_packed([pairs], pad)
        changed = collate_packed([[other[0], pairs[1], pairs[2]]], pad)  # the first example replaced
        a = base.split(batch_logprobs(model, base))
        b = changed.split(batch_logprobs(model, changed))
    for x, y in zip(a[1:], b[1:]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[0][: len(b[0])], b[0][: len(a[0])])


def test_loss_mask_covers_only_target_tokens_by_hand():
    # Two rows, vocabulary 3: logits chosen so that each position's log-softmax is known.
    logits = torch.zeros(2, 4, 3)
    logits[0, 1] = torch.tensor([0.0, 0.0, 1e4])  # predicts token 2 surely
    logits[0, 2] = torch.tensor([0.0, 0.0, 0.0])  # uniform: -log 3 for any token
    targets = torch.full((2, 4), IGNORE_INDEX)
    targets[0, 1] = 2
    targets[0, 2] = 1
    targets[1, 3] = 0  # uniform row: -log 3
    # Huge logits at ignored positions must not leak into the loss.
    logits[0, 0] = torch.tensor([1e4, -1e4, 0.0])
    logits[1, 0] = torch.tensor([-1e4, 1e4, 0.0])
    expected = (0.0 + torch.log(torch.tensor(3.0)) * 2) / 3
    torch.testing.assert_close(lm_loss(logits, targets), expected)
    torch.testing.assert_close(lm_loss(logits, targets, num_targets=6), expected / 2)
    logits.requires_grad_(True)
    lm_loss(logits, targets).backward()
    ignored = targets == IGNORE_INDEX
    assert (logits.grad[ignored] == 0).all() and (logits.grad[~ignored] != 0).any()
    # No target at all: zero, not NaN.
    assert lm_loss(torch.zeros(1, 2, 3), torch.full((1, 2), IGNORE_INDEX)).item() == 0.0


def test_micro_batch_losses_normalised_by_step_tokens_sum_to_big_batch_gradient(tiny_lm):
    model, tokenizer = tiny_lm
    pairs, _ = encode_examples(tokenizer, PROMPTS[:4], TARGETS[:4], max_length=128)
    pad = pad_id(tokenizer)
    params = [p for p in model.parameters()]

    def grads(micro_batches):
        model.zero_grad()
        n = sum(int((b.targets != IGNORE_INDEX).sum()) for b in micro_batches)
        total = 0.0
        for b in micro_batches:
            loss = nll_from_logprobs(batch_logprobs(model, b), b.targets, num_targets=n)
            loss.backward()
            total += loss.item()
        return total, [p.grad.clone() for p in params]

    rows = [[x] for x in pairs]
    big_loss, big = grads([collate_packed(rows, pad)])
    acc_loss, acc = grads([collate_packed(rows[:1], pad), collate_packed(rows[1:], pad)])  # uneven split
    model.zero_grad()
    assert big_loss == pytest.approx(acc_loss, rel=1e-5)
    for g1, g2 in zip(big, acc):
        torch.testing.assert_close(g1, g2, atol=1e-6, rtol=1e-4)
