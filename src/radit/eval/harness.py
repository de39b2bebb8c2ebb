"""Task evaluation: retrieve, answer with the retrieval-augmented LM, score, one JSON line per question.

    radit eval --task nq-open --index runs/index --mode replug --k 10 --shots 5 --limit 500
    radit eval --task mmlu --mode closed-book --shots 5

The run directory (`--output`, default `runs/eval/{task}-{mode}-k{k}-{shots}shot`) gets:

- `config.yaml`: the resolved config, written first;
- `predictions.jsonl`: one line per question (question, gold, prediction, candidates and their mixed
  log-probabilities, retrieved passage ids, p_R weights, per-chunk answers, em/f1 or correct),
  flushed line by line. A killed run resumes: a rerun skips the ids already there. A rerun with
  other settings (anything but --limit, --device, --search-batch-size) is an error unless --overwrite;
- `metrics.json`: EM/F1 (open QA) or accuracy (choice tasks) x 100 over the evaluated questions, n,
  truncated prompts, seconds, and the p_R temperature with where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from radit.artifacts import atomic_write_json
from radit.config import load_yaml, save_yaml, to_dict
from radit.eval.metrics import exact_match, f1_score
from radit.eval.tasks import Example, Task, get_task, task_slug
from radit.prompts import PromptTemplate, get_template

log = logging.getLogger(__name__)

MODES = ("replug", "concat", "closed-book", "top1")


@dataclasses.dataclass
class EvalConfig:
    """`radit eval`: answer a task's questions with the retrieval-augmented LM and score the answers."""

    task: str = "squad-open"
    """squad-open, nq-open, triviaqa, hotpotqa, mmlu, fever, or qa-file:PATH (any question file that
    `radit eval-retrieval --questions` reads)."""
    model: str = "smollm2-135m-instruct"
    """The LM: a folder, a packaged model name or a hub name."""
    index: str | None = None
    """Index directory written by `radit index`; needed unless --mode closed-book."""
    query_encoder: str | None = None
    """A fine-tuned query encoder folder to search the index with (dense indexes only)."""
    mode: Literal["replug", "concat", "closed-book", "top1"] = "replug"
    """replug: the parallel ensemble of Eq. 2 over the top-k chunks; concat: all k chunks in one
    Background; top1: the best chunk only; closed-book: no retrieval."""
    k: int = 10
    """Chunks retrieved per question (the paper: 10 at inference)."""
    shots: int = 0
    """In-context demonstrations (the paper: 0 and 5), drawn from a split that is not evaluated."""
    demos: str | None = None
    """A question file of demonstrations: required for qa-file tasks with --shots > 0, and replaces
    the demonstration pool of the other open-QA tasks."""
    scoring: Literal["nll", "nll_token", "nll_char", "nll_comp"] = "nll"
    """How an answer is scored under a chunk before mixing (App. B)."""
    temperature: float | None = None
    """p_R temperature: softmax(s/T) over the top-k. Default: the index's encoder temperature (its
    manifest), 1.0 for a BM25 index."""
    template: str | None = None
    """Prompt template (radit.prompts.TEMPLATES); default: the task's own (qa, mmlu, fever)."""
    limit: int | None = None
    """Evaluate only the first N questions (raising it later resumes the same run)."""
    output: str = "runs/eval/{task}-{mode}-k{k}-{shots}shot"
    """Run directory; {task}, {mode}, {k}, {shots} are filled in."""
    data_dir: str | None = None
    """Folder of the public evaluation sets (nq_open/, triviaqa/, hotpotqa/, mmlu/, fever/);
    default $RADIT_DATA, else ../shared/data."""
    device: str = "auto"
    """Torch device for the LM and the query encoder."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """LM compute dtype."""
    max_new_tokens: int = 32
    """Longest generated answer (open-QA tasks)."""
    search_batch_size: int = 128
    """Questions per retrieval call."""
    overwrite: bool = False
    """Delete the predictions in --output and start over (needed when it holds a run with other settings)."""

    def __post_init__(self) -> None:
        for name in ("k", "max_new_tokens", "search_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (or unset for all questions), got {self.limit}")
        if self.temperature is not None and not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"--temperature must be a finite number > 0, got {self.temperature}")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r} is unknown; valid: {', '.join(MODES)}")
        if self.mode != "closed-book" and not self.index:
            raise ValueError(f"--index is needed for --mode {self.mode}; build one with `radit index`, "
                             "or evaluate without retrieval with --mode closed-book")
        if self.mode == "closed-book" and self.query_encoder:
            raise ValueError("--query-encoder needs retrieval; it does not apply to --mode closed-book")


# Settings that may change between a run and its resumption: they do not change any prediction.
RESUMABLE_FIELDS = frozenset({"limit", "device", "search_batch_size", "overwrite", "output"})

AnswerFns = dict[str, Callable[..., Any]]
"""{"generative": answer_generative, "choice": answer_choice}, with `radit.augment`'s signatures."""


def default_answer_fns() -> AnswerFns:
    from radit.augment import answer_choice, answer_generative

    return {"generative": answer_generative, "choice": answer_choice}


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------


def resolve_output(cfg: EvalConfig) -> Path:
    try:
        return Path(cfg.output.format(task=task_slug(cfg.task), mode=cfg.mode, k=cfg.k, shots=cfg.shots))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"--output {cfg.output!r}: bad placeholder ({e}); use {{task}}, {{mode}}, {{k}}, {{shots}}") from None


def resolve_template(cfg: EvalConfig, task: Task, first: Example | None) -> PromptTemplate:
    try:
        template = get_template(cfg.template or task.template)
    except KeyError as e:
        raise ValueError(f"--template: {e.args[0]}") from None
    if task.kind == "choice" and template.answer_options is None:
        raise ValueError(f"--template {template.name}: task {task.name} is multiple choice and needs a template "
                         f"with answer options (e.g. its default, {task.template})")
    has_choices = first is not None and first.choices is not None
    if (template.choices is not None) != has_choices or (has_choices and set(first.choices) != set(template.choice_keys)):
        raise ValueError(f"--template {template.name} does not fit task {task.name}'s questions "
                         f"(choices {sorted(first.choices) if has_choices else 'none'}); use {task.template}")
    return template


def resolve_temperature(cfg: EvalConfig) -> tuple[float | None, str]:
    """The p_R temperature and where it came from: the flag, the index's encoder, or the BM25 default."""
    if cfg.temperature is not None:
        return cfg.temperature, "--temperature"
    if cfg.mode == "closed-book":
        return None, "closed-book: no retrieval weights"
    from radit.retriever.index import read_manifest

    manifest, _ = read_manifest(cfg.index)
    encoder = manifest.get("encoder")
    if manifest.get("backend") == "dense" and encoder and "score_temperature" in encoder:
        return float(encoder["score_temperature"]), f"index manifest ({cfg.index}): encoder {encoder.get('query_model')} score_temperature"
    # BM25 scores are unnormalised and spread over several units, so T = 1 already gives sharp weights.
    return 1.0, "default for a BM25 index (no encoder temperature)"


def check_resumable(out: Path, cfg: EvalConfig) -> None:
    """An error if `out` holds a run with settings that change predictions, unless --overwrite."""
    saved_path, preds = out / "config.yaml", out / "predictions.jsonl"
    if cfg.overwrite:
        preds.unlink(missing_ok=True)
        (out / "metrics.json").unlink(missing_ok=True)
        return
    if not saved_path.is_file():
        if preds.is_file():
            raise ValueError(f"{out}: has predictions.jsonl but no config.yaml, so it cannot be checked for resuming; "
                             "pass --overwrite to start over, or choose another --output")
        return
    saved, current = load_yaml(saved_path), to_dict(cfg)
    diff = [f"{key}: {saved.get(key)!r} -> {current.get(key)!r}" for key in sorted(set(saved) | set(current))
            if key not in RESUMABLE_FIELDS and saved.get(key) != current.get(key)]
    if diff:
        raise ValueError(f"{out}: holds a run with other settings ({'; '.join(diff)}); pass --overwrite to start over, "
                         "or choose another --output")


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """The records of a (possibly killed) run by id. A torn last line (killed mid-write) is cut off."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line (the run was killed while writing it)", path)
        with open(path, "r+b") as f:
            f.truncate(keep)
        data = data[:keep]
    records: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg}); fix or delete the line, or pass --overwrite") from None
        if not isinstance(rec, dict) or "id" not in rec:
            raise ValueError(f"{path}:{n}: not a prediction record (no id); delete the line, or pass --overwrite")
        records.setdefault(str(rec["id"]), rec)
    return records


def score_prediction(task: Task, example: Example, prediction: str) -> dict[str, float]:
    """{"em", "f1"} for open QA, {"correct"} for choice tasks (the label, compared exactly)."""
    if task.kind == "choice":
        return {"correct": float(prediction.strip() == example.label)}
    return {"em": exact_match(prediction, example.answers), "f1": f1_score(prediction, example.answers)}


def summarize(task: Task, records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], str]:
    """Mean scores x 100 over `records`, and the name of the primary metric."""
    n = max(len(records), 1)
    if task.metric == "accuracy":
        return {"accuracy": 100 * sum(r["correct"] for r in records) / n}, "accuracy"
    return {"em": 100 * sum(r["em"] for r in records) / n, "f1": 100 * sum(r["f1"] for r in records) / n}, "em"


def demonstration(example: Example) -> tuple:
    """An Example as a `PromptTemplate.render` demonstration: (question, answer[, choices])."""
    answer = example.label if example.label is not None else example.answers[0]
    return (example.question, answer, example.choices) if example.choices is not None else (example.question, answer)


def _finite(xs: Sequence[float] | None) -> list[float | None]:
    # -inf is a real log-probability (zero mass) but not valid JSON; None keeps the file standard.
    return [float(x) if math.isfinite(x) else None for x in (xs or [])]


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig, answer_fns: AnswerFns | None = None, lm: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """The `radit eval` stage; returns what it writes to metrics.json.

    Args:
        cfg: the evaluation settings.
        answer_fns: replaces `radit.augment`'s answer functions (tests; other inference methods).
        lm: an already loaded (model, tokenizer) pair to use instead of loading `cfg.model`.
    """
    t_start = time.time()
    task = get_task(cfg.task, data_dir=cfg.data_dir, demos=cfg.demos)
    out = resolve_output(cfg)
    examples = task.load(cfg.limit)
    template = resolve_template(cfg, task, examples[0] if examples else None)
    resolved = dataclasses.replace(cfg, output=str(out), template=template.name)
    if cfg.mode == "closed-book" and cfg.index:
        log.warning("--index %s is not used with --mode closed-book", cfg.index)
    temperature, temperature_source = resolve_temperature(cfg)

    out.mkdir(parents=True, exist_ok=True)
    check_resumable(out, resolved)
    save_yaml(resolved, out / "config.yaml")
    preds_path = out / "predictions.jsonl"
    done = read_predictions(preds_path)
    pending = [ex for ex in examples if ex.id not in done]
    resumed = len(examples) - len(pending)
    if resumed:
        log.info("%s: %d of %d questions already answered; resuming", out, resumed, len(examples))

    if pending:
        hits_all: list[list[Any]] = [[] for _ in pending]
        if cfg.mode != "closed-book":
            from radit.retriever.search import load_searcher, search_batched

            searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device)
            hits_all = search_batched(searcher, [ex.question for ex in pending], cfg.k, batch_size=cfg.search_batch_size)
        if lm is None:
            from radit.lm.model import load_lm

            lm = load_lm(cfg.model, device=cfg.device, dtype=cfg.dtype)
        model, tokenizer = lm
        fns = answer_fns or default_answer_fns()
        common = dict(mode=cfg.mode, temperature=temperature or 1.0, scoring=cfg.scoring, k=cfg.k, dtype=cfg.dtype)

        with open(preds_path, "a", encoding="utf-8") as f:
            bar = tqdm(list(zip(pending, hits_all)), desc=f"eval {task.name}", unit="q")
            running = 0.0  # this session's score so far, for the progress bar
            for i, (example, hits) in enumerate(bar, 1):
                t0 = time.time()
                demos = [demonstration(d) for d in task.demonstrations(cfg.shots, example)]
                if task.kind == "generative":
                    pred = fns["generative"](model, tokenizer, example.question, hits, template,
                                             demonstrations=demos, max_new_tokens=cfg.max_new_tokens, **common)
                else:
                    pred = fns["choice"](model, tokenizer, example.question, example.choices, hits, template,
                                         demonstrations=demos, **common)
                # Backgrounds cut to fit the context, as the answer function reports them (if it does).
                truncated = getattr(pred, "truncated", None)
                rec = {
                    "id": example.id,
                    "question": example.question,
                    "gold": example.answers,
                    **({"choices": example.choices} if example.choices is not None else {}),
                    "prediction": pred.answer,
                    **score_prediction(task, example, pred.answer),
                    "candidates": list(pred.candidates),
                    "mixed": _finite(pred.mixed),
                    "chunk_answers": list(pred.chunk_answers),
                    "weights": _finite(pred.weights),
                    "passage_ids": list(pred.passage_ids),
                    "retrieved_ids": [h.id for h in hits],
                    "retrieval_scores": _finite([h.score for h in hits]),
                    "truncated": None if truncated is None else int(truncated),
                    "seconds": round(time.time() - t0, 4),
                }
                # One line per question, flushed: a killed run loses at most the question in flight.
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                f.flush()
                done[example.id] = rec
                running += rec.get("em", rec.get("correct", 0.0))
                bar.set_postfix({"em" if task.kind == "generative" else "acc": f"{100 * running / i:.1f}"})

    records = [done[ex.id] for ex in examples]
    metrics, primary = summarize(task, records)
    truncated_counts = [r["truncated"] for r in records if r.get("truncated") is not None]
    report = {
        "task": task.name,
        "source": task.source,
        "model": cfg.model,
        "index": cfg.index if cfg.mode != "closed-book" else None,
        "query_encoder": cfg.query_encoder,
        "mode": cfg.mode,
        "k": cfg.k,
        "shots": cfg.shots,
        "scoring": cfg.scoring,
        "template": f"{template.name} v{template.version}",
        "n": len(records),
        "metrics": metrics,
        "primary_metric": primary,
        "temperature": {"value": temperature, "source": temperature_source},
        "truncated_prompts": sum(truncated_counts) if truncated_counts else None,
        "questions_with_truncation": sum(c > 0 for c in truncated_counts) if truncated_counts else None,
        "seconds": round(sum(r.get("seconds", 0.0) for r in records), 2),
        "wall_seconds": round(time.time() - t_start, 2),
        "resumed": resumed,
        "notes": list(task.notes),
    }
    atomic_write_json(out / "metrics.json", report)
    log.info("%s: %s over %d questions -> %s", task.name,
             ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), len(records), out / "metrics.json")
    return report
