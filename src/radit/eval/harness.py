"""Task evaluation: retrieve, answer with the retrieval-augmented LM, score, one JSON line per question.

    radit eval --task nq-open --index runs/index --mode replug --k 10 --shots 5 --limit 500
    radit eval --task mmlu --mode closed-book --shots 5
    torchrun --nproc-per-node 8 -m radit.cli eval --task nq-open --index runs/index --mode replug --k 10

Under torchrun (or `accelerate launch`) each process answers its share of the questions that are
not answered yet, into `predictions.rank{r}.jsonl`; rank 0 then merges these into `predictions.jsonl`,
in question order, and writes the same `metrics.json` as one process would. The run directory must
be one filesystem that every process sees (as for training's checkpoints). A run killed mid-way
resumes on any number of processes: answers are keyed by question id, and a rerun first merges the
per-process files a killed run left.

The run directory (`--output`, default `runs/eval/{task}-{mode}-k{k}-{shots}shot`) gets:

- `config.yaml`: the resolved config (template name, dtype), written once every input has been checked;
- `predictions.jsonl`: one line per question (question, gold, prediction, candidates and their mixed
  log-probabilities, retrieved passage ids, p_R weights, per-chunk answers, each candidate's score
  under each chunk before mixing, em/f1 or correct),
  flushed after each batch of questions (`--batch-size`). A killed run resumes: a rerun skips the ids
  already there. A rerun with other settings (anything but --limit, --device, --search-batch-size,
  --batch-size) is an error unless --overwrite;
- `metrics.json`: EM/F1 (open QA) or accuracy (choice tasks) x 100 over the evaluated questions, n,
  truncated prompts, seconds, the number of processes, and the p_R temperature with where it came from.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from radit import distributed
from radit.artifacts import atomic_write_json, rank_part, rank_parts, write_jsonl
from radit.config import EvalConfig, InferenceConfig
from radit.config_io import load_yaml, save_yaml, to_dict
from radit.data.qa import sample_in_order
from radit.eval.metrics import exact_match, f1_score
from radit.eval.tasks import Example, Task, get_task, task_slug
from radit.prompts import PromptTemplate, resolve_template

log = logging.getLogger(__name__)

# Settings that may change between a run and its resumption: they change no prediction (beyond float rounding).
RESUMABLE_FIELDS = frozenset({"limit", "device", "search_batch_size", "batch_size", "overwrite", "output", "on_error",
                              "verify"})
# Runs written before the inference settings became one group kept them at the top level.
_LEGACY_INFERENCE_KEYS = {"mode": "mode", "k": "k", "temperature": "retrieval_temperature", "scoring": "scoring",
                          "template": "template", "max_new_tokens": "max_new_tokens", "token_level": "token_level",
                          "dtype": "dtype"}

AnswerFns = dict[str, Callable[..., Any]]
"""{"generative": answer_generative, "choice": answer_choice, "generative_batch": answer_generative_batch},
with `radit.augment`'s signatures; "generative_batch" is optional (without it, open-QA questions are
answered one at a time)."""


def default_answer_fns() -> AnswerFns:
    from radit.augment import answer_choice, answer_generative, answer_generative_batch

    return {"generative": answer_generative, "choice": answer_choice, "generative_batch": answer_generative_batch}


# --------------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------------


def resolve_output(cfg: EvalConfig) -> Path:
    inf = cfg.inference
    try:
        return Path(cfg.output.format(task=task_slug(cfg.task), mode=inf.mode, k=inf.k, shots=cfg.shots))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"--output {cfg.output!r}: bad placeholder ({e}); use {{task}}, {{mode}}, {{k}}, {{shots}}") from None


def check_template(template: PromptTemplate, task: Task, first: Example | None) -> PromptTemplate:
    """`template` if it fits the task's questions (choices or not, the same option keys), else an error."""
    has_choices = first is not None and first.choices is not None
    # A cloze template (no option list, no fixed answers) scores each option's text: choice tasks with options only.
    cloze = task.kind == "choice" and has_choices and template.choices is None and template.answer_options is None
    if task.kind == "choice" and template.answer_options is None and not cloze:
        raise ValueError(f"--template {template.name}: task {task.name} is multiple choice and needs a template "
                         f"with answer options (e.g. its default, {task.template})")
    if cloze:
        return template
    if (template.choices is not None) != has_choices or (has_choices and set(first.choices) != set(template.choice_keys)):
        raise ValueError(f"--template {template.name} does not fit task {task.name}'s questions "
                         f"(choices {sorted(first.choices) if has_choices else 'none'}); use {task.template}")
    return template


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _saved_settings(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.yaml as flat `group.key` settings; a run of an older radit keeps its inference
    settings at the top level, which are moved under `inference.`."""
    saved = dict(saved)
    inference = dict(saved.pop("inference", None) or {})
    for old, new in _LEGACY_INFERENCE_KEYS.items():
        if old in saved:
            inference.setdefault(new, saved.pop(old))
    return _flatten({**saved, "inference": inference})


def check_resumable(out: Path, cfg: EvalConfig) -> None:
    """An error if `out` holds a run with settings that change predictions, unless --overwrite.

    Reads only: nothing in `out` is touched here."""
    saved_path, preds = out / "config.yaml", out / "predictions.jsonl"
    if cfg.overwrite:
        return
    if not saved_path.is_file():
        if preds.is_file():
            raise ValueError(f"{out}: has predictions.jsonl but no config.yaml, so it cannot be checked for resuming; "
                             "pass --overwrite to start over, or choose another --output")
        return
    saved, current = _saved_settings(load_yaml(saved_path)), _flatten(to_dict(cfg))
    # A setting added to radit after the run was written counts as its default there.
    defaults = _flatten(to_dict(EvalConfig(task=cfg.task, index=cfg.index,
                                          inference=InferenceConfig(mode=cfg.inference.mode, dtype=cfg.inference.dtype))))
    diff = [f"{key}: {saved.get(key, defaults.get(key))!r} -> {current.get(key)!r}" for key in sorted(set(saved) | set(current))
            if key.split(".")[-1] not in RESUMABLE_FIELDS and saved.get(key, defaults.get(key)) != current.get(key)]
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


def merge_predictions(out: Path, order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`out`'s predictions.jsonl and its per-process files as one predictions.jsonl; the records by id.

    The merged file lists the questions in `order` (the task's), then any other records it held (a run
    with a larger --limit), in their order; a question answered twice keeps its first record
    (predictions.jsonl's, then rank 0's, ...). It is written atomically before the per-process files
    are deleted, so a kill in between leaves every answer in place, twice at worst, which the next
    merge undoes. Without per-process files nothing is written: a one-process run appends to
    predictions.jsonl itself.
    """
    path = out / "predictions.jsonl"
    records = read_predictions(path)
    parts = rank_parts(out / "predictions.jsonl")
    if not parts:
        return records
    for part in parts:
        for qid, rec in read_predictions(part).items():
            records.setdefault(qid, rec)
    position = {qid: i for i, qid in enumerate(order)}
    ids = sorted(records, key=lambda qid: position.get(qid, len(position)))  # stable: the others keep their order
    write_jsonl(path, (records[qid] for qid in ids))
    for part in parts:
        part.unlink()
    return {qid: records[qid] for qid in ids}


def score_prediction(task: Task, example: Example, prediction: str) -> dict[str, float]:
    """{"em", "f1"} for open QA, {"correct"} for choice tasks (the label, compared exactly)."""
    if task.kind == "choice":
        return {"correct": float(prediction.strip() == example.label)}
    return {"em": exact_match(prediction, example.gold_answers), "f1": f1_score(prediction, example.gold_answers)}


def summarize(task: Task, records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], str]:
    """Mean scores x 100 over `records`, and the name of the primary metric."""
    n = max(len(records), 1)
    if task.metric == "accuracy":
        return {"accuracy": 100 * sum(r["correct"] for r in records) / n}, "accuracy"
    return {"em": 100 * sum(r["em"] for r in records) / n, "f1": 100 * sum(r["f1"] for r in records) / n}, "em"


def demonstration(example: Example, template: PromptTemplate) -> tuple:
    """An Example as a `PromptTemplate.render` demonstration: (question, answer[, choices]); with a
    cloze template (no option list) the answer is the correct option's text."""
    answer = example.label if example.label is not None else example.answers[0]
    if example.choices is None:
        return example.question, answer
    if template.choices is None:
        return example.question, example.choices[answer]
    return example.question, answer, example.choices


def _finite(xs: Sequence[float] | None) -> list[float | None]:
    # -inf is a real log-probability (zero mass) but not valid JSON; None keeps the file standard.
    return [float(x) if math.isfinite(x) else None for x in (xs or [])]


def _record(task: Task, example: Example, hits: Sequence[Any], pred: Any, seconds: float) -> dict[str, Any]:
    """The predictions.jsonl line of one answered question."""
    # Backgrounds cut to fit the context, as the answer function reports them (if it does).
    truncated = getattr(pred, "truncated", None)
    return {
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
        # [prompts][candidates] log p_LM(candidate | c ∘ x) before mixing: with the weights,
        # Eq. 2 can be recomputed for another T or a smaller k without running the LM again.
        "chunk_scores": [_finite(row) for row in getattr(pred, "chunk_scores", None) or []],
        "passage_ids": list(pred.passage_ids),
        "retrieved_ids": [h.id for h in hits],
        "retrieval_scores": _finite([h.score for h in hits]),
        "truncated": None if truncated is None else int(truncated),
        "seconds": round(seconds, 4),
    }


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def run_eval(cfg: EvalConfig, answer_fns: AnswerFns | None = None, lm: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """The `radit eval` stage; returns what it writes to metrics.json.

    Everything that can fail on the user's input (task, questions, template, index, query encoder,
    model name, a run with other settings in --output) is checked before anything is written.
    Under torchrun every process checks, answers its share of the questions left and returns the
    same report; rank 0 alone writes config.yaml, the merged predictions.jsonl and metrics.json.

    Args:
        cfg: the evaluation settings.
        answer_fns: replaces `radit.augment`'s answer functions (tests; other inference methods).
        lm: an already loaded (model, tokenizer) pair to use instead of loading `cfg.model`.
    """
    from radit.runtime import resolve_device, resolve_dtype

    t_start = time.time()
    inf = cfg.inference
    task = get_task(cfg.task, data_dir=cfg.data_dir, demos=cfg.demos, on_error=cfg.on_error,
                    answers_are_regex=cfg.answers_are_regex)
    out = resolve_output(cfg)
    examples = task.load(cfg.limit)
    if cfg.sample is not None:
        examples = sample_in_order(examples, cfg.sample)
    template = check_template(resolve_template(inf.template or task.template), task, examples[0] if examples else None)
    if cfg.shots and examples:
        task.demonstrations(cfg.shots, examples[0])  # a pool too small fails now, not mid-run
    device = resolve_device(cfg.device)
    settings = dataclasses.replace(inf, template=template.name, dtype=resolve_dtype(inf.dtype, device))
    resolved = dataclasses.replace(cfg, output=str(out), inference=settings)
    if inf.mode == "closed-book" and cfg.index:
        log.warning("--index %s is not used with --mode closed-book", cfg.index)
    check_resumable(out, resolved)

    searcher = None
    if inf.mode == "closed-book":
        temperature, temperature_source = None, "closed-book: no retrieval weights"
    else:
        from radit.retriever.search import load_searcher

        searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device, verify=cfg.verify)
        if inf.retrieval_temperature is not None:
            temperature, temperature_source = inf.retrieval_temperature, "--retrieval-temperature"
        else:
            temperature, temperature_source = searcher.retrieval_temperature, searcher.retrieval_temperature_source
    if lm is None:
        from radit.models import resolve_model

        resolve_model(cfg.model)  # a wrong model name fails before the run directory is touched

    # Checked: now write. Under torchrun every process got here; rank 0 alone changes the run directory.
    distributed.init(cfg.device)
    rank, world = distributed.rank(), distributed.world_size()
    order = [ex.id for ex in examples]
    preds_path = out / "predictions.jsonl"
    distributed.barrier()  # every process has checked --output before rank 0 changes it
    done: dict[str, dict[str, Any]] = {}
    killed_parts = False  # per-process files that a killed multi-process run left (rank 0 looks)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.overwrite:
            for path in (preds_path, out / "metrics.json", *rank_parts(out / "predictions.jsonl")):
                path.unlink(missing_ok=True)
        save_yaml(resolved, out / "config.yaml")
        killed_parts = bool(rank_parts(out / "predictions.jsonl"))
        done = merge_predictions(out, order)
    # Keyed by question id, so the answered set, not the number of processes before, decides what is
    # left. The broadcast also holds the other processes until rank 0 has merged a killed run's files.
    answered = distributed.broadcast_object({qid for qid in order if qid in done})
    pending = [ex for ex in examples if ex.id not in answered]
    resumed = len(examples) - len(pending)
    if resumed:
        log.info("%s: %d of %d questions already answered; resuming", out, resumed, len(examples))
    # One process appends to predictions.jsonl itself. Several processes each write their own file,
    # merged below in question order; so does one process finishing a killed multi-process run, whose
    # merge above reordered the file (`radit report` takes its first n questions as the n evaluated).
    sharded = world > 1 or killed_parts
    mine = [pending[i] for i in distributed.shard_range(len(pending))]
    part_path = rank_part(preds_path, rank) if sharded else preds_path

    if mine:
        hits_all: list[list[Any]] = [[] for _ in mine]
        if searcher is not None:
            from radit.retriever.search import search_batched

            hits_all = search_batched(searcher, [ex.question for ex in mine], inf.k, batch_size=cfg.search_batch_size)
        if lm is None:
            from radit.lm.model import load_lm

            lm = load_lm(cfg.model, device=cfg.device, dtype=settings.dtype)
        model, tokenizer = lm
        fns = answer_fns or default_answer_fns()
        # The answer functions get the settings resolved: p_R's temperature (1.0 where nothing is mixed).
        answer_settings = dataclasses.replace(settings, retrieval_temperature=temperature or 1.0)

        # Open-QA questions are answered `batch_size` at a time (their prompts decode and are scored as
        # one batch: the same answers, faster); choice tasks, and answer functions without a batch
        # version, one at a time.
        batch_fn = fns.get("generative_batch") if task.kind == "generative" else None
        size = cfg.batch_size if batch_fn is not None else 1
        items = list(zip(mine, hits_all))

        def answer(batch: list[tuple[Example, list[Any]]]) -> list[Any]:
            demos = [[demonstration(d, template) for d in task.demonstrations(cfg.shots, ex)] for ex, _ in batch]
            if batch_fn is not None:
                return batch_fn(model, tokenizer, [ex.question for ex, _ in batch], [h for _, h in batch], template,
                                answer_settings, demonstrations=demos)
            (ex, hits), = batch
            if task.kind == "generative":
                return [fns["generative"](model, tokenizer, ex.question, hits, template, answer_settings,
                                          demonstrations=demos[0])]
            return [fns["choice"](model, tokenizer, ex.question, ex.choices, hits, template, answer_settings,
                                  demonstrations=demos[0])]

        with open(part_path, "a", encoding="utf-8") as f:
            desc = f"eval {task.name}" + (f" (rank 0's share of {len(pending)})" if world > 1 else "")
            bar = distributed.progress_bar(total=len(items), desc=desc, unit="q")
            running, answered_now = 0.0, 0  # this session's score and questions so far, for the progress bar
            for start in range(0, len(items), size):
                batch = items[start : start + size]
                t0 = time.time()
                preds = answer(batch)
                seconds = (time.time() - t0) / len(batch)  # a batch's time, shared by its questions
                for (example, hits), pred in zip(batch, preds, strict=True):
                    rec = _record(task, example, hits, pred, seconds)
                    # One line per question, flushed: a killed run loses at most the batch in flight.
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                    f.flush()
                    done[example.id] = rec
                    running += rec.get("em", rec.get("correct", 0.0))
                answered_now += len(batch)
                bar.update(len(batch))
                bar.set_postfix({"em" if task.kind == "generative" else "acc": f"{100 * running / answered_now:.1f}"})
            bar.close()

    distributed.barrier()  # every process has written its share
    if rank != 0:
        return distributed.broadcast_object(None)  # rank 0's report, below
    if sharded:
        done = merge_predictions(out, order)
    records = [done[ex.id] for ex in examples]
    metrics, primary = summarize(task, records)
    truncated_counts = [r["truncated"] for r in records if r.get("truncated") is not None]
    report = {
        "task": task.name,
        "source": task.source,
        "model": cfg.model,
        "index": cfg.index if inf.mode != "closed-book" else None,
        "query_encoder": cfg.query_encoder,
        "mode": inf.mode,
        "k": inf.k,
        "shots": cfg.shots,
        "scoring": inf.scoring,
        "template": f"{template.name} v{template.version}",
        "dtype": settings.dtype,
        "n": len(records),
        "metrics": metrics,
        "primary_metric": primary,
        "temperature": {"value": temperature, "source": temperature_source},
        "truncated_prompts": sum(truncated_counts) if truncated_counts else None,
        "questions_with_truncation": sum(c > 0 for c in truncated_counts) if truncated_counts else None,
        "seconds": round(sum(r.get("seconds", 0.0) for r in records), 2),
        "wall_seconds": round(time.time() - t_start, 2),
        "resumed": resumed,
        "processes": world,
        "skipped_records": getattr(task, "skipped", None) or None,
        "notes": list(task.notes),
    }
    atomic_write_json(out / "metrics.json", report)
    log.info("%s: %s over %d questions -> %s", task.name,
             ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()), len(records), out / "metrics.json")
    return distributed.broadcast_object(report)
