"""LM loading and continuation scoring on a tiny Llama built in-process with the real SmolLM2 tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radit.lm import COMP_PROMPT, SCORERS, continuation_logprobs, load_lm, score, shared_prompt_logprobs

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
    from radit.lm.prefill import prefill
    from radit.lm.scoring import prefilled_logprobs

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
