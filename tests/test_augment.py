"""Greedy decoding and the parallel retrieval-augmented ensemble on a tiny Llama (real SmolLM2 tokenizer).

The batched paths are checked against naive ones (one prompt / one pair per forward) and against hand
computations with `continuation_logprobs` + `mix_log_probs`; hits are hand-made, no index needed,
except for the `radit ask` end-to-end test on a BM25 index of the conftest passages.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from radit.answers import extract_answer
from radit.augment import (
    MODES,
    answer_choice,
    answer_generative,
    answer_naive,
    build_prompts,
    format_prediction,
    remix,
)
from radit.config import InferenceConfig
from radit.ensemble import mix_log_probs, retrieval_log_weights
from radit.lm.generate import greedy_generate
from radit.lm.scoring import continuation_logprobs
from radit.prompts import get_template
from radit.retriever.search import Hit

QUESTION = "Who founded the Ming dynasty?"
HITS = [
    Hit(0, "ming#0", "ming", "Ming dynasty", "The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368.", 0.61),
    Hit(1, "ming#1", "ming", "Ming dynasty", "The Ming capital moved from Nanjing to Beijing under the Yongle Emperor.", 0.55),
    Hit(16, "rome#0", "rome", "", "Rome was founded, according to legend, by Romulus in 753 BC.", 0.42),
]
QA = get_template("qa")


def cfg(**overrides) -> InferenceConfig:
    """Resolved inference settings, as the harness passes them: p_R temperature 1 and fp32 unless overridden."""
    return InferenceConfig(**{"retrieval_temperature": 1.0, "dtype": "float32", **overrides})


# --------------------------------------------------------------------------------------------------
# greedy decoding


def test_extract_answer():
    assert extract_answer(" Paris\nQuestion: next") == "Paris"
    assert extract_answer("\n\n  Zhu Yuanzhang  \nmore") == "Zhu Yuanzhang"
    assert extract_answer("Answer: 1368") == "1368"
    assert extract_answer(" A: Beijing") == "Beijing"
    assert extract_answer("Answer:\n Nanjing") == "Nanjing"
    assert extract_answer("Abba") == "Abba"  # only a marker with its colon is dropped
    assert extract_answer(" \n\t\n") == ""


def test_greedy_batched_equals_one_by_one(tiny_lm):
    model, tokenizer = tiny_lm
    prompts = build_prompts(QA, QUESTION, HITS, "replug") + ["Q: Hi\nA:", "A"]
    lengths = [len(tokenizer(p).input_ids) for p in prompts]
    assert max(lengths) > 5 * min(lengths)  # left padding really happens
    tokenizer.padding_side = "right"
    batched = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)
    assert tokenizer.padding_side == "right"  # restored
    single = [greedy_generate(model, tokenizer, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert len(set(batched)) == len(prompts)  # outputs depend on the prompt
    ids = tokenizer(prompts[0]).input_ids
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert batched[0] == tokenizer.decode(ref[0, len(ids) :], skip_special_tokens=True)
    # Stopping at the answer's end keeps the extracted answers.
    stopped = greedy_generate(model, tokenizer, prompts, max_new_tokens=8, batch_size=3, stop_at_answer_end=True)
    assert [extract_answer(t) for t in stopped] == [extract_answer(t) for t in batched]


@pytest.mark.parametrize("stop", [False, True])
def test_greedy_from_prefill_equals_generate(tiny_lm, stop):
    from radit.lm.generate import greedy_from_prefill
    from radit.lm.prefill import prefill

    model, tokenizer = tiny_lm
    prompts = build_prompts(QA, QUESTION, HITS, "replug") + ["Q: Hi\nA:", "A"]
    pre = prefill(model, tokenizer, prompts, reserve=12)
    fast = greedy_from_prefill(model, tokenizer, pre, max_new_tokens=12, stop_at_answer_end=stop)
    slow = [greedy_generate(model, tokenizer, [p], max_new_tokens=12, stop_at_answer_end=stop)[0] for p in prompts]
    assert fast == slow
    assert len(set(fast)) >= 3 and all(fast)
    # Decoding used a copy of the cache: scoring can start from the same prefill.
    assert greedy_from_prefill(model, tokenizer, pre, max_new_tokens=12, stop_at_answer_end=stop) == fast


def test_joined_prefills_decode_as_each_alone(tiny_lm):
    """Two groups of prompts of different widths, prefilled apart and joined (left-padded to the
    widest): greedy decoding of the joined rows gives each group's own answers, and the parts are
    left as they were."""
    from radit.lm.generate import greedy_from_prefill
    from radit.lm.prefill import concat_prefills, prefill

    model, tokenizer = tiny_lm
    groups = [build_prompts(QA, QUESTION, HITS, "replug"), ["Q: Hi\nA:", "A"], ["Question: What is 2 + 2?\nAnswer:"]]
    parts = [prefill(model, tokenizer, g, reserve=12) for g in groups]
    assert len({p.attention_mask.shape[1] for p in parts}) == 3  # the join really pads
    widths = [p.cache.get_seq_length() for p in parts]
    joined = concat_prefills(parts)
    assert joined.attention_mask.shape == (6, max(widths)) and joined.cache.get_seq_length() == max(widths)
    assert joined.lengths.tolist() == [n for p in parts for n in p.lengths.tolist()]
    fast = greedy_from_prefill(model, tokenizer, joined, max_new_tokens=12, stop_at_answer_end=True)
    alone = [t for p in parts for t in greedy_from_prefill(model, tokenizer, p, max_new_tokens=12, stop_at_answer_end=True)]
    assert fast == alone and len(set(fast)) >= 3
    assert [p.cache.get_seq_length() for p in parts] == widths
    assert concat_prefills(parts[:1]) is parts[0]
    with pytest.raises(ValueError, match="at least one"):
        concat_prefills([])


def test_shared_chunks_are_read_once_and_decode_and_score_as_prefill(tiny_lm):
    """Prompts of three questions, two of them on the same chunks (and one with a demonstration):
    `prefill_shared` reads each chunk once, and decoding and scoring on it equal `prefill`'s, with
    each pass in one forward or in parts of 1 or 2 rows."""
    from radit.lm.generate import greedy_from_prefill
    from radit.lm.prefill import prefill, prefill_shared
    from radit.lm.scoring import prefilled_pair_logprobs

    model, tokenizer = tiny_lm
    questions = [(QUESTION, HITS, ()), ("Who founded Rome?", [HITS[2], HITS[0]], (("What is the capital of France?", "Paris"),)),
                 ("Where did the Ming capital move?", HITS[:2], ())]
    prompts, keys = [], []
    for q, hits, demos in questions:
        prompts += build_prompts(QA, q, hits, "replug", demos)
        keys += [h.id for h in hits]
    plain = prefill(model, tokenizer, prompts, reserve=12)
    pairs = [(r, c) for r in range(len(prompts)) for c in [" Zhu Yuanzhang", " Romulus in 753 BC", " 1368"]]
    expected = greedy_from_prefill(model, tokenizer, plain, max_new_tokens=12, stop_at_answer_end=True)
    expected_lp = prefilled_pair_logprobs(model, tokenizer, plain, pairs)
    for rows in (None, 1, 2):  # one forward per pass, or parts of 1 or 2 rows joined
        stats: dict = {}
        shared = prefill_shared(model, tokenizer, prompts, keys, reserve=12, prefix_rows=rows, max_rows=rows, stats=stats)
        assert shared.ids == plain.ids and shared.lengths.tolist() == plain.lengths.tolist()
        assert shared.attention_mask.shape[1] >= plain.attention_mask.shape[1]  # [beginning, gap, rest]
        # ming#0 and rome#0 are read once for three and two prompts; ming#1 once for two.
        assert stats["tokens"] == sum(len(x) for x in plain.ids) and stats["read"] < 0.7 * stats["tokens"]
        assert torch.allclose(shared.next_logprobs, plain.next_logprobs, atol=1e-4)
        assert greedy_from_prefill(model, tokenizer, shared, max_new_tokens=12, stop_at_answer_end=True) == expected
        got = prefilled_pair_logprobs(model, tokenizer, shared, pairs)
        assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(got, expected_lp))
    # Every prompt alone in its group: nothing shared, the same prefill still.
    alone = prefill_shared(model, tokenizer, prompts, list(range(len(prompts))), reserve=12)
    assert torch.allclose(alone.next_logprobs, plain.next_logprobs, atol=1e-4)
    with pytest.raises(ValueError, match="as many group keys"):
        prefill_shared(model, tokenizer, prompts, keys[:-1])
    with pytest.raises(ValueError, match="2 tokens or more"):
        prefill_shared(model, tokenizer, ["A", "A"], [0, 0])
    with pytest.raises(ValueError, match=">= 1"):
        prefill_shared(model, tokenizer, prompts, keys, prefix_rows=0)


def test_no_empty_answer_when_the_model_would_stop_at_once(tiny_lm):
    """SmolLM2 ends many plain QA prompts with eos at once; min_new_tokens=1 (the default) rules that out."""
    from radit.lm.generate import greedy_from_prefill
    from radit.lm.prefill import prefill

    model, tokenizer = tiny_lm
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id

    def eos_first(module, inputs, logits):  # eos is the argmax everywhere
        logits = logits.clone()
        logits[..., eos] = logits.max() + 100
        return logits

    prompts = ["Q: Hi\nA:", "Question: What is the capital of France?\nAnswer:"]
    handle = model.lm_head.register_forward_hook(eos_first)
    try:
        assert greedy_generate(model, tokenizer, prompts, max_new_tokens=4, min_new_tokens=0) == ["", ""]
        once = greedy_generate(model, tokenizer, prompts, max_new_tokens=4)
        assert all(once)  # one forced token, then eos
        pre = prefill(model, tokenizer, prompts, reserve=4)
        assert greedy_from_prefill(model, tokenizer, pre, max_new_tokens=4) == once
        assert greedy_from_prefill(model, tokenizer, pre, max_new_tokens=4, min_new_tokens=0) == ["", ""]
        pred = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(k=2, max_new_tokens=4))
        assert pred.answer and all(pred.chunk_answers)
        token = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(k=2, max_new_tokens=4, token_level=True))
        assert token.answer
    finally:
        handle.remove()


def naive_token_ensemble(model, tokenizer, prompts, log_weights, max_new_tokens) -> str:
    """The oracle for the KV-cache loop: every step re-reads each prompt + the tokens so far, mixes, argmax."""
    from radit.ensemble import token_mixture
    from radit.lm.generate import eos_ids

    stop = sorted(eos_ids(model, tokenizer))
    generated: list[int] = []
    for step in range(max_new_tokens):
        rows = [torch.tensor([tokenizer(p).input_ids + generated]) for p in prompts]
        with torch.no_grad():
            lp = torch.stack([model(input_ids=r).logits[0, -1].float().log_softmax(-1) for r in rows])  # [k, V]
        if step == 0:
            lp[:, stop] = float("-inf")
        token = int(token_mixture(lp, log_weights.float()).argmax())
        if token in stop:
            break
        generated.append(token)
    return tokenizer.decode(generated, skip_special_tokens=True)


def test_ensemble_from_prefill_equals_naive_mixture(tiny_lm):
    from radit.lm.generate import ensemble_from_prefill, greedy_from_prefill
    from radit.lm.prefill import prefill

    model, tokenizer = tiny_lm
    prompts = build_prompts(QA, QUESTION, HITS, "replug")
    pre = prefill(model, tokenizer, prompts, reserve=8)
    log_w = retrieval_log_weights(torch.tensor([h.score for h in HITS]), 0.1)
    mixed = ensemble_from_prefill(model, tokenizer, pre, log_w, max_new_tokens=8)
    assert mixed == naive_token_ensemble(model, tokenizer, prompts, log_w, 8)
    greedy = greedy_from_prefill(model, tokenizer, pre, max_new_tokens=8)
    assert mixed not in greedy  # the mixture really decides: no single prompt decodes this
    # All of p_R on one prompt: that prompt's greedy continuation.
    for top in range(3):
        one_hot = torch.full((3,), float("-inf"))
        one_hot[top] = 0.0
        assert ensemble_from_prefill(model, tokenizer, pre, one_hot, max_new_tokens=8) == greedy[top]
    with pytest.raises(ValueError, match="one entry per prompt"):
        ensemble_from_prefill(model, tokenizer, pre, log_w[:2])


def test_greedy_cuts_long_prompts_from_the_start(tiny_lm):
    model, tokenizer = tiny_lm
    long_prompt = build_prompts(QA, QUESTION, HITS, "concat")[0] * 3
    ids = tokenizer(long_prompt).input_ids
    assert len(ids) + 8 > model.config.max_position_embeddings
    stats: dict = {}
    out = greedy_generate(model, tokenizer, [long_prompt, "Q: Hi\nA:"], max_new_tokens=8, stats=stats)
    assert stats == {"truncated": 1}
    kept = ids[-(model.config.max_position_embeddings - 8) :]
    with torch.no_grad():
        ref = model.generate(input_ids=torch.tensor([kept]), max_new_tokens=8, do_sample=False)
    assert out[0] == tokenizer.decode(ref[0, len(kept) :], skip_special_tokens=True)


# --------------------------------------------------------------------------------------------------
# prompts


def test_build_prompts_exact_strings():
    q = "Question: Who founded the Ming dynasty?\nAnswer:"
    first = "Ming dynasty: The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368."
    second = "Ming dynasty: The Ming capital moved from Nanjing to Beijing under the Yongle Emperor."
    third = "Rome was founded, according to legend, by Romulus in 753 BC."  # no title: the text alone
    assert build_prompts(QA, QUESTION, HITS, "replug") == [
        f"Background: {first}\n\n{q}", f"Background: {second}\n\n{q}", f"Background: {third}\n\n{q}",
    ]
    assert build_prompts(QA, QUESTION, HITS, "top1") == [f"Background: {first}\n\n{q}"]
    assert build_prompts(QA, QUESTION, HITS, "concat") == [f"Background: {first}\n{second}\n{third}\n\n{q}"]
    assert build_prompts(QA, QUESTION, HITS, "closed-book") == [q]
    assert build_prompts(QA, QUESTION, None, "closed-book") == [q]
    demos = [("Capital of France?", "Paris")]
    assert build_prompts(QA, QUESTION, HITS[:1], "replug", demonstrations=demos) == [
        f"Background: {first}\n\nQuestion: Capital of France?\nAnswer: Paris\n\n{q}"
    ]
    fever = get_template("fever")
    assert build_prompts(fever, "Rome was founded in 753 BC.", HITS[2:], "replug") == [
        f'Background: {third}\n\nIs this statement true? "Rome was founded in 753 BC."\nAnswer:'
    ]


def test_build_prompts_fits_backgrounds_never_the_question():
    words = lambda s: len(s.split())  # noqa: E731
    q = "Question: Who founded the Ming dynasty?\nAnswer:"
    stats: dict = {}
    prompts = build_prompts(QA, QUESTION, HITS, "replug", budget_tokens=14, count_tokens=words, stats=stats)
    # "Background:" and the 7 words of the question leave 6 words of chunk; every chunk has more.
    assert prompts[0] == f"Background: Ming dynasty: The Ming dynasty was\n\n{q}"
    assert prompts[2] == f"Background: Rome was founded, according to legend,\n\n{q}"
    assert all(words(p) <= 14 and p.endswith(q) for p in prompts)
    assert stats == {"truncated": 3}
    stats = {}
    (concat,) = build_prompts(QA, QUESTION, HITS, "concat", budget_tokens=30, count_tokens=words, stats=stats)
    assert concat.startswith("Background: Ming dynasty: The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, "
                             "in 1368.\nMing dynasty:") and concat.endswith(q) and words(concat) == 30
    assert stats == {"truncated": 1}
    stats = {}
    assert build_prompts(QA, QUESTION, HITS, "top1", budget_tokens=100, count_tokens=words, stats=stats)[0].startswith(
        "Background: Ming dynasty: The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368.\n\n")
    assert stats == {"truncated": 0}


def test_build_prompts_errors():
    with pytest.raises(ValueError, match="closed-book"):
        build_prompts(QA, QUESTION, [], "replug")
    with pytest.raises(ValueError, match="replug, top1, concat, closed-book"):
        build_prompts(QA, QUESTION, HITS, "fusion")
    with pytest.raises(ValueError, match="empty"):
        build_prompts(QA, "  ", HITS, "replug")
    with pytest.raises(ValueError, match="both"):
        build_prompts(QA, QUESTION, HITS, "replug", budget_tokens=10)
    assert set(MODES) == {"replug", "top1", "concat", "closed-book"}


# --------------------------------------------------------------------------------------------------
# the ensemble


@pytest.mark.parametrize("scoring", ["nll", "nll_token", "nll_comp"])
def test_generative_equals_naive(tiny_lm, scoring):
    model, tokenizer = tiny_lm
    settings = cfg(retrieval_temperature=0.1, scoring=scoring, k=3, max_new_tokens=6)
    fast = answer_generative(model, tokenizer, QUESTION, HITS, QA, settings)
    naive = answer_naive(model, tokenizer, QUESTION, HITS, QA, settings)
    assert len(fast.candidates) >= 2  # the chunks disagree, so the mixing decides
    assert fast.answer == naive.answer
    assert fast.candidates == naive.candidates and fast.chunk_answers == naive.chunk_answers
    assert fast.mixed == pytest.approx(naive.mixed, abs=1e-4)
    assert torch.allclose(torch.tensor(fast.chunk_scores), torch.tensor(naive.chunk_scores), atol=1e-4)
    assert fast.passage_ids == ["ming#0", "ming#1", "rome#0"]
    assert sum(fast.weights) == pytest.approx(1.0) and fast.weights[0] > fast.weights[1] > fast.weights[2]
    assert fast.answer == fast.candidates[max(range(len(fast.mixed)), key=fast.mixed.__getitem__)]


BATCH = [  # questions with their own hits (different counts, ranks and widths) and demonstrations
    (QUESTION, HITS, ()),
    ("Who founded Rome?", [HITS[2], HITS[0]], (("What is the capital of France?", "Paris"),)),
    ("Where did the Ming capital move?", [HITS[1], HITS[2], HITS[0]], ()),
    ("Who was the Hongwu Emperor?", HITS[:1], ()),
]


@pytest.mark.parametrize("overrides", [dict(scoring="nll"), dict(scoring="nll_comp"), dict(scoring="nll_char", k=2),
                                       dict(token_level=True), dict(mode="concat"), dict(mode="closed-book")])
def test_generative_batch_equals_one_question_at_a_time(tiny_lm, overrides):
    """Several questions decoded and rescored together give each question's own answer, candidates,
    per-chunk answers and scores (up to float rounding); and the naive reference agrees."""
    from radit.augment import answer_generative_batch

    model, tokenizer = tiny_lm
    settings = cfg(**{"retrieval_temperature": 0.1, "k": 3, "max_new_tokens": 6, **overrides})
    batch = answer_generative_batch(model, tokenizer, [q for q, _, _ in BATCH], [h for _, h, _ in BATCH], QA, settings,
                                    [d for _, _, d in BATCH])
    alone = [answer_generative(model, tokenizer, q, h, QA, settings, demonstrations=d) for q, h, d in BATCH]
    assert len(batch) == len(BATCH)
    if settings.mode == "replug" and not settings.token_level:
        assert sum(len(p.candidates) for p in batch) > len(BATCH)  # some chunks disagree: the mixing decides
    for b, a, (q, _, _) in zip(batch, alone, BATCH):
        assert b.question == q
        assert (b.answer, b.candidates, b.chunk_answers, b.passage_ids) == (a.answer, a.candidates, a.chunk_answers, a.passage_ids)
        assert b.mixed == pytest.approx(a.mixed, abs=1e-4) and b.weights == pytest.approx(a.weights)
        assert torch.allclose(torch.tensor(b.chunk_scores), torch.tensor(a.chunk_scores), atol=1e-4)
    if not settings.token_level:
        for b, (q, h, d) in zip(batch, BATCH):
            assert b.answer == answer_naive(model, tokenizer, q, h, QA, settings, demonstrations=d).answer
    with pytest.raises(ValueError, match="as many"):
        answer_generative_batch(model, tokenizer, [QUESTION], [HITS, HITS], QA, settings)
    assert answer_generative_batch(model, tokenizer, [], [], QA, settings) == []


def test_generative_batch_answers_one_by_one_when_caches_cannot_be_joined(tiny_lm, monkeypatch):
    import radit.augment
    from radit.augment import answer_generative_batch

    model, tokenizer = tiny_lm
    settings = cfg(retrieval_temperature=0.1, k=3, max_new_tokens=6)
    questions, hits = [q for q, _, _ in BATCH], [h for _, h, _ in BATCH]
    joined = answer_generative_batch(model, tokenizer, questions, hits, QA, settings)

    def cannot_join(pres):
        raise ValueError("concat_prefills joins caches of plain DynamicLayer layers only")

    monkeypatch.setattr(radit.augment, "concat_prefills", cannot_join)
    monkeypatch.setattr(radit.augment, "prefill_shared", cannot_join)
    monkeypatch.setattr(radit.augment, "plain_cache", lambda model: False)
    apart = answer_generative_batch(model, tokenizer, questions, hits, QA, settings)
    assert [p.answer for p in apart] == [p.answer for p in joined]
    assert [p.candidates for p in apart] == [p.candidates for p in joined]


def test_generative_batch_reads_shared_chunks_once(tiny_lm, monkeypatch):
    """BATCH's questions share chunks: the batch goes through `prefill_shared`, and gives the answers
    and scores of the batch prefilled question by question (`share_prefixes=False`)."""
    import radit.augment
    from radit.augment import answer_generative_batch
    from radit.lm.prefill import prefill_shared

    model, tokenizer = tiny_lm
    settings = cfg(retrieval_temperature=0.1, k=3, max_new_tokens=6)
    args = ([q for q, _, _ in BATCH], [h for _, h, _ in BATCH], QA, settings, [d for _, _, d in BATCH])
    calls = []
    monkeypatch.setattr(radit.augment, "prefill_shared", lambda *a, **kw: calls.append(a[3]) or prefill_shared(*a, **kw))
    shared = answer_generative_batch(model, tokenizer, *args)
    assert calls == [["ming#0", "ming#1", "rome#0", "rome#0", "ming#0", "ming#1", "rome#0", "ming#0", "ming#0"]]
    apart = answer_generative_batch(model, tokenizer, *args, share_prefixes=False)
    assert len(calls) == 1
    for s, a in zip(shared, apart):
        assert (s.answer, s.candidates, s.chunk_answers) == (a.answer, a.candidates, a.chunk_answers)
        assert torch.allclose(torch.tensor(s.chunk_scores), torch.tensor(a.chunk_scores), atol=1e-4)


def test_settings_are_checked_and_resolved(tiny_lm):
    model, tokenizer = tiny_lm
    with pytest.raises(ValueError, match="retrieval_temperature is None"):
        answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(k=2, retrieval_temperature=None))
    with pytest.raises(ValueError, match="retrieval_temperature is None"):
        answer_choice(model, tokenizer, QUESTION, None, HITS, get_template("fever"), cfg(k=2, retrieval_temperature=None))
    # One prompt mixes nothing: no temperature needed.
    one = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(mode="top1", max_new_tokens=4, retrieval_temperature=None))
    assert one.weights == [1.0]
    # dtype "auto" is resolved for the model's device (float32 on a CPU without AMX-BF16).
    from radit.runtime import resolve_dtype

    settings = cfg(retrieval_temperature=0.1, k=2, max_new_tokens=4)
    auto = answer_generative(model, tokenizer, QUESTION, HITS, QA, dataclasses.replace(settings, dtype="auto"))
    resolved = answer_generative(model, tokenizer, QUESTION, HITS, QA,
                                 dataclasses.replace(settings, dtype=resolve_dtype("auto", "cpu")))
    assert auto.answer == resolved.answer and auto.mixed == pytest.approx(resolved.mixed)
    with pytest.raises(ValueError, match="token-level"):
        answer_naive(model, tokenizer, QUESTION, HITS, QA, cfg(token_level=True))


def test_generative_mix_by_hand(tiny_lm):
    model, tokenizer = tiny_lm
    pred = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(retrieval_temperature=0.1, k=3, max_new_tokens=6))
    prompts = build_prompts(QA, QUESTION, HITS, "replug")
    conts = [" " + c for c in pred.candidates]
    lp = torch.tensor([[float(x.sum()) for x in continuation_logprobs(model, tokenizer, [p] * len(conts), conts)]
                       for p in prompts])  # [k, C]
    log_w = retrieval_log_weights(torch.tensor([h.score for h in HITS]), 0.1)
    mixed = mix_log_probs(lp[None], log_w[None])[0]
    assert pred.mixed == pytest.approx(mixed.tolist(), abs=1e-4)
    assert pred.answer == pred.candidates[int(mixed.argmax())]


def test_ensemble_follows_the_weights(tiny_lm):
    model, tokenizer = tiny_lm
    answers = set()
    for top in range(3):
        # Make chunk `top` the retriever's favourite; a tiny temperature puts all of p_R on it.
        hits = [Hit(h.row, h.id, h.doc_id, h.title, h.text, 1.0 if i == top else 0.0) for i, h in enumerate(HITS)]
        pred = answer_generative(model, tokenizer, QUESTION, hits, QA, cfg(retrieval_temperature=1e-4, k=3, max_new_tokens=6))
        assert pred.weights[top] == pytest.approx(1.0)
        # The mixture is then that chunk's own scores: the answer is its best-scored candidate ...
        assert pred.mixed == pytest.approx(pred.chunk_scores[top], abs=1e-5)
        assert pred.answer == pred.candidates[max(range(len(pred.candidates)), key=pred.chunk_scores[top].__getitem__)]
        # ... which is the answer the chunk decoded greedily, unless another chunk's answer scores higher under it.
        own = pred.candidates.index(pred.chunk_answers[top])
        if pred.answer != pred.chunk_answers[top]:
            assert max(pred.chunk_scores[top]) > pred.chunk_scores[top][own]
        answers.add(pred.answer)
    assert len(answers) >= 2  # the choice really moves with the weights


def test_remix_equals_running_again_with_a_smaller_k_or_another_temperature(tiny_lm):
    model, tokenizer = tiny_lm

    def run(k, t):
        return answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(retrieval_temperature=t, k=k, max_new_tokens=6))

    wide = run(3, 0.1)
    scores = [h.score for h in HITS]
    answers = set()
    for k, t in [(3, 0.1), (2, 0.1), (1, 0.1), (3, 1e-3), (3, 10.0), (2, 0.02)]:
        again, remixed = run(k, t), remix(wide, scores, k, t)
        assert remixed.answer == again.answer and remixed.candidates == again.candidates
        assert remixed.mixed == pytest.approx(again.mixed, abs=1e-4)
        assert remixed.weights == pytest.approx(again.weights) and remixed.passage_ids == again.passage_ids
        answers.add(remixed.answer)
    assert len(answers) >= 2  # the settings really change the answer
    uniform = remix(wide, scores, 3, math.inf)
    assert uniform.weights == pytest.approx([1 / 3] * 3)
    assert uniform.mixed == pytest.approx(run(3, 1e9).mixed, abs=1e-4)
    with pytest.raises(ValueError, match="k must be between 1"):
        remix(wide, scores, 4, 0.1)
    with pytest.raises(ValueError, match="replug"):
        remix(dataclasses.replace(wide, mode="concat"), scores, 2, 0.1)


def test_single_prompt_modes_return_the_greedy_answer(tiny_lm):
    model, tokenizer = tiny_lm
    for mode, hits in [("closed-book", None), ("closed-book", HITS), ("top1", HITS), ("concat", HITS)]:
        pred = answer_generative(model, tokenizer, QUESTION, hits, QA, cfg(mode=mode, max_new_tokens=6, retrieval_temperature=None))
        assert pred.weights == [1.0] and len(pred.chunk_answers) == 1
        assert pred.answer == pred.chunk_answers[0] != ""
        assert pred.candidates == [pred.answer] and pred.mixed == pytest.approx(pred.chunk_scores[0])
        (prompt,) = build_prompts(QA, QUESTION, hits, mode)
        (lp,) = continuation_logprobs(model, tokenizer, [prompt], [" " + pred.answer])
        assert pred.score == pytest.approx(float(lp.sum()), abs=1e-4)
        assert pred.passage_ids == {"closed-book": [], "top1": ["ming#0"], "concat": ["ming#0", "ming#1", "rome#0"]}[mode]
    with pytest.raises(ValueError, match="closed-book"):
        answer_generative(model, tokenizer, QUESTION, None, QA, cfg())


def test_chat_template_wraps_each_prompt_as_a_user_turn(tiny_lm):
    from radit.prompts import to_model_text

    model, tokenizer = tiny_lm
    chat = get_template("qa-chat")
    pred = answer_generative(model, tokenizer, QUESTION, HITS, chat, cfg(retrieval_temperature=0.1, k=2, max_new_tokens=4),
                             demonstrations=[("Who wrote Hamlet?", "Shakespeare")])
    rendered = build_prompts(chat, QUESTION, HITS[:2], "replug", demonstrations=[("Who wrote Hamlet?", "Shakespeare")])
    assert "Answer: Shakespeare\n\nQuestion: Who founded" in rendered[0]  # a demonstration's answer after a space
    prompts = [to_model_text(chat, p, tokenizer) for p in rendered]
    assert prompts[0].startswith("<|im_start|>") and prompts[0].endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\nBackground: Ming dynasty: The Ming dynasty was founded" in prompts[0]
    # The answer opens the assistant turn: scored with no prefix after the header.
    for prompt, row in zip(prompts, pred.chunk_scores):
        want = [float(lp.sum()) for lp in continuation_logprobs(model, tokenizer, [prompt] * len(pred.candidates), pred.candidates)]
        assert row == pytest.approx(want, abs=1e-4)
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(ValueError, match="no chat template"):
            answer_generative(model, tokenizer, QUESTION, HITS, chat, cfg(k=2, max_new_tokens=4))
    finally:
        tokenizer.chat_template = saved


def test_answer_choice_cloze_scores_option_texts(tiny_lm):
    model, tokenizer = tiny_lm
    cloze = get_template("mmlu-cloze")
    options = {"A": "Zhu Yuanzhang", "B": "Romulus", "C": "Kublai Khan", "D": "the Yongle Emperor"}
    pred = answer_choice(model, tokenizer, QUESTION, options, HITS, cloze, cfg(retrieval_temperature=0.1, k=3))
    prompts = build_prompts(cloze, QUESTION, HITS, "replug")
    assert "Romulus" not in prompts[0].split("Question:")[1]  # the options are not listed
    conts = [" " + text for text in options.values()]
    lp = torch.stack([torch.stack([x.sum() for x in continuation_logprobs(model, tokenizer, [p] * 4, conts)]) for p in prompts])
    mixed = mix_log_probs(lp[None], retrieval_log_weights(torch.tensor([h.score for h in HITS]), 0.1)[None])[0]
    assert pred.candidates == list("ABCD") and pred.answer == "ABCD"[int(mixed.argmax())]
    assert pred.mixed == pytest.approx(mixed.tolist(), abs=1e-4)


def test_answer_choice_matches_hand_computation(tiny_lm):
    model, tokenizer = tiny_lm
    mmlu = get_template("mmlu")
    options = {"A": "Zhu Yuanzhang", "B": "Romulus", "C": "Kublai Khan", "D": "Yongle"}
    for template, opts, labels in [(mmlu, options, list("ABCD")), (get_template("fever"), None, ["true", "false"])]:
        for temperature in (0.02, 1.0):
            pred = answer_choice(model, tokenizer, QUESTION, opts, HITS, template, cfg(retrieval_temperature=temperature, k=3))
            prompts = build_prompts(template, QUESTION, HITS, "replug", choices=opts)
            conts = [" " + label for label in labels]
            lp = torch.stack([torch.stack([x.sum() for x in continuation_logprobs(model, tokenizer, [p] * len(conts), conts)])
                              for p in prompts])  # [k, C]
            mixed = mix_log_probs(lp[None], retrieval_log_weights(torch.tensor([h.score for h in HITS]), temperature)[None])[0]
            assert pred.candidates == labels
            assert pred.answer == labels[int(mixed.argmax())]
            assert pred.mixed == pytest.approx(mixed.tolist(), abs=1e-4)
            assert pred.chunk_answers == [labels[int(row.argmax())] for row in lp]


def test_token_level_ensemble(tiny_lm):
    model, tokenizer = tiny_lm
    # One prompt: the mixture is that prompt's distribution, so token-level decoding is plain greedy.
    greedy = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(mode="top1", max_new_tokens=6))
    token = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(mode="top1", max_new_tokens=6, token_level=True))
    assert token.answer == greedy.answer and token.mixed == pytest.approx(greedy.mixed, abs=1e-4)
    # All weight on one chunk: the top chunk's greedy answer.
    for top in range(3):
        hits = [Hit(h.row, h.id, h.doc_id, h.title, h.text, 1.0 if i == top else 0.0) for i, h in enumerate(HITS)]
        seq = answer_generative(model, tokenizer, QUESTION, hits, QA, cfg(retrieval_temperature=1e-4, max_new_tokens=6))
        tok = answer_generative(model, tokenizer, QUESTION, hits, QA, cfg(retrieval_temperature=1e-4, max_new_tokens=6, token_level=True))
        assert tok.answer == seq.chunk_answers[top] and tok.chunk_answers == []
        assert tok.mixed[0] == pytest.approx(seq.chunk_scores[top][seq.candidates.index(tok.answer)], abs=1e-4)


def test_format_prediction(tiny_lm):
    model, tokenizer = tiny_lm
    pred = answer_generative(model, tokenizer, QUESTION, HITS, QA, cfg(retrieval_temperature=0.1, max_new_tokens=6))
    lines = format_prediction(pred, HITS).splitlines()
    assert lines[0] == f"Q: {QUESTION}" and lines[1].startswith(f"A: {pred.answer}")
    assert lines[3].split()[:4] == ["1", f"{pred.weights[0]:.3f}", "Ming", "dynasty"]
    assert lines[3].endswith(pred.chunk_answers[0]) and lines[5].split()[2] == "rome#0"  # no title: the id


# --------------------------------------------------------------------------------------------------
# radit ask


def test_radit_ask_on_bm25_index(tmp_path, passages_file, tiny_lm_dir, capsys):
    from radit.cli import main
    from radit.config import IndexConfig
    from radit.retriever.index import build_index

    index = tmp_path / "index"
    build_index(IndexConfig(passages=str(passages_file), output=str(index), backend="bm25"))
    common = ["--model", str(tiny_lm_dir), "--device", "cpu", "--max-new-tokens", "4", "-q"]
    assert main(["ask", "--index", str(index), "--k", "3", *common, "Who founded the Ming dynasty?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Q: Who founded the Ming dynasty?" and out[1].startswith("A: ")
    assert [line.split()[0] for line in out[3:6]] == ["1", "2", "3"] and len(out) == 6
    assert "Ming dynasty" in out[3]  # BM25 ranks the Ming passages first
    weights = [float(line.split()[1]) for line in out[3:6]]
    assert sum(weights) == pytest.approx(1.0, abs=2e-3) and weights == sorted(weights, reverse=True)

    assert main(["ask", "--mode", "closed-book", "--index", str(tmp_path / "none"), *common, "Who?"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Q: Who?" and len(out) == 2
    # Demonstrations from the bundled train split; a closed-answer template goes through answer_choice.
    assert main(["ask", "--index", str(index), "--k", "2", "--shots", "2", "--template", "fever", *common,
                 "The Ming dynasty was founded in 1368."]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[1] in {"true", "false"} and len(out) == 5

    assert main(["ask", "--index", str(index), *common, "  "]) == 2
    assert "empty question" in capsys.readouterr().err
    assert main(["ask", "--index", str(index), *common]) == 2
    assert 'radit ask --index DIR "question"' in capsys.readouterr().err
