"""LM fine-tuning data (RA-IT, RA-DIT §2.3 and Eq. 3): instruction examples -> retrieval-augmented examples.

    radit build-lm-data --config configs/lm-data-quickstart.yaml

    from radit.config import LMDataConfig
    from radit.train.lm_data import build_lm_data
    summary = build_lm_data(LMDataConfig(sources=["quickstart:squad-open/train"], index="runs/quickstart/index"))

Each open-domain example (x_i, y_i) (no context of its own) becomes k' training examples, one per
retrieved chunk c_ij: prompt `Background: c_ij\\n\\n{template(x_i)}`, target `continuation(y_i)`. A
reading-comprehension or summarisation example becomes one, its own context in the Background
(summarisation with the `summarize` template). Field markers are drawn per training example (App. C)
when `randomize_markers`; the registry's templates, which evaluation uses, are never changed.

Mixture: each source is cut to `cap` examples (a seeded sample, the paper's eta); with `weights`, source
i gets round(w_i / sum(w) x N) examples, N the total after the cap: a sample when that is fewer than
it has, every example repeated when more (copies are distinct training examples, `@r` in their id,
markers drawn anew). Without weights the mixture is proportional (every capped example once).

Token budget: prompt (with the tokenizer's special tokens) + target (without) + 1 (the eos the trainer
appends) <= `max_length`, counted as `radit.lm.inputs` tokenises. Over it, words are cut off the end of
the Background (`truncated`); an example whose target and prompt do not fit without a Background is
skipped (`too_long`). The target is never cut.

Leakage: no question of a set `radit eval` scores reaches the training file. Examples whose question
(or retrieval query) equals one of SQuAD-open dev/test, NQ-open test, TriviaQA dev, HotpotQA dev,
FEVER dev or MMLU test after SQuAD normalisation are dropped and counted (`leaked`); a source that
loses more than half of its examples that way is an evaluated set given under another name, and is
an error. Retrieved chunks of SQuAD-open dev/test articles (by document id or title) are passed over
for the next ones, so no held-out article appears in a Background.

Outputs (atomic): `cfg.output`, one JSON object per line

    {"id": "<source>:<example id>[@<copy>]#<j>", "source", "category", "prompt", "target",
     "background": "retrieved" | "own" | "none", "passage_id": str | null, "truncated": bool}

`prompt` is the rendered template text (for a chat template the trainer wraps it with
`radit.prompts.to_model_text`, as the token count here did) and `target` is
`template.continuation(answer)`, with its leading space. `none` is not written today (every example
has a retrieved or its own Background). Beside it, `summary.json` (`summary_path`; one training
file per folder):
`examples` (lines written), the index (absolute path), k, template, seed, tokenizer, the leakage check,
the config, and per source (and in `totals`): `read` (good records), `bad_records` (skipped, by
reason), `dropped` (left out by the reader, e.g. FEVER dev claims), `leaked` (evaluated questions
dropped), `capped` (after the cap), `used` (after the mixture, copies included), `repeated`,
`examples` (lines written), `tokens`, `truncated`, `too_long` (skipped), `short_retrieval` (fewer
than k chunks found). Same config and inputs, same bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radit.artifacts import atomic_write_json, check_output_target, write_jsonl
from radit.augment import chunk_text
from radit.config import LMDataConfig
from radit.data.instructions import (
    OWN_CONTEXT,
    SOURCES,
    EvaluatedSets,
    InstructionExample,
    InstructionSet,
    article_key,
    evaluated_questions,
    load_instructions,
)
from radit.distributed import progress_bar
from radit.prompts import TEMPLATES, PromptTemplate, fit_background, randomized, resolve_template, to_model_text
from radit.retriever.hits import Hit

log = logging.getLogger(__name__)

SEARCH_BATCH = 128
"""Queries per retrieval call."""
TOKENIZE_BATCH = 512
"""Training examples tokenised per tokenizer call."""
FETCH_MARGIN = 8
"""Chunks retrieved beyond k', so that passing over held-out-article chunks rarely needs a second search."""
LEAK_LIMIT = 0.5
"""A source losing more than this share of its examples to the leakage check is an evaluated set: an error."""
SUMMARY_FILE = "summary.json"
_COUNTS = ("read", "leaked", "capped", "used", "repeated", "examples", "tokens", "truncated", "too_long", "short_retrieval")


def summary_path(output: str | Path) -> Path:
    """Where the summary of the training file `output` is written: `summary.json` in its folder (where
    `radit train-lm` looks for it), so one training file per folder."""
    return Path(output).with_name(SUMMARY_FILE)


@dataclasses.dataclass
class _Pending:
    """One training example before its token budget is checked."""

    ex: InstructionExample
    id: str
    template: PromptTemplate
    background: str
    kind: str
    """retrieved | own"""
    passage_id: str | None


# --------------------------------------------------------------------------------------------------
# Selection: leakage, cap, mixture
# --------------------------------------------------------------------------------------------------


def drop_leaked(data: InstructionSet, evaluated: EvaluatedSets) -> dict[str, int]:
    """Remove the examples whose question is a question of an evaluated set; count them by set.

    Raises:
        ValueError: more than LEAK_LIMIT of the source's examples are evaluated questions.
    """
    kept, leaked = [], {}
    for ex in data.examples:
        hit = evaluated.find(ex.prompt_input) or (evaluated.find(ex.query) if ex.query else None)
        if hit is None:
            kept.append(ex)
        else:
            leaked[hit] = leaked.get(hit, 0) + 1
    n = sum(leaked.values())
    if n > LEAK_LIMIT * len(data.examples):
        raise ValueError(f"--sources {data.source}: {n} of its {len(data.examples)} examples are questions of "
                         f"{', '.join(sorted(leaked))}, which `radit eval` scores; an evaluated set is never trained on")
    if n:
        log.info("%s: dropped %d examples that are evaluated questions (%s)", data.source, n,
                 ", ".join(f"{k}: {v}" for k, v in sorted(leaked.items())))
    data.examples = kept
    return leaked


def _sample(n: int, size: int, seed: str) -> list[int]:
    """`size` of range(n), drawn with `seed`, in their original order."""
    return sorted(random.Random(seed).sample(range(n), size))


def apply_cap(examples: list[InstructionExample], cap: int, seed: int, source: str) -> list[InstructionExample]:
    """At most `cap` examples, a seeded sample in file order (the paper's eta)."""
    if len(examples) <= cap:
        return examples
    return [examples[i] for i in _sample(len(examples), cap, f"{seed}:cap:{source}")]


def mixture_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Examples of each source: all of them (no weights), or round(w_i / sum(w) x sum(sizes))."""
    if not weights:
        return list(sizes)
    total, norm = sum(sizes), sum(weights)
    return [round(w / norm * total) for w in weights]


def mix(examples: list[InstructionExample], count: int, seed: int, source: str) -> list[tuple[InstructionExample, int]]:
    """`count` (example, copy number) pairs of one source: a sample, or whole copies plus a sample."""
    if not examples or count == 0:
        return []
    copies, rest = divmod(count, len(examples))
    out = [(ex, r) for r in range(copies) for ex in examples]
    return out + [(examples[i], copies) for i in _sample(len(examples), rest, f"{seed}:mix:{source}")]


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


def held_out_hit(hit: Hit, articles: frozenset[str]) -> bool:
    """Whether a chunk belongs to a SQuAD-open dev/test article: its document id (`squad:<title>:<n>`) or title."""
    if hit.doc_id.startswith("squad:") and article_key(hit.doc_id[len("squad:"):].rsplit(":", 1)[0]) in articles:
        return True
    return article_key(hit.title or "") in articles


def retrieve(searcher, queries: list[str], k: int, blocked: Callable[[Hit], bool]) -> tuple[list[list[Hit]], int]:
    """The top-k chunks of each query that are not `blocked`, searching deeper where blocked ones were in
    the way. Returns the hits and the number of blocked chunks passed over."""
    from radit.retriever.search import search_batched

    results: list[list[Hit]] = [[] for _ in queries]
    todo = list(range(len(queries)))
    fetch = min(k + FETCH_MARGIN, searcher.count)
    passed = 0
    while todo:
        found = search_batched(searcher, [queries[i] for i in todo], fetch, SEARCH_BATCH)
        again = []
        for i, hits in zip(todo, found):
            kept, skipped = [], 0
            for h in hits:
                if len(kept) == k:
                    break
                if blocked(h):
                    skipped += 1
                else:
                    kept.append(h)
            if len(kept) == k or fetch >= searcher.count:
                results[i] = kept
                passed += skipped
            else:
                again.append(i)
        todo, fetch = again, min(fetch * 4, searcher.count)
    return results, passed


def _check_index(cfg: LMDataConfig, needing: list[str]) -> None:
    if needing and (not cfg.index or not Path(cfg.index).is_dir()):
        raise FileNotFoundError(f"--index {cfg.index}: no index there; build one with `radit index` "
                                f"(sources {', '.join(needing)} retrieve their Background from it)")


def _open_index(cfg: LMDataConfig, needing: list[str]):
    from radit.retriever.search import load_searcher

    _check_index(cfg, needing)
    return load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device)


# --------------------------------------------------------------------------------------------------
# Token budget
# --------------------------------------------------------------------------------------------------


def _load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    from radit.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(spec))
    tokenizer.model_max_length = int(1e30)  # counting only: no "longer than the model" warnings
    return tokenizer


def _fit(pending: list[_Pending], tokenizer, max_length: int) -> list[tuple[str, str, bool, int] | None]:
    """Per pending example: (prompt, target, truncated, tokens), or None when it cannot fit."""

    def text(p: _Pending, background: str) -> str:
        return to_model_text(p.template, p.template.render(p.ex.prompt_input, background=background), tokenizer)

    def count(texts: list[str], special: bool) -> list[int]:
        return [len(x) for x in tokenizer(texts, add_special_tokens=special)["input_ids"]]

    out: list[tuple[str, str, bool, int] | None] = []
    for start in progress_bar(range(0, len(pending), TOKENIZE_BATCH), desc="tokens", unit="batch"):
        batch = pending[start:start + TOKENIZE_BATCH]
        targets = [p.template.continuation(p.ex.target) for p in batch]
        n_prompt = count([text(p, p.background) for p in batch], True)
        n_target = count(targets, False)
        for p, target, n_p, n_t in zip(batch, targets, n_prompt, n_target):
            if n_p + n_t + 1 <= max_length:
                out.append((p.template.render(p.ex.prompt_input, background=p.background), target, False, n_p + n_t + 1))
                continue
            budget = max_length - n_t - 1
            if budget < 1:
                out.append(None)
                continue
            kept, _ = fit_background(p.background, budget, lambda s: count([s], True)[0], render=lambda b, p=p: text(p, b))
            if not kept:  # not even one word of Background fits beside the prompt and the target
                out.append(None)
                continue
            n_p = count([text(p, kept)], True)[0]
            out.append((p.template.render(p.ex.prompt_input, background=kept), target, True, n_p + n_t + 1))
    return out


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


def build_lm_data(cfg: LMDataConfig) -> dict[str, Any]:
    """Build the RA-IT training file `cfg.output` and its summary (see the module docstring).

    Returns:
        The summary written beside the file: `examples` (training examples written), per-source and
        total counts, and the settings.

    Raises:
        FileNotFoundError: a source needs retrieval and `cfg.index` holds no index (nothing is written);
            the data folder or a source's file is missing.
        ValueError: an unknown or evaluated source, a source repeated, a source that is mostly
            evaluated questions.
        RecordError: a bad record (with `on_error="error"`).
    """
    out_path, sum_path = Path(cfg.output), summary_path(cfg.output)
    check_output_target(out_path)
    check_output_target(sum_path)
    if len(set(cfg.sources)) != len(cfg.sources):
        raise ValueError(f"--sources: each source once (repeat one through --weights), got {cfg.sources}")
    template = resolve_template(cfg.template)
    summarize = TEMPLATES["summarize"]
    # Registered open-domain sources surely retrieve: a missing index fails before anything is read.
    _check_index(cfg, [s for s in cfg.sources if s in SOURCES and SOURCES[s].category not in OWN_CONTEXT])

    evaluated = evaluated_questions(cfg.data_dir)
    if evaluated.missing:
        log.warning("leakage check: %s not found (no data folder?), so not checked", ", ".join(evaluated.missing))
    counts: dict[str, dict[str, Any]] = {}
    selected: list[tuple[InstructionExample, int]] = []
    sets = []
    for spec in cfg.sources:
        data = load_instructions(spec, data_dir=cfg.data_dir, on_error=cfg.on_error)
        c: dict[str, Any] = {"category": sorted({ex.category for ex in data.examples}), "read": len(data.examples)}
        c["bad_records"] = dict(sorted(data.stats.skipped.items()))
        c["dropped"] = dict(sorted(data.dropped.items()))
        c["notes"] = dict(sorted(data.notes.items()))
        c["leaked_by_set"] = dict(sorted(drop_leaked(data, evaluated).items()))
        c["leaked"] = sum(c["leaked_by_set"].values())
        data.examples = apply_cap(data.examples, cfg.cap, cfg.seed, spec)
        c["capped"] = len(data.examples)
        counts[spec] = c
        sets.append(data)
    for data, n in zip(sets, mixture_counts([len(d.examples) for d in sets], cfg.weights)):
        picked = mix(data.examples, n, cfg.seed, data.source)
        counts[data.source].update(used=len(picked), repeated=sum(r > 0 for _, r in picked))
        selected.extend(picked)

    needing = sorted({ex.source for ex, _ in selected if ex.context is None})
    searcher = _open_index(cfg, needing) if needing else None
    tokenizer = _load_tokenizer(cfg.tokenizer)

    hits_of: dict[str, list[Hit]] = {}
    passed = 0
    if searcher is not None:
        queries = list(dict.fromkeys(ex.retrieval_query for ex, _ in selected if ex.context is None))
        log.info("retrieving the top-%d chunks of %d queries from %s", cfg.k, len(queries), cfg.index)
        found, passed = retrieve(searcher, queries, cfg.k, lambda h: held_out_hit(h, evaluated.articles))
        hits_of = dict(zip(queries, found))
        if passed:
            log.info("passed over %d chunks of SQuAD-open dev/test articles", passed)

    pending: list[_Pending] = []
    for c in counts.values():
        c.update(short_retrieval=0, examples=0, tokens=0, truncated=0, too_long=0)
    for ex, copy in selected:
        base = f"{ex.source}:{ex.id}" + (f"@{copy}" if copy else "")
        if ex.context is not None:
            backgrounds = [(ex.context, "own", None)]
        else:
            hits = hits_of[ex.retrieval_query]
            if len(hits) < cfg.k:
                counts[ex.source]["short_retrieval"] += 1
            backgrounds = [(chunk_text(h), "retrieved", h.id) for h in hits]
        for j, (background, kind, pid) in enumerate(backgrounds):
            line_id = f"{base}#{j}"
            if ex.category == "summarize":
                t = summarize
            elif cfg.randomize_markers:
                # Seeded by the example's id: its markers do not depend on what else is in the mixture.
                t = randomized(template, random.Random(f"{cfg.seed}:markers:{line_id}"))
            else:
                t = template
            pending.append(_Pending(ex, line_id, t, background, kind, pid))

    lines = []
    for fitted, p in zip(_fit(pending, tokenizer, cfg.max_length), pending):
        c = counts[p.ex.source]
        if fitted is None:
            c["too_long"] += 1
            continue
        prompt, target, truncated, n_tokens = fitted
        c["examples"] += 1
        c["tokens"] += n_tokens
        c["truncated"] += truncated
        lines.append({"id": p.id, "source": p.ex.source, "category": p.ex.category, "prompt": prompt, "target": target,
                      "background": p.kind, "passage_id": p.passage_id, "truncated": truncated})
    random.Random(f"{cfg.seed}:shuffle").shuffle(lines)
    if not lines:
        raise ValueError("no training example left (every one was too long for --max-length, or no source had examples)")
    for spec, c in counts.items():
        if c["too_long"]:
            log.warning("%s: skipped %d training examples whose target and prompt exceed --max-length %d without a "
                        "Background", spec, c["too_long"], cfg.max_length)

    totals = {key: sum(c[key] for c in counts.values()) for key in _COUNTS}
    summary = {
        "examples": len(lines),
        "output": str(out_path.resolve()),
        "sources": counts,
        "totals": totals,
        "index": str(Path(cfg.index).resolve()) if searcher is not None and cfg.index else None,
        "query_encoder": cfg.query_encoder,
        "k": cfg.k,
        "template": {"name": template.name, "version": template.version},
        "randomize_markers": cfg.randomize_markers,
        "max_length": cfg.max_length,
        "tokenizer": cfg.tokenizer,
        "seed": cfg.seed,
        "leakage": {
            "checked": evaluated.checked,
            "not_checked": evaluated.missing,
            "dropped": totals["leaked"],
            "dropped_by_readers": sum(sum(c["dropped"].values()) for c in counts.values()),
            "held_out_chunks_passed_over": passed,
        },
        "config": dataclasses.asdict(cfg),
    }
    write_jsonl(out_path, progress_bar(lines, desc="write", unit="example"))
    atomic_write_json(sum_path, summary)
    log.info("%d training examples from %d sources -> %s (%d truncated, %d too long)", len(lines), len(cfg.sources),
             out_path, totals["truncated"], totals["too_long"])
    return summary
