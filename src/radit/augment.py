"""Parallel retrieval augmentation (RA-DIT §2.1 and App. B "Inference", after REPLUG): answer with the
LM and the top-k retrieved chunks.

    radit ask --index runs/quickstart/index "who founded the Ming dynasty?" --k 3

    from radit.augment import answer_generative
    from radit.config import INFERENCE_MODES, InferenceConfig
    settings = InferenceConfig(k=3, retrieval_temperature=0.05, dtype="float32")
    pred = answer_generative(model, tokenizer, question, hits, get_template("qa"), settings)

Each chunk is prepended to the prompt separately and the LM's outputs are mixed with the retriever's
renormalised scores (Eq. 2):

    p_LM(y | x, C') = sum_{c in C'} p_LM(y | c ∘ x) · p_R(c | x),   p_R = softmax_{C'}(s(x, c) / T)

- Generation: decode greedily under each chunk, keep each answer's first line, merge answers equal
  under SQuAD normalisation, score every distinct answer under every chunk, mix, take the argmax.
- Multiple choice: score each option under each chunk, mix, take the argmax.

Modes (`MODES`): `replug` (one prompt per chunk, the paper's method), `top1` (replug with k = 1),
`concat` (one prompt whose Background holds the top-k chunks, the App. E.2 / Table 13 ablation) and
`closed-book` (no Background). With one prompt the answer is that prompt's greedy answer, still scored.

`answer_naive` is the reference for the efficiency comparison: one prompt at a time and one full
forward per (chunk, candidate); it must choose the same answers as `answer_generative`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import textwrap
from collections.abc import Mapping, Sequence

import torch

from radit.answers import extract_answer, normalize_answer
from radit.config import INFERENCE_MODES, InferenceConfig
from radit.ensemble import choose, dedupe_candidates, mix_log_probs, retrieval_log_weights
from radit.lm.generate import ensemble_from_prefill, greedy_from_prefill, greedy_generate
from radit.lm.inputs import tokenize_continuations
from radit.lm.model import context_length, model_device
from radit.lm.prefill import Prefill, concat_prefills, plain_cache, prefill, prefill_shared
from radit.lm.scoring import candidate_logprobs, prefilled_pair_logprobs, score
from radit.prompts import Demonstration, PromptTemplate, comp_prompt, fit_background, to_model_text
from radit.runtime import resolve_dtype

log = logging.getLogger(__name__)

MODES = INFERENCE_MODES
"""`replug`, `top1`, `concat`, `closed-book` (documented on `radit.config.InferenceConfig.mode`)."""

# A rescored answer is `answer_prefix + answer`, re-tokenised: it can come out a few tokens longer
# than the tokens it was decoded as. Keeping this much more room than `max_new_tokens` means the
# scorers never have to cut a prompt, so the batched and the naive scorers see the same contexts.
_RESCORE_SLACK = 8


@dataclasses.dataclass
class Prediction:
    """One question's answer, with everything that went into it."""

    question: str
    answer: str
    """The chosen candidate; "" when no prompt gave a non-empty answer."""
    candidates: list[str]
    """Distinct answers decoded under the chunks (generation), or the options (multiple choice)."""
    mixed: list[float]
    """Per candidate, log sum_c p_LM(candidate | c ∘ x) p_R(c | x) (Eq. 2), with p_LM replaced by the
    `scoring` normalisation (e.g. nll_token: the mean token log-prob)."""
    chunk_answers: list[str]
    """Per prompt: the greedy answer decoded under it (generation), or its best option (multiple choice)."""
    weights: list[float]
    """Per prompt: p_R(c | x) (1.0 for the single prompt of concat, top1 and closed-book)."""
    passage_ids: list[str]
    """The retrieved chunks used, in rank order: one per prompt for replug/top1, all in the one
    concat prompt, none for closed-book."""
    chunk_scores: list[list[float]]
    """[prompts][candidates] the score of each candidate under each prompt, before mixing."""
    mode: str
    scoring: str
    truncated: int = 0
    """Prompts whose Background was shortened to fit the model's context."""

    @property
    def score(self) -> float:
        """The mixed score of the chosen answer (-inf when there is none)."""
        return self.mixed[self.candidates.index(self.answer)] if self.answer else float("-inf")


def chunk_text(hit) -> str:
    """A chunk as the LM sees it inside the Background field: `title: text`, or the text alone."""
    title = getattr(hit, "title", "") or ""
    return f"{title}: {hit.text}" if title else hit.text


def build_prompts(
    template: PromptTemplate,
    question: str,
    hits: Sequence | None,
    mode: str,
    demonstrations: Sequence[Demonstration] = (),
    choices: Mapping[str, str] | None = None,
    budget_tokens: int | None = None,
    count_tokens=None,
    stats: dict | None = None,
) -> list[str]:
    """The prompts of one question: one per hit (replug), one for the first hit (top1), one holding all
    hits (concat, chunks joined by newlines in rank order) or one without Background (closed-book).

    Args:
        template: the task prompt; its `background` field wraps each chunk.
        question, choices, demonstrations: as for `PromptTemplate.render`.
        hits: retrieved chunks (objects with `.text` and optional `.title`); ignored for closed-book.
        mode: one of `MODES`.
        budget_tokens, count_tokens: give both to fit every prompt into `budget_tokens` tokens by
            cutting words off the end of its Background (`fit_background`): the question and the
            demonstrations are never cut.
        stats: if given, `stats["truncated"]` is increased by the number of Backgrounds cut.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not question.strip():
        raise ValueError("the question is empty")
    if (budget_tokens is None) != (count_tokens is None):
        raise ValueError("give both budget_tokens and count_tokens, or neither")

    def render(background: str | None) -> str:
        return template.render(question, background=background, choices=choices, demonstrations=demonstrations)

    if mode == "closed-book":
        backgrounds: list[str | None] = [None]
    else:
        if not hits:
            raise ValueError(f"mode {mode!r} needs retrieved chunks; use mode 'closed-book' to answer without")
        texts = [chunk_text(h) for h in (hits[:1] if mode == "top1" else hits)]
        backgrounds = ["\n".join(texts)] if mode == "concat" else list(texts)

    prompts, truncated = [], 0
    for background in backgrounds:
        if background is not None and budget_tokens is not None:
            background, cut = fit_background(background, budget_tokens, count_tokens, render)
            truncated += cut
            if cut and not background:
                log.warning("the question alone is over the %d-token budget; its Background is left empty", budget_tokens)
        prompts.append(render(background))
    if stats is not None:
        stats["truncated"] = stats.get("truncated", 0) + truncated
    return prompts


@dataclasses.dataclass
class _Prompts:
    prompts: list[str]
    log_weights: torch.Tensor  # [P] log p_R per prompt
    passage_ids: list[str]
    truncated: int


def _prepare(model, tokenizer, question, hits, template, settings: InferenceConfig, demonstrations, choices,
             reserve: int) -> _Prompts:
    """Prompts fitted to the model's context (keeping `reserve` tokens for the answer) and their log p_R."""
    mode = settings.mode
    used = [] if mode == "closed-book" else list(hits or [])[: 1 if mode == "top1" else settings.k]
    limit = context_length(model)
    budget = None if limit is None else limit - reserve
    if budget is not None and budget < 1:
        raise ValueError(f"the model's context ({limit} tokens) leaves no room for a prompt and {reserve} answer tokens")
    stats: dict = {}
    prompts = build_prompts(
        template, question, used, mode, demonstrations, choices, budget_tokens=budget,
        count_tokens=None if budget is None else (lambda s: len(tokenizer(to_model_text(template, s, tokenizer))["input_ids"])),
        stats=stats,
    )
    prompts = [to_model_text(template, prompt, tokenizer) for prompt in prompts]
    if len(prompts) > 1:
        if settings.retrieval_temperature is None:
            raise ValueError(
                f"{len(prompts)} prompts are mixed by p_R = softmax(s / T) but settings.retrieval_temperature is None; "
                "resolve it first (--retrieval-temperature, or the index's own: the searcher's retrieval_temperature)"
            )
        scores = torch.tensor([float(h.score) for h in used], dtype=torch.float64)
        log_weights = retrieval_log_weights(scores, settings.retrieval_temperature)  # [k]
    else:
        log_weights = torch.zeros(1, dtype=torch.float64)  # one prompt: p_R = 1 whatever the temperature
    return _Prompts(prompts, log_weights, [h.id for h in used], stats["truncated"])


def _comp_logprobs(model, tokenizer, template, candidates, dtype, naive) -> list[torch.Tensor]:
    """Per candidate, its token log-probs after just the template's bare answer prompt (`nll_comp`'s divisor)."""
    context = to_model_text(template, comp_prompt(template), tokenizer)
    (comp,) = candidate_logprobs(model, tokenizer, [context], [template.continuation(c) for c in candidates],
                                 dtype=dtype, naive=naive)
    return comp


def _score_matrix(model, tokenizer, prompts, candidates, template, scoring, dtype, naive) -> torch.Tensor:
    """[P, C] score of each candidate after each prompt, by the `scoring` normalisation (App. B)."""
    continuations = [template.continuation(c) for c in candidates]
    logprobs = candidate_logprobs(model, tokenizer, prompts, continuations, dtype=dtype, naive=naive)
    comp: list = [None] * len(candidates)
    if scoring == "nll_comp":
        comp = _comp_logprobs(model, tokenizer, template, candidates, dtype, naive)
    return torch.tensor(
        [[score(lp, cand, scoring, c) for lp, cand, c in zip(row, candidates, comp)] for row in logprobs],
        dtype=torch.float64,
    )


def _mix(scores: torch.Tensor, log_weights: torch.Tensor) -> tuple[list[float], int]:
    """scores [P, C], log_weights [P] -> (mixed [C], argmax)."""
    mixed = mix_log_probs(scores.unsqueeze(0), log_weights.unsqueeze(0))  # [1, C]
    return mixed[0].tolist(), int(choose(mixed)[0])


def _predict(question: str, p: _Prompts, candidates: list[str], chunk_answers: list[str], scores: torch.Tensor | None,
             settings: InferenceConfig) -> Prediction:
    """The Prediction of one question from its candidates and their [P, C] scores (Eq. 2's mixture)."""
    weights = p.log_weights.exp().tolist()
    if not candidates:
        log.warning("no prompt gave a non-empty answer to %r", question)
        return Prediction(question, "", [], [], chunk_answers, weights, p.passage_ids, [[] for _ in p.prompts],
                          settings.mode, settings.scoring, p.truncated)
    mixed, best = _mix(scores, p.log_weights)
    return Prediction(question, candidates[best], candidates, mixed, chunk_answers, weights, p.passage_ids,
                      scores.tolist(), settings.mode, settings.scoring, p.truncated)


def _answer_prefilled(model, tokenizer, questions: Sequence[str], preps: Sequence[_Prompts], pre: Prefill,
                      template: PromptTemplate, settings: InferenceConfig, dtype: str) -> list[Prediction]:
    """Decode and rescore questions whose prompts are the rows of `pre`, question after question."""
    starts = [sum(len(p.prompts) for p in preps[:i]) for i in range(len(preps))]
    if settings.token_level:
        # The token-level ensemble mixes every row of `pre`: the caller gives it one question.
        (p,) = preps
        text = ensemble_from_prefill(model, tokenizer, pre, p.log_weights, settings.max_new_tokens, dtype,
                                     stop_at_answer_end=True)
        chunk_answers: list[list[str]] = [[]]
        candidates = [dedupe_candidates([extract_answer(text)], normalize_answer)]
    else:
        # Every row decodes at once; a row stops at the end of its first answer line.
        texts = greedy_from_prefill(model, tokenizer, pre, max_new_tokens=settings.max_new_tokens, dtype=dtype,
                                    stop_at_answer_end=True)
        chunk_answers = [[extract_answer(t) for t in texts[s : s + len(p.prompts)]] for s, p in zip(starts, preps)]
        candidates = [dedupe_candidates(answers, normalize_answer) for answers in chunk_answers]
    # Eq. 2 needs every candidate under every chunk, including the chunks that decoded another answer:
    # all questions' (chunk, candidate) pairs are scored on the same cache, in the same forwards.
    pairs = [(s + r, template.continuation(c))
             for s, p, cands in zip(starts, preps, candidates) for r in range(len(p.prompts)) for c in cands]
    flat = prefilled_pair_logprobs(model, tokenizer, pre, pairs, dtype=dtype)
    comp: dict[str, torch.Tensor | None] = {}
    if settings.scoring == "nll_comp":
        distinct = sorted({c for cands in candidates for c in cands})
        comp = dict(zip(distinct, _comp_logprobs(model, tokenizer, template, distinct, dtype, naive=False)))
    predictions, i = [], 0
    for question, p, cands, answers in zip(questions, preps, candidates, chunk_answers):
        lps = flat[i : i + len(p.prompts) * len(cands)]
        i += len(lps)
        scores = torch.tensor([[score(lps[r * len(cands) + j], c, settings.scoring, comp.get(c))
                                for j, c in enumerate(cands)] for r in range(len(p.prompts))], dtype=torch.float64)
        predictions.append(_predict(question, p, cands, answers, scores, settings))
    return predictions


def answer_generative_batch(
    model,
    tokenizer,
    questions: Sequence[str],
    hits: Sequence[Sequence | None],
    template: PromptTemplate,
    settings: InferenceConfig,
    demonstrations: Sequence[Sequence[Demonstration]] | None = None,
    share_prefixes: bool = True,
) -> list[Prediction]:
    """`answer_generative` for several questions at once: the same answers, in far fewer LM calls.

    All the questions' prompts are read into one cache (`radit.lm.prefill.Prefill`), every row
    decodes together, and every (chunk, candidate) pair of every question is scored in the same
    forwards. A decoding step reads all the model's weights for one token per row, so on a CPU it
    costs about as much for 24 rows as for 3 (SmolLM2-135M, 2 cores: 0.2 s vs 0.3 s). Prompts of
    the same chunk (questions that retrieved it) read it once (`radit.lm.prefill.prefill_shared`);
    otherwise each question's prompts are prefilled as their own batch, padding only to that
    question's longest, and joined (`radit.lm.prefill.concat_prefills`). The predictions equal
    `answer_generative`'s per question, up to float rounding.

    With `settings.token_level`, or a cache that cannot be joined (sliding-window layers), the
    questions are decoded one by one.

    Args:
        questions: the question texts.
        hits: per question, its retrieved chunks (as for `answer_generative`).
        demonstrations: per question, its in-context examples; default none.
        share_prefixes: read a chunk shared by several prompts once (the default); False prefills
            each question apart, the reference for the shared path.
        Others: as for `answer_generative`.

    Returns:
        One Prediction per question, in order.
    """
    if template.choices is not None:
        raise ValueError(f"template {template.name!r} is multiple choice; use answer_choice")
    demonstrations = [()] * len(questions) if demonstrations is None else demonstrations
    if not len(questions) == len(hits) == len(demonstrations):
        raise ValueError(f"{len(questions)} questions need as many hit lists and demonstration lists, "
                         f"got {len(hits)} and {len(demonstrations)}")
    dtype = resolve_dtype(settings.dtype, model_device(model))
    # A rescored answer may re-tokenise a few tokens longer than decoded: the prompts keep room for it.
    reserve = settings.max_new_tokens + _RESCORE_SLACK
    preps = [_prepare(model, tokenizer, q, h, template, settings, d, None, reserve)
             for q, h, d in zip(questions, hits, demonstrations)]
    if not questions:
        return []
    # The token-level ensemble mixes every row of a prefill, and sliding-window caches cannot be
    # joined: then one question at a time.
    if settings.token_level or not plain_cache(model):
        return [pred for q, p in zip(questions, preps)
                for pred in _answer_prefilled(model, tokenizer, [q], [p], prefill(model, tokenizer, p.prompts, reserve=reserve, dtype=dtype),
                                              template, settings, dtype)]
    # A prompt's chunk is its beginning: prompts of one chunk read it once (the one prompt of concat
    # or closed-book is keyed by all its chunks, or none).
    keys = [key for p in preps
            for key in (p.passage_ids if len(p.passage_ids) == len(p.prompts) else [tuple(p.passage_ids)])]
    if share_prefixes and len(set(keys)) < len(keys):
        joined = prefill_shared(model, tokenizer, [s for p in preps for s in p.prompts], keys, reserve=reserve, dtype=dtype)
    else:
        joined = concat_prefills([prefill(model, tokenizer, p.prompts, reserve=reserve, dtype=dtype) for p in preps])
    return _answer_prefilled(model, tokenizer, questions, preps, joined, template, settings, dtype)


def answer_generative(
    model,
    tokenizer,
    question: str,
    hits: Sequence | None,
    template: PromptTemplate,
    settings: InferenceConfig,
    demonstrations: Sequence[Demonstration] = (),
) -> Prediction:
    """Answer an open question with the retrieval-augmented ensemble (App. B, generation tasks).

    The k prompts run once as one batch (`radit.lm.prefill.prefill`); they decode greedily from that
    KV cache (stopping each at the end of its first answer line), and each distinct answer is then
    scored under every prompt on the same cache (`radit.lm.scoring.prefilled_pair_logprobs`),
    normalised by `settings.scoring`, mixed with p_R = softmax(hit scores / T) and the argmax is
    returned. `answer_generative_batch` does this for several questions at once.

    With `settings.token_level`, REPLUG's token-level ensemble instead: at each step the k next-token
    distributions are mixed with p_R (`radit.lm.generate.ensemble_from_prefill`) and the argmax
    token is fed to all k prompts; one answer comes out (`chunk_answers` is empty) and is then
    scored like a sequence-level candidate.

    Args:
        model, tokenizer: a causal LM and its tokenizer (`radit.lm.model.load_lm`).
        question: the question text.
        hits: the retrieved chunks in rank order (`radit.retriever.search.Hit`: `.score`, `.text`,
            `.title`, `.id`); the first `settings.k` are used. None or [] for closed-book.
        template: the task prompt, resolved (`radit.prompts.resolve_template(settings.template)`);
            `settings.template` itself is not read.
        settings: mode, k, scoring, max_new_tokens, token_level and dtype, resolved by the caller:
            `retrieval_temperature` set (the index's own unless overridden; it may stay None only
            when a single prompt is used). `dtype` may still be `auto` (resolved here for the
            model's device).
        demonstrations: in-context (question, answer) examples, rendered after the Background.

    Raises:
        ValueError: with a multiple-choice template, without hits outside closed-book, or when
            several prompts are mixed and `settings.retrieval_temperature` is None.
    """
    (prediction,) = answer_generative_batch(model, tokenizer, [question], [hits], template, settings, [demonstrations])
    return prediction


def answer_naive(
    model,
    tokenizer,
    question: str,
    hits: Sequence | None,
    template: PromptTemplate,
    settings: InferenceConfig,
    demonstrations: Sequence[Demonstration] = (),
) -> Prediction:
    """`answer_generative` done the obvious way, the oracle and baseline for the batched version.

    Same arguments (`settings.token_level` must be False). Decodes the prompts one at a time with
    `model.generate` and scores each (chunk, candidate) pair with its own full forward
    (`candidate_logprobs(naive=True)`). Same answers; scores equal up to float rounding.
    """
    if template.choices is not None:
        raise ValueError(f"template {template.name!r} is multiple choice; use answer_choice")
    if settings.token_level:
        raise ValueError("answer_naive has no token-level version; use answer_generative for token_level=True")
    dtype = resolve_dtype(settings.dtype, model_device(model))
    p = _prepare(model, tokenizer, question, hits, template, settings, demonstrations, None,
                 settings.max_new_tokens + _RESCORE_SLACK)
    # One prompt at a time with `model.generate`; every (chunk, candidate) pair its own full forward.
    texts = greedy_generate(model, tokenizer, p.prompts, max_new_tokens=settings.max_new_tokens, batch_size=1,
                            dtype=dtype, stop_at_answer_end=True)
    chunk_answers = [extract_answer(t) for t in texts]
    candidates = dedupe_candidates(chunk_answers, normalize_answer)
    scores = (_score_matrix(model, tokenizer, p.prompts, candidates, template, settings.scoring, dtype, naive=True)
              if candidates else None)
    return _predict(question, p, candidates, chunk_answers, scores, settings)


def remix(pred: Prediction, scores: Sequence[float], k: int, temperature: float) -> Prediction:
    """Eq. 2 again for a smaller k or another retrieval temperature, from a `replug` generation
    Prediction's own per-chunk answers and scores: no LM call.

    Decoding under a chunk does not depend on T or on the other chunks, so the answer of a run with
    (k, T) is read off a run with a larger k: the candidates are the distinct answers of the first k
    chunks, each already scored under every chunk (`chunk_scores`), mixed with p_R = softmax(s / T)
    over the first k `scores` (the retrieval scores of `pred`'s chunks, in rank order).
    `temperature=math.inf` weighs the k chunks equally. `benchmarks/inference_remix.py` uses it to
    sweep k and T on one evaluation's predictions.
    """
    if pred.mode != "replug" or not pred.chunk_answers:
        raise ValueError(f"remix needs a sequence-level replug prediction, got mode {pred.mode!r}")
    if not 1 <= k <= len(pred.chunk_answers) or len(scores) < k:
        raise ValueError(f"k must be between 1 and the prediction's {len(pred.chunk_answers)} chunks "
                         f"(with as many scores), got k={k} and {len(scores)} scores")
    candidates = dedupe_candidates(pred.chunk_answers[:k], normalize_answer)
    if not candidates:
        return dataclasses.replace(pred, answer="", candidates=[], mixed=[], chunk_answers=pred.chunk_answers[:k],
                                   weights=[1 / k] * k, passage_ids=pred.passage_ids[:k], chunk_scores=[[] for _ in range(k)])
    columns = [pred.candidates.index(c) for c in candidates]  # a prefix's first spellings are the run's
    matrix = torch.tensor([[pred.chunk_scores[i][j] for j in columns] for i in range(k)], dtype=torch.float64)
    s = torch.tensor(list(scores[:k]), dtype=torch.float64)
    log_weights = (torch.full((k,), -math.log(k), dtype=torch.float64) if math.isinf(temperature)
                   else retrieval_log_weights(s, temperature))
    mixed, best = _mix(matrix, log_weights)
    return dataclasses.replace(pred, answer=candidates[best], candidates=candidates, mixed=mixed,
                               chunk_answers=pred.chunk_answers[:k], weights=log_weights.exp().tolist(),
                               passage_ids=pred.passage_ids[:k], chunk_scores=matrix.tolist())


def answer_choice(
    model,
    tokenizer,
    question: str,
    choices: Mapping[str, str] | Sequence[str] | None,
    hits: Sequence | None,
    template: PromptTemplate,
    settings: InferenceConfig,
    demonstrations: Sequence[Demonstration] = (),
) -> Prediction:
    """Answer a multiple-choice question with the ensemble (App. B): mix each option's score, argmax.

    Args:
        choices: a mapping label -> option text (MMLU: {"A": ..., "D": ...}): the texts fill the
            template's `{choices}` and the labels are scored, or, with a template without
            `{choices}` (cloze, e.g. `mmlu-cloze`), each option's text is scored and its label
            returned; or a list of answers scored as they are (FEVER: ["true", "false"]); None takes
            `template.answer_options`.
        settings: as for `answer_generative` (mode, k, scoring, retrieval_temperature and dtype are
            read; max_new_tokens and token_level do not apply).
        Others: as for `answer_generative`.
    """
    if choices is None:
        choices = template.answer_options
        if choices is None:
            raise ValueError(f"template {template.name!r} has no answer_options; pass the choices")
    listed: Mapping[str, str] | None = None  # what fills the template's {choices}
    if isinstance(choices, Mapping) and template.choices is None:
        # Cloze: the options are not listed in the prompt; each option's text is scored as the answer.
        labels, scored = list(choices), [choices[label] for label in choices]
    elif isinstance(choices, Mapping):
        listed, labels = dict(choices), list(choices)
        scored = labels
    else:
        labels = scored = list(choices)
    if not labels:
        raise ValueError("no options to choose from")
    dtype = resolve_dtype(settings.dtype, model_device(model))
    longest = max(len(c) for c in tokenize_continuations(tokenizer, [template.continuation(c) for c in scored]))
    p = _prepare(model, tokenizer, question, hits, template, settings, demonstrations, listed, reserve=longest)
    scores = _score_matrix(model, tokenizer, p.prompts, scored, template, settings.scoring, dtype, naive=False)
    mixed, best = _mix(scores, p.log_weights)
    chunk_answers = [labels[int(row.argmax())] for row in scores]
    return Prediction(question, labels[best], labels, mixed, chunk_answers, p.log_weights.exp().tolist(),
                      p.passage_ids, scores.tolist(), settings.mode, settings.scoring, p.truncated)


def format_prediction(pred: Prediction, hits: Sequence | None = None, width: int = 40) -> str:
    """The answer, then a table of the chunks: rank, p_R weight, title, the answer under that chunk."""
    lines = [f"Q: {pred.question}", f"A: {pred.answer or '(no answer)'}"]
    if pred.answer:
        lines[-1] += f"    [{pred.scoring} {pred.score:.3f}, {pred.mode}, {len(pred.candidates)} candidate(s)]"
    hits = list(hits or [])
    by_id = {h.id: h for h in hits}
    if not pred.passage_ids:
        return "\n".join(lines)
    per_prompt = len(pred.weights) == len(pred.passage_ids)  # replug / top1: one prompt per chunk
    lines.append(f"{'rank':>4}  {'p_R':>6}  {'title':<{width}}  answer under this chunk")
    for rank, pid in enumerate(pred.passage_ids, 1):
        hit = by_id.get(pid)
        title = textwrap.shorten((hit.title or pid) if hit is not None else pid, width=width, placeholder="…")
        weight = f"{pred.weights[rank - 1]:6.3f}" if per_prompt else f"{'-':>6}"
        answer = (pred.chunk_answers[rank - 1] if per_prompt and pred.chunk_answers else "-") or "(empty)"
        answer = textwrap.shorten(answer, width=80, placeholder=" …")
        lines.append(f"{rank:>4}  {weight}  {title:<{width}}  {answer}")
    if not per_prompt:
        lines.append(f"({pred.mode}: one prompt holding all {len(pred.passage_ids)} chunks)")
    if pred.truncated:
        lines.append(f"({pred.truncated} Background(s) shortened to fit the model's context)")
    return "\n".join(lines)
