"""LM loading and continuation scoring on a tiny Llama built in-process with the real SmolLM2 tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from radit.lm.inputs import IGNORE_INDEX, encode_pairs
from radit.lm.model import load_lm
from radit.lm.prefill import prefill
from radit.lm.scoring import (
    COMP_PROMPT,
    SCORERS,
    candidate_logprobs,
    continuation_logprobs,
    pair_logprobs,
    prefilled_logprobs,
    score,
    shared_prompt_logprobs,
    target_logprobs,
)

LONG_PROMPT = (
    "Background: The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368. The Ming capital "
    "moved from Nanjing to Beijing under the Yongle Emperor, who also sent great fleets across the Indian Ocean.\n\n"
    "Question: Who founded the Ming dynasty?\nAnswer:"
)
PROMPTS = [LONG_PROMPT, "Q: Hi\nA:", "Question: What is the capital of France?\nAnswer:", "A"]
CONTINUATIONS = [" Zhu Yuanzhang", " Hello there, friend", " Paris", " B C D E F G"]


def reference_logprobs(model, prompt_ids: list[int], cont_ids: list[int]) -> torch.Tensor:
    """The naive oracle: one unpadded forward over prompt + continuation, log_softmax at the answer positions."""
    ids = torch.tensor([prompt_ids + cont_ids])
    with torch.no_grad():
        logprobs = model(input_ids=ids).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(prompt_ids) - 1, len(prompt_ids) + len(cont_ids) - 1)
    return logprobs[positions, torch.tensor(cont_ids)]


def test_load_lm_from_folder_keeps_fp32_on_cpu(tiny_lm_dir):
    model, tokenizer = load_lm(str(tiny_lm_dir), device="cpu", dtype="bfloat16")
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32  # bf16 comes from autocast on CPU
    assert tokenizer.pad_token is not None
    with pytest.raises(ValueError, match="float32"):
        load_lm(str(tiny_lm_dir), device="cpu", dtype="fp8")
    model, _ = load_lm(str(tiny_lm_dir), device="cpu", dtype="auto")  # resolved for the device, weights fp32 on CPU
    assert next(model.parameters()).dtype == torch.float32


def test_batched_equals_one_at_a_time(tiny_lm):
    model, tokenizer = tiny_lm
    lengths = [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert max(lengths) > 5 * min(lengths)  # padding really happens
    batched = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=3)
    single = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=1)
    for text, b, s in zip(CONTINUATIONS, batched, single):
        assert b.dtype == torch.float32 and b.device.type == "cpu"
        assert len(b) == len(tokenizer(text, add_special_tokens=False).input_ids)
        torch.testing.assert_close(b, s, atol=1e-5, rtol=0)
    assert torch.cat(batched).std() > 0.1  # not a flat distribution


def test_matches_hand_computation(tiny_lm):
    model, tokenizer = tiny_lm
    got = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=4)
    for prompt, text, g in zip(PROMPTS, CONTINUATIONS, got):
        p = tokenizer(prompt).input_ids
        c = tokenizer(text, add_special_tokens=False).input_ids
        torch.testing.assert_close(g, reference_logprobs(model, p, c), atol=1e-5, rtol=0)


def test_shared_prompt_equals_separate_pairs(tiny_lm):
    model, tokenizer = tiny_lm
    candidates = [" Zhu Yuanzhang", " Hongwu", " the Yongle Emperor of the Ming", " Beijing", " Z"]
    assert len({len(tokenizer(c, add_special_tokens=False).input_ids) for c in candidates}) >= 4
    shared = shared_prompt_logprobs(model, tokenizer, LONG_PROMPT, candidates)
    separate = continuation_logprobs(model, tokenizer, [LONG_PROMPT] * len(candidates), candidates)
    for s, p in zip(shared, separate):
        assert s.shape == p.shape
        torch.testing.assert_close(s, p, atol=1e-5, rtol=0)


@pytest.mark.parametrize("max_rows", [64, 9, 7, 1])
def test_prefilled_equals_separate_pairs(tiny_lm, max_rows):
    """Many prompts of different lengths (left padding) x many continuations on one prefill; max_rows
    that do not divide the rows evenly split the work into several forwards."""
    model, tokenizer = tiny_lm
    candidates = [" Zhu Yuanzhang", " Hongwu", " the Yongle Emperor of the Ming", "", " Z"]
    pre = prefill(model, tokenizer, PROMPTS, reserve=8)
    cache_width = pre.cache.get_seq_length()
    got = prefilled_logprobs(model, tokenizer, pre, candidates, max_rows=max_rows)
    assert pre.cache.get_seq_length() == cache_width  # the prompts' cache is left as it was
    for prompt, row in zip(PROMPTS, got):
        want = continuation_logprobs(model, tokenizer, [prompt] * len(candidates), candidates, batch_size=1)
        for g, w in zip(row, want):
            assert g.shape == w.shape
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    again = prefilled_logprobs(model, tokenizer, pre, candidates)  # the prefill can be reused
    torch.testing.assert_close(torch.cat([torch.cat(r) for r in again]), torch.cat([torch.cat(r) for r in got]))


@pytest.mark.parametrize("max_rows", [None, 3, 1])
def test_prefilled_pairs_on_joined_prefills_equal_separate_pairs(tiny_lm, max_rows):
    """Each row its own continuations, on prompts prefilled in two groups and joined (several questions
    scored together): every pair as `continuation_logprobs` scores it alone."""
    from radit.lm.prefill import concat_prefills
    from radit.lm.scoring import prefilled_pair_logprobs

    model, tokenizer = tiny_lm
    joined = concat_prefills([prefill(model, tokenizer, PROMPTS[:2], reserve=8),
                              prefill(model, tokenizer, PROMPTS[2:], reserve=8)])
    pairs = [(0, " Zhu Yuanzhang"), (0, " Hongwu"), (1, " Hello there, friend"), (2, " Paris"), (2, " Zhu Yuanzhang"),
             (3, " B C D E F G"), (3, ""), (1, " Z")]
    got = prefilled_pair_logprobs(model, tokenizer, joined, pairs, max_rows=max_rows)
    want = continuation_logprobs(model, tokenizer, [PROMPTS[p] for p, _ in pairs], [c for _, c in pairs], batch_size=1)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="outside"):
        prefilled_pair_logprobs(model, tokenizer, joined, [(4, " Paris")])


def test_normalisations_on_hand_made_logprobs():
    lp = torch.tensor([-1.0, -2.0, -3.0])
    assert score(lp, "abcd", "nll") == pytest.approx(-6.0)
    assert score(lp, "abcd", "nll_token") == pytest.approx(-2.0)
    assert score(lp, "abcd", "nll_char") == pytest.approx(-1.5)
    assert score(lp, "abcd", "nll_comp", comp_logprobs=torch.tensor([-1.0, -1.0, -1.0])) == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="comp_logprobs"):
        score(lp, "abcd", "nll_comp")
    with pytest.raises(ValueError, match="nll, nll_token, nll_char, nll_comp"):
        score(lp, "abcd", "perplexity")
    assert set(SCORERS) == {"nll", "nll_token", "nll_char", "nll_comp"}


def test_nll_comp_end_to_end_uses_answer_prompt(tiny_lm):
    model, tokenizer = tiny_lm
    answers = [" Paris", " London"]
    lp = shared_prompt_logprobs(model, tokenizer, PROMPTS[2], answers)
    comp = continuation_logprobs(model, tokenizer, [COMP_PROMPT] * 2, answers)
    for a, x, c in zip(answers, lp, comp):
        assert score(x, a, "nll_comp", c) == pytest.approx(float(x.sum() - c.sum()), abs=1e-5)


def test_truncation_cuts_prompt_start_and_keeps_continuation(tiny_lm):
    model, tokenizer = tiny_lm
    limit = model.config.max_position_embeddings  # 128: the default max_length
    long_prompt = LONG_PROMPT * 4
    p = tokenizer(long_prompt).input_ids
    c = tokenizer(" Zhu Yuanzhang", add_special_tokens=False).input_ids
    assert len(p) + len(c) > limit
    stats: dict = {}
    got = continuation_logprobs(model, tokenizer, [long_prompt, "Q: Hi\nA:"], [" Zhu Yuanzhang", " Hello"], stats=stats)
    assert stats == {"truncated": 1}
    assert len(got[0]) == len(c)
    torch.testing.assert_close(got[0], reference_logprobs(model, p[-(limit - len(c)) :], c), atol=1e-5, rtol=0)

    stats = {}
    shared = shared_prompt_logprobs(model, tokenizer, long_prompt, [" Zhu Yuanzhang"], stats=stats)
    assert stats == {"truncated": 1}
    torch.testing.assert_close(shared[0], got[0], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no room for the prompt"):
        continuation_logprobs(model, tokenizer, ["Q:"], [" x" * 200])


def test_tokenizer_without_pad_gets_eos(tiny_lm_dir, tmp_path):
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "no-pad"
    shutil.copytree(tiny_lm_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    _, tokenizer = load_lm(str(folder), device="cpu")
    assert tokenizer.pad_token == tokenizer.eos_token is not None

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.eos_token = None
    tokenizer.save_pretrained(folder)
    with pytest.raises(ValueError, match="neither a pad token nor an eos token"):
        load_lm(str(folder), device="cpu")


def test_bf16_autocast_close_to_fp32_on_cpu(tiny_lm):
    model, tokenizer = tiny_lm
    fp32 = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS)
    bf16 = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS, dtype="bfloat16")
    shared = shared_prompt_logprobs(model, tokenizer, PROMPTS[0], CONTINUATIONS, dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.float32
    for a, b in zip(fp32, bf16):
        assert b.dtype == torch.float32
        assert (a - b).abs().max() < 0.05
    assert all(torch.isfinite(s).all() for s in shared)


# --------------------------------------------------------------------------------------------------
# one encoding for scoring and training


def test_encode_pairs_layout(tiny_lm):
    """Right padding; targets mark exactly the continuation tokens, shifted to the logit that predicts them."""
    model, tokenizer = tiny_lm
    batch = encode_pairs(tokenizer, PROMPTS, CONTINUATIONS)
    for b, (prompt, text) in enumerate(zip(PROMPTS, CONTINUATIONS)):
        p = tokenizer(prompt).input_ids
        c = tokenizer(text, add_special_tokens=False).input_ids
        n = len(p) + len(c)
        assert batch.prompt_lengths[b] == len(p) and batch.continuation_lengths[b] == len(c)
        assert batch.input_ids[b, :n].tolist() == p + c
        assert batch.attention_mask[b].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        assert batch.position_ids[b, :n].tolist() == list(range(n))
        scored = batch.targets[b] != IGNORE_INDEX
        assert scored.nonzero().flatten().tolist() == list(range(len(p) - 1, n - 1))
        assert batch.targets[b, scored].tolist() == c
        assert batch.split(batch.targets)[b].tolist() == c
    span = batch.target_span()
    assert span.start == min(batch.prompt_lengths) - 1 and span.stop == max(
        p + c - 1 for p, c in zip(batch.prompt_lengths, batch.continuation_lengths))
    assert batch.truncated == 0


def test_encode_pairs_cuts_like_scoring(tiny_lm):
    """The training encoding and the scorer cut a long pair at the same boundary, keeping the BOS if any."""
    model, tokenizer = tiny_lm
    limit = model.config.max_position_embeddings
    long_prompt = LONG_PROMPT * 4
    batch = encode_pairs(tokenizer, [long_prompt, "Q: Hi\nA:"], [" Zhu Yuanzhang", " Hello"], max_length=limit)
    p = tokenizer(long_prompt).input_ids
    c = tokenizer(" Zhu Yuanzhang", add_special_tokens=False).input_ids
    assert batch.truncated == 1 and batch.prompt_lengths[0] + len(c) == limit
    assert batch.input_ids[0].tolist() == p[-(limit - len(c)) :] + c  # the SmolLM2 tokenizer adds no BOS
    stats: dict = {}
    got = continuation_logprobs(model, tokenizer, [long_prompt, "Q: Hi\nA:"], [" Zhu Yuanzhang", " Hello"], stats=stats)
    assert stats == {"truncated": 1}
    with torch.no_grad():
        lp = pair_logprobs(model, batch)
    for g, w in zip(got, batch.split(lp)):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_truncation_keeps_bos():
    from radit.lm.inputs import truncate_prompt

    assert truncate_prompt([1, 5, 6, 7, 8], 2, 5, bos_id=1) == ([1, 7, 8], True)
    assert truncate_prompt([5, 6, 7, 8], 2, 5, bos_id=1) == ([6, 7, 8], True)
    assert truncate_prompt([1, 5, 6], 2, 5, bos_id=1) == ([1, 5, 6], False)


def test_target_logprobs_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]]], requires_grad=True)  # [1, 3, 2]
    targets = torch.tensor([[IGNORE_INDEX, 0, 1]])
    lp = target_logprobs(logits, targets)
    expected = [0.0, 2.0 - math.log(math.exp(2.0) + 1.0), -math.log(2.0)]
    assert lp[0].tolist() == pytest.approx(expected, abs=1e-6)
    lp.sum().backward()
    assert logits.grad[0, 0].abs().sum() == 0  # an ignored position gets no gradient
    assert logits.grad[0, 1:].abs().sum() > 0


def test_gradients_flow_and_equal_the_scores(tiny_lm_dir):
    """The training path (pair_logprobs with gradients) scores what inference scores, and trains every layer."""
    model, tokenizer = load_lm(str(tiny_lm_dir), device="cpu")  # its own copy: gradients stay out of the shared fixture
    model.train()
    batch = encode_pairs(tokenizer, PROMPTS, CONTINUATIONS, max_length=model.config.max_position_embeddings)
    lp = pair_logprobs(model, batch)  # [B, W]
    assert lp.requires_grad
    n_targets = int((batch.targets != IGNORE_INDEX).sum())
    loss = -lp.sum() / n_targets  # Eq. 3: NLL of the answer tokens only
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in grads.values())
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"):
        if name in grads:
            assert grads[name].abs().sum() > 0, name
    model.eval()
    scored = continuation_logprobs(model, tokenizer, PROMPTS, CONTINUATIONS, batch_size=3)
    for g, w in zip(batch.split(lp.detach()), scored):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
    # A prompt token never changes the loss through its own prediction: only answer tokens are targets.
    assert loss.item() == pytest.approx(-float(torch.cat(scored).sum()) / n_targets, abs=1e-5)


@pytest.mark.parametrize("naive", [False, True])
def test_candidate_logprobs_equals_every_pair(tiny_lm, naive):
    model, tokenizer = tiny_lm
    candidates = [" Zhu Yuanzhang", " Hongwu", " the Yongle Emperor of the Ming", " Z"]
    got = candidate_logprobs(model, tokenizer, PROMPTS, candidates, naive=naive)
    assert len(got) == len(PROMPTS) and all(len(row) == len(candidates) for row in got)
    for prompt, row in zip(PROMPTS, got):
        for cand, g in zip(candidates, row):
            (want,) = continuation_logprobs(model, tokenizer, [prompt], [cand])
            assert g.shape == want.shape
            torch.testing.assert_close(g, want, atol=1e-5, rtol=0)
    assert candidate_logprobs(model, tokenizer, PROMPTS, []) == [[] for _ in PROMPTS]
    assert candidate_logprobs(model, tokenizer, [], candidates) == []


def test_candidate_logprobs_reuses_a_prefill(tiny_lm):
    model, tokenizer = tiny_lm
    candidates = [" Zhu Yuanzhang", " Hongwu"]
    pre = prefill(model, tokenizer, PROMPTS, reserve=8)
    reused = candidate_logprobs(model, tokenizer, PROMPTS, candidates, pre=pre)
    fresh = candidate_logprobs(model, tokenizer, PROMPTS, candidates)
    torch.testing.assert_close(torch.cat([torch.cat(r) for r in reused]), torch.cat([torch.cat(r) for r in fresh]),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same prompts"):
        candidate_logprobs(model, tokenizer, PROMPTS[:2], candidates, pre=pre)
