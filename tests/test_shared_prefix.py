"""KV-cache prefix reuse (`radit.lm.shared_prefix`) against its naive oracle, on the tiny Llama with the real SmolLM2 tokenizer."""

from __future__ import annotations

import random

import pytest
import torch

from radit.lm.inputs import truncate_prompt
from radit.lm.prefill import prefill, select_rows
from radit.lm.scoring import continuation_logprobs
from radit.lm.shared_prefix import shared_prefix_logprobs
from radit.prompts import get_template

CHUNKS = [
    "Ming dynasty: The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368. The Ming capital "
    "moved from Nanjing to Beijing under the Yongle Emperor, who also sent great fleets across the Indian Ocean.",
    "Paris is the capital and most populous city of France, on the river Seine.",
    "A modern piano has 88 keys, 52 white and 36 black.",
    "Tea.",
    "Unused: no request reads this chunk.",
]
PREFIXES = [f"Background: {c}" for c in CHUNKS]
SUFFIX = "\n\nQuestion: {}\nAnswer:"
# (prefix, question, continuation): continuations of one and many tokens, one empty; two requests
# with an empty suffix (the prefix's own last logits score the first continuation token).
REQUESTS = [
    (0, SUFFIX.format("who founded the Ming dynasty?"), " Zhu Yuanzhang"),
    (0, SUFFIX.format("where did the Ming capital move?"), " Beijing"),
    (0, SUFFIX.format("who sent the fleets?"), " the Yongle Emperor of the Ming dynasty"),
    (0, SUFFIX.format("when?"), ""),
    (1, SUFFIX.format("what is the capital of France?"), " Paris"),
    (1, SUFFIX.format("which river?"), " the Seine"),
    (1, "", " Z"),
    (2, SUFFIX.format("how many keys does a piano have?"), " 88"),
    (2, SUFFIX.format("how many black keys?"), " 36 black keys"),
    (2, "", " and more"),
    (3, SUFFIX.format("what?"), " Tea"),
]


def shuffled(requests: list, seed: int = 0) -> list:
    out = list(requests)
    random.Random(seed).shuffle(out)
    return out


def reference_logprobs(model, ids: list[int], n_cont: int) -> torch.Tensor:
    """One unpadded forward over `ids`, log p of its last `n_cont` tokens."""
    with torch.no_grad():
        logprobs = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    positions = torch.arange(len(ids) - n_cont - 1, len(ids) - 1)
    return logprobs[positions, torch.tensor(ids[len(ids) - n_cont :])]


def assert_all_close(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = 1e-4) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.device.type == "cpu"
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=atol, rtol=0)


def test_split_at_the_chunk_end_tokenises_like_the_whole_prompt(tiny_lm):
    """The documented boundary, with the real SmolLM2 tokenizer: after the chunk text, before `\\n\\n`."""
    _, tokenizer = tiny_lm
    template = get_template("qa")
    for chunk in CHUNKS[:4] + ["It ends in a word", "It ends in 1700", "Did it?", 'A "quote."', "Émile Zola"]:
        prompt = template.render("who invented the piano?", background=chunk)
        prefix = f"Background: {chunk}"
        assert prompt.startswith(prefix)
        split = tokenizer(prefix).input_ids + tokenizer(prompt[len(prefix) :], add_special_tokens=False).input_ids
        assert split == tokenizer(prompt).input_ids, chunk
    # Trailing whitespace merges with the newline when tokenised whole: strip chunks before splitting.
    for chunk in ["It ends in a space ", "It ends in a newline\n"]:
        prompt = template.render("who?", background=chunk)
        prefix = f"Background: {chunk}"
        split = tokenizer(prefix).input_ids + tokenizer(prompt[len(prefix) :], add_special_tokens=False).input_ids
        assert split != tokenizer(prompt).input_ids


@pytest.mark.parametrize(("prefix_batch", "max_rows"), [(None, None), (1, 1), (2, 3), (8, 64)])
def test_shared_equals_naive(tiny_lm, prefix_batch, max_rows):
    """Prefixes of different lengths (left padding), several requests each, in shuffled order; prefix
    batches and row chunks that do not divide evenly."""
    model, tokenizer = tiny_lm
    requests = shuffled(REQUESTS)
    naive = shared_prefix_logprobs(model, tokenizer, PREFIXES, requests, naive=True, max_rows=1)
    shared = shared_prefix_logprobs(model, tokenizer, PREFIXES, requests, prefix_batch=prefix_batch, max_rows=max_rows)
    assert_all_close(shared, naive)
    for (_, _, cont), lp in zip(requests, shared):
        assert len(lp) == len(tokenizer(cont, add_special_tokens=False).input_ids)
    assert min(len(lp) for lp in shared) == 0 and max(len(lp) for lp in shared) > 5
    assert torch.cat(shared).std() > 0.1  # not a flat distribution
    batched = shared_prefix_logprobs(model, tokenizer, PREFIXES, requests, naive=True, max_rows=4)
    assert_all_close(batched, naive)


def test_equals_continuation_logprobs_on_the_whole_prompt(tiny_lm):
    model, tokenizer = tiny_lm
    requests = [r for r in REQUESTS if r[1]]
    shared = shared_prefix_logprobs(model, tokenizer, PREFIXES, requests)
    whole = continuation_logprobs(model, tokenizer, [PREFIXES[p] + s for p, s, _ in requests], [c for _, _, c in requests])
    assert_all_close(shared, whole)


def test_prefix_cut_once_for_its_longest_request(tiny_lm):
    """Both paths cut a prefix at its start to fit its longest request, and every request after it
    sees that cut prefix (even one short enough to fit the whole prefix)."""
    model, tokenizer = tiny_lm
    limit = 36
    ids = [tokenizer(p).input_ids for p in PREFIXES]
    tails = [tokenizer(s + c, add_special_tokens=False).input_ids for _, s, c in REQUESTS]
    longest = {p: max(len(t) for (q, _, _), t in zip(REQUESTS, tails) if q == p) for p, _, _ in REQUESTS}
    cut = {p for p in longest if len(ids[p]) + longest[p] > limit}
    assert cut == {0, 2}  # prefix 1 fits with its longest request, 3 always does
    assert len(ids[2]) + len(tails[9]) <= limit  # request 9 alone would fit: it sees the cut prefix all the same

    stats_shared: dict = {}
    stats_naive: dict = {}
    shared = shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS, max_length=limit, stats=stats_shared)
    naive = shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS, max_length=limit, naive=True, max_rows=1,
                                   stats=stats_naive)
    assert_all_close(shared, naive)
    assert stats_shared == stats_naive == {"truncated": sum(p in cut for p, _, _ in REQUESTS)} == {"truncated": 7}
    for (p, _, _), tail, lp in zip(REQUESTS, tails, shared):
        kept, was_cut = truncate_prompt(ids[p], longest[p], limit, tokenizer.bos_token_id)
        assert was_cut == (p in cut)
        if lp.numel():
            torch.testing.assert_close(lp, reference_logprobs(model, kept + tail, len(lp)), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no room for the prompt"):
        shared_prefix_logprobs(model, tokenizer, PREFIXES, [(3, SUFFIX.format("q"), " x" * 50)], max_length=limit)


@pytest.mark.parametrize("naive", [False, True])
def test_progress_counts_every_request(tiny_lm, naive):
    model, tokenizer = tiny_lm
    for prefix_batch, max_rows in [(None, None), (1, 1)]:
        calls: list[int] = []
        shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS, naive=naive, prefix_batch=prefix_batch,
                               max_rows=max_rows, on_progress=calls.append)
        assert sum(calls) == len(REQUESTS) and all(n > 0 for n in calls)
        if max_rows == 1:
            assert len(calls) > len(REQUESTS) // 2


def test_edge_cases(tiny_lm):
    model, tokenizer = tiny_lm
    assert shared_prefix_logprobs(model, tokenizer, PREFIXES, []) == []
    empty = shared_prefix_logprobs(model, tokenizer, PREFIXES, [(0, "x", ""), (1, "", "")])
    assert [t.numel() for t in empty] == [0, 0]
    with pytest.raises(ValueError, match="out of range"):
        shared_prefix_logprobs(model, tokenizer, PREFIXES, [(len(PREFIXES), "x", " y")])
    with pytest.raises(ValueError, match="max_rows"):
        shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS, max_rows=0)
    bf16 = shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS, dtype="bfloat16")
    fp32 = shared_prefix_logprobs(model, tokenizer, PREFIXES, REQUESTS)
    assert max(float((a - b).abs().max()) for a, b in zip(bf16, fp32) if a.numel()) < 0.05


def test_select_rows_repeats_rows_and_leaves_the_cache(tiny_lm):
    """The shared path gives each request its own copy of its prefix's cache row, repeated indices included."""
    model, tokenizer = tiny_lm
    pre = prefill(model, tokenizer, PREFIXES[:2])
    keys = [layer.keys.clone() for layer in pre.cache.layers]
    copy = select_rows(pre.cache, torch.tensor([1, 0, 1, 1]))
    for layer, original in zip(copy.layers, keys):
        assert layer.keys.shape[0] == 4
        torch.testing.assert_close(layer.keys[[0, 2, 3]], original[[1, 1, 1]])
        torch.testing.assert_close(layer.keys[1], original[0])
        layer.keys.add_(1.0)  # an in-place change of the copy ...
    for layer, original in zip(pre.cache.layers, keys):
        torch.testing.assert_close(layer.keys, original)  # ... leaves the prefixes' cache as it was
