"""Parallel retrieval augmentation (RA-DIT §2.1 and App. B "Inference", after REPLUG): answer with the
LM and the top-k retrieved chunks.

    radit ask --index runs/quickstart/index "who founded the Ming dynasty?" --k 3

    from radit.augment import answer_generative
    pred = answer_generative(model, tokenizer, question, hits, get_template("qa"), temperature=0.05)

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
import inspect
import logging
import textwrap
from collections.abc import Mapping, Sequence

import torch

from radit.ensemble import choose, dedupe_candidates, mix_log_probs, retrieval_log_weights, token_mixture
from radit.answers import answer_complete, extract_answer, normalize_answer
from radit.lm.generate import eos_ids, greedy_from_prefill, greedy_generate
from radit.lm.prefill import Prefill, logits_to_keep_supported, model_device, prefill, select_rows
from radit.lm.scoring import SCORERS, continuation_logprobs, prefilled_logprobs, score, shared_prompt_logprobs
from radit.prompts import Demonstration, PromptTemplate, comp_prompt, fit_background, to_model_text
from radit.runtime import autocast

log = logging.getLogger(__name__)

MODES = ("replug", "top1", "concat", "closed-book")

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


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


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
    _check_mode(mode)
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


def _prepare(model, tokenizer, question, hits, template, mode, temperature, k, demonstrations, choices, reserve) -> _Prompts:
    """Prompts fitted to the model's context (keeping `reserve` tokens for the answer) and their log p_R."""
    _check_mode(mode)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    used = [] if mode == "closed-book" else list(hits or [])[: 1 if mode == "top1" else k]
    limit = getattr(model.config, "max_position_embeddings", None)
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
        scores = torch.tensor([float(h.score) for h in used], dtype=torch.float64)
        log_weights = retrieval_log_weights(scores, temperature)  # [k]
    else:
        retrieval_log_weights(torch.zeros(1), temperature)  # still reject a bad temperature
        log_weights = torch.zeros(1, dtype=torch.float64)
    return _Prompts(prompts, log_weights, [h.id for h in used], stats["truncated"])


def _logprob_matrix(model, tokenizer, prompts, continuations, dtype, naive, pre: Prefill | None = None) -> list[list[torch.Tensor]]:
    """[prompts][continuations] per-token log-probs: the continuations on the prompts' KV cache (`pre`,
    or a new prefill), or (naive) one full forward per pair."""
    if naive:
        return [continuation_logprobs(model, tokenizer, [p] * len(continuations), continuations, batch_size=1, dtype=dtype)
                for p in prompts]
    if pre is None:
        longest = max(len(x) for x in tokenizer(list(continuations), add_special_tokens=False)["input_ids"])
        pre = prefill(model, tokenizer, prompts, reserve=longest, dtype=dtype)
    return prefilled_logprobs(model, tokenizer, pre, continuations, dtype=dtype)


def _score_matrix(model, tokenizer, prompts, candidates, template, scoring, dtype, naive, pre=None) -> torch.Tensor:
    """[P, C] score of each candidate after each prompt, by the `scoring` normalisation (App. B)."""
    if scoring not in SCORERS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORERS)}")
    continuations = [template.continuation(c) for c in candidates]
    logprobs = _logprob_matrix(model, tokenizer, prompts, continuations, dtype, naive, pre)
    comp: list = [None] * len(candidates)
    if scoring == "nll_comp":
        context = to_model_text(template, comp_prompt(template), tokenizer)
        if naive:
            (comp,) = _logprob_matrix(model, tokenizer, [context], continuations, dtype, naive)
        else:
            comp = shared_prompt_logprobs(model, tokenizer, context, continuations, dtype=dtype)
    return torch.tensor(
        [[score(lp, cand, scoring, c) for lp, cand, c in zip(row, candidates, comp)] for row in logprobs],
        dtype=torch.float64,
    )


def _mix(scores: torch.Tensor, log_weights: torch.Tensor) -> tuple[list[float], int]:
    """scores [P, C], log_weights [P] -> (mixed [C], argmax)."""
    mixed = mix_log_probs(scores.unsqueeze(0), log_weights.unsqueeze(0))  # [1, C]
    return mixed[0].tolist(), int(choose(mixed)[0])


def _check_hits(hits, mode: str) -> None:
    if mode != "closed-book" and not hits:
        raise ValueError(f"mode {mode!r} needs retrieved chunks; use mode 'closed-book' to answer without")


def _answer_generative(model, tokenizer, question, hits, template, *, mode, temperature, scoring, k,
                       demonstrations, max_new_tokens, dtype, naive, token_level=False) -> Prediction:
    _check_hits(hits, mode)
    if template.choices is not None:
        raise ValueError(f"template {template.name!r} is multiple choice; use answer_choice")
    p = _prepare(model, tokenizer, question, hits, template, mode, temperature, k, demonstrations, None,
                 reserve=max_new_tokens + _RESCORE_SLACK)
    # The question's prompts are read once, as one batch: decoding and rescoring both continue from
    # their KV cache. The naive reference decodes one prompt at a time and rescores with full forwards.
    pre = None if naive else prefill(model, tokenizer, p.prompts, reserve=max_new_tokens + _RESCORE_SLACK, dtype=dtype)
    if token_level:
        text = _token_level_generate(model, tokenizer, pre, p.log_weights, max_new_tokens, dtype)
        chunk_answers: list[str] = []
        candidates = dedupe_candidates([extract_answer(text)], normalize_answer)
    else:
        if naive:
            texts = greedy_generate(model, tokenizer, p.prompts, max_new_tokens=max_new_tokens, batch_size=1,
                                    dtype=dtype, stop_at_answer_end=True)
        else:
            texts = greedy_from_prefill(model, tokenizer, pre, max_new_tokens=max_new_tokens, dtype=dtype,
                                        stop_at_answer_end=True)
        chunk_answers = [extract_answer(t) for t in texts]
        candidates = dedupe_candidates(chunk_answers, normalize_answer)
    if not candidates:
        log.warning("no prompt gave a non-empty answer to %r", question)
        return Prediction(question, "", [], [], chunk_answers, p.log_weights.exp().tolist(), p.passage_ids,
                          [[] for _ in p.prompts], mode, scoring, p.truncated)
    # Eq. 2 needs every candidate under every chunk, including the chunks that decoded another answer.
    scores = _score_matrix(model, tokenizer, p.prompts, candidates, template, scoring, dtype, naive, pre)
    mixed, best = _mix(scores, p.log_weights)
    return Prediction(question, candidates[best], candidates, mixed, chunk_answers, p.log_weights.exp().tolist(),
                      p.passage_ids, scores.tolist(), mode, scoring, p.truncated)


def answer_generative(
    model,
    tokenizer,
    question: str,
    hits: Sequence | None,
    template: PromptTemplate,
    *,
    mode: str = "replug",
    temperature: float = 1.0,
    scoring: str = "nll",
    k: int = 10,
    demonstrations: Sequence[Demonstration] = (),
    max_new_tokens: int = 32,
    dtype: str = "float32",
    token_level: bool = False,
) -> Prediction:
    """Answer an open question with the retrieval-augmented ensemble (App. B, generation tasks).

    The k prompts run once as one batch (`radit.lm.prefill.prefill`); they decode greedily from that
    KV cache (stopping each at the end of its first answer line), and each distinct answer is then
    scored under every prompt on the same cache (`prefilled_logprobs`), normalised by `scoring`,
    mixed with p_R = softmax(hit scores / temperature) and the argmax is returned.

    Args:
        model, tokenizer: a causal LM and its tokenizer (`radit.lm.load_lm`).
        question: the question text.
        hits: the retrieved chunks in rank order (`radit.retriever.search.Hit`: `.score`, `.text`,
            `.title`, `.id`); the first `k` are used. None or [] for closed-book.
        template: the task prompt (`radit.prompts.get_template("qa")`).
        mode: one of `MODES`.
        temperature: p_R temperature (the index's encoder preset `score_temperature`; 1 for BM25
            and DRAGON+).
        scoring: `nll`, `nll_token`, `nll_char` or `nll_comp` (`radit.lm.scoring.SCORERS`).
        k: chunks used (replug, concat).
        demonstrations: in-context (question, answer) examples, rendered after the Background.
        max_new_tokens: decoding budget per prompt.
        dtype: autocast precision.
        token_level: REPLUG's token-level ensemble instead: at each step the k next-token
            distributions are mixed with p_R (`radit.ensemble.token_mixture`) and the argmax token is
            fed to all k prompts; one answer comes out (`chunk_answers` is empty) and is then scored
            like a sequence-level candidate.
    """
    return _answer_generative(model, tokenizer, question, hits, template, mode=mode, temperature=temperature,
                              scoring=scoring, k=k, demonstrations=demonstrations, max_new_tokens=max_new_tokens,
                              dtype=dtype, naive=False, token_level=token_level)


def answer_naive(model, tokenizer, question: str, hits: Sequence | None, template: PromptTemplate, **kwargs) -> Prediction:
    """`answer_generative` done the obvious way, the oracle and baseline for the batched version.

    Takes the same arguments (without `token_level`). Decodes the prompts one at a time and scores
    each (chunk, candidate) pair with its own full forward (`continuation_logprobs(batch_size=1)`).
    Same answers; scores equal up to float rounding.
    """
    # answer_generative's keyword arguments and defaults, so the two cannot drift apart.
    options = {name: param.default for name, param in inspect.signature(answer_generative).parameters.items()
               if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "token_level"}
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(f"answer_naive() got unexpected keyword argument(s) {sorted(unknown)}")
    return _answer_generative(model, tokenizer, question, hits, template, **{**options, **kwargs}, naive=True)


def answer_choice(
    model,
    tokenizer,
    question: str,
    options: Mapping[str, str] | Sequence[str] | None,
    hits: Sequence | None,
    template: PromptTemplate,
    *,
    mode: str = "replug",
    temperature: float = 1.0,
    scoring: str = "nll",
    k: int = 10,
    demonstrations: Sequence[Demonstration] = (),
    dtype: str = "float32",
) -> Prediction:
    """Answer a multiple-choice question with the ensemble (App. B): mix each option's score, argmax.

    Args:
        options: a mapping label -> option text (MMLU: {"A": ..., "D": ...}): the texts fill the
            template's `{choices}` and the labels are scored, or, with a template without
            `{choices}` (cloze, e.g. `mmlu-cloze`), each option's text is scored and its label
            returned; or a list of answers scored as they are (FEVER: ["true", "false"]); None takes
            `template.answer_options`.
        Others: as for `answer_generative`.
    """
    _check_hits(hits, mode)
    if options is None:
        options = template.answer_options
        if options is None:
            raise ValueError(f"template {template.name!r} has no answer_options; pass the options")
    choices: Mapping[str, str] | None = None
    if isinstance(options, Mapping) and template.choices is None:
        # Cloze: the options are not listed in the prompt; each option's text is scored as the answer.
        labels, scored = list(options), [options[label] for label in options]
    elif isinstance(options, Mapping):
        choices, labels = dict(options), list(options)
        scored = labels
    else:
        labels = scored = list(options)
    if not labels:
        raise ValueError("no options to choose from")
    candidates = labels
    longest = max(len(tokenizer(template.continuation(c), add_special_tokens=False)["input_ids"]) for c in scored)
    p = _prepare(model, tokenizer, question, hits, template, mode, temperature, k, demonstrations, choices, reserve=longest)
    scores = _score_matrix(model, tokenizer, p.prompts, scored, template, scoring, dtype, naive=False)
    mixed, best = _mix(scores, p.log_weights)
    chunk_answers = [candidates[int(row.argmax())] for row in scores]
    return Prediction(question, candidates[best], candidates, mixed, chunk_answers, p.log_weights.exp().tolist(),
                      p.passage_ids, scores.tolist(), mode, scoring, p.truncated)


def _token_level_generate(model, tokenizer, pre: Prefill, log_weights, max_new_tokens, dtype) -> str:
    """REPLUG token-level ensemble on the prefilled prompts: each step mixes the k next-token
    distributions with p_R and feeds the argmax token to every row.

    Stops at an eos token or at the end of the first answer line (as `greedy_generate` does with
    `stop_at_answer_end`).
    """
    device = model_device(model)
    n = len(pre.ids)
    cache = select_rows(pre.cache, torch.arange(n))
    mask, positions = pre.attention_mask, pre.lengths[:, None].clone()
    log_w = log_weights.to(torch.float32).to(device)
    next_lp = pre.next_logprobs  # [k, V]
    stop = eos_ids(model, tokenizer)
    keep = {"logits_to_keep": 1} if logits_to_keep_supported(model) else {}
    generated: list[int] = []
    with torch.inference_mode(), autocast(device, dtype):
        for step in range(max_new_tokens):
            mixture = token_mixture(next_lp, log_w)
            if step == 0 and stop:  # as greedy_generate's min_new_tokens=1: never an empty answer
                mixture[sorted(stop)] = float("-inf")
            token = int(mixture.argmax())
            if token in stop:
                break
            generated.append(token)
            if answer_complete(tokenizer.decode(generated, skip_special_tokens=True)) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
            out = model(input_ids=torch.full((n, 1), token, dtype=torch.long, device=device),
                        attention_mask=mask, position_ids=positions.to(device), cache=cache, use_cache=True, **keep)
            positions += 1
            next_lp = out.logits[:, -1].float().log_softmax(-1)
    return tokenizer.decode(generated, skip_special_tokens=True)


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
