"""Evaluation tasks: which questions are asked, which template asks them, how they are scored.

    from radit.eval.tasks import get_task
    task = get_task("nq-open", data_dir="../shared/data")
    examples = task.load(limit=100)
    demos = task.demonstrations(5, examples[0])

Each task reads its public data set in the original format (see `../shared/data/README.md`) from a
data folder: `data_dir`, else `$RADIT_DATA`, else `../shared/data` relative to the working directory.
`squad-open` reads the bundled quickstart splits and needs no data folder; `qa-file:PATH` evaluates
any question file that `radit.data.qa.load_questions` reads (`.jsonl`, `.json`, DPR `.tsv`).

In-context demonstrations always come from questions that are never evaluated:

| task | evaluated | demonstrations |
|---|---|---|
| squad-open | bundled test split | bundled train split |
| nq-open | `nq_open/test.jsonl` (the split papers call test) | `nq_open/dev.tsv` (DPR dev, drawn from NQ train) |
| triviaqa | `triviaqa/dev.tsv` minus its first 64 rows | those first 64 rows |
| hotpotqa | `hotpotqa/dev.json` minus its first 64 records | those first 64 records |
| fever | `fever/dev.jsonl` minus its first 64 labelled claims | those 64 claims |
| mmlu | `mmlu/data/test/*.csv` | the same subject's `mmlu/data/dev/*.csv`, in file order (MMLU's 5-shot convention) |
| qa-file:PATH | PATH | `--demos FILE` (required for shots > 0) |

TriviaQA, HotpotQA and FEVER ship only one labelled split here, so a fixed head of it (64 rows,
`HELD_OUT`) is set aside as the demonstration pool whatever `--shots` is, and the evaluated set does
not change with the number of shots. A demonstration pool other than MMLU's is shuffled once with a
fixed seed, and the first n of it are the n-shot demonstrations: the same for every question and run.
The seed is the task's name, or for every `qa-file:` task the same one, so that copying, moving or
renaming a question file leaves its demonstrations (and its scores) as they were.

With `on_error="skip"` (`--on-error skip`) every reader drops bad records, counts them and logs one
warning per file instead of stopping at the first; problems of a whole file always stop.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from radit.answers import gold_answers
from radit.data import folder
from radit.data.folder import require
from radit.data.qa import Question, load_questions
from radit.data.records import (
    SURROGATE_FIX,
    Malformed,
    ReadStats,
    RecordError,
    bad,
    check_on_error,
    decode_utf8,
    parse_json,
    read_rows,
    surrogate_problem,
)

log = logging.getLogger(__name__)

HELD_OUT = 64
"""Rows at the head of a single-split data set that are kept as demonstrations, never evaluated."""
DEMO_SEED = 0
QA_FILE_SEED = "qa-file"
"""Shuffles the demonstrations of every `qa-file:` task: a seed that holds the file's path would
change them (and the scores) when the file is renamed or moved."""
QA_FILE_PREFIX = "qa-file:"
MMLU_LETTERS = ("A", "B", "C", "D")
FEVER_LABELS = {"SUPPORTS": "true", "REFUTES": "false"}
FEVER_DROPPED = "NOT ENOUGH INFO"


@dataclasses.dataclass
class Example:
    """One evaluation question with its gold answer(s)."""

    id: str
    question: str
    answers: list[str]
    """Gold answer strings (for a choice task: `[label]`)."""
    choices: dict[str, str] | None = None
    """Multiple-choice options by label (MMLU: {"A": ..., "D": ...}); None otherwise."""
    label: str | None = None
    """The correct option of a choice task (MMLU letter, FEVER "true"/"false"); None for open answers."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Anything else the file gives (MMLU `subject`, HotpotQA `type`, ...)."""
    answer_type: Literal["string", "regex"] = "string"
    """How `answers` match: as text (SQuAD normalisation) or as regular expressions (CuratedTREC)."""

    @property
    def gold_answers(self) -> list[str | re.Pattern[str]]:
        """The answers as `radit.eval.metrics` scores them (compiled patterns for regex answers)."""
        return gold_answers(self.answers, self.answer_type)


@dataclasses.dataclass
class Task:
    """A named evaluation: its reader, prompt template, answer kind and metric."""

    name: str
    kind: Literal["generative", "choice"]
    """generative: the LM decodes an answer; choice: it picks one of the template's answer options."""
    template: str
    """Default prompt template name (`radit.prompts.TEMPLATES`)."""
    metric: Literal["em_f1", "accuracy"]
    source: str
    """What is evaluated (a file, folder or bundled split), for the run's records."""
    read: Callable[[], list[Example]] = dataclasses.field(repr=False)
    """All evaluated examples in file order."""
    demo_pool: Callable[[Example | None], list[Example]] = dataclasses.field(repr=False)
    """The ordered demonstration pool for an example (MMLU: per subject)."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """What the reader changed about the data set (e.g. FEVER's dropped NOT ENOUGH INFO claims)."""

    def load(self, limit: int | None = None) -> list[Example]:
        """The first `limit` evaluated examples (all when None), in file order."""
        if limit is not None and limit < 0:
            raise ValueError(f"--limit must be >= 0, got {limit}")
        examples = self.read()
        return examples if limit is None else examples[:limit]

    def demonstrations(self, n: int, example: Example | None = None) -> list[Example]:
        """The n in-context demonstrations for `example` (deterministic; never from the evaluated split)."""
        if n == 0:
            return []
        pool = self.demo_pool(example)
        if n > len(pool):
            raise ValueError(f"--shots {n}: task {self.name} has only {len(pool)} demonstrations"
                             + (f" for subject {example.meta.get('subject')!r}" if example and "subject" in example.meta else ""))
        if regex := next((d for d in pool[:n] if d.answer_type == "regex"), None):
            # A demonstration shows its first answer to the model, which a pattern is not.
            raise ValueError(f"demonstration {regex.id} of task {self.name} has regex answers; "
                             "give --demos FILE with plain-text answers")
        return pool[:n]


# --------------------------------------------------------------------------------------------------
# Data folder
# --------------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The folder of the public evaluation sets (`radit.data.folder.resolve_data_dir`)."""
    return folder.resolve_data_dir(
        data_dir,
        holds="the public evaluation sets in their original formats: nq_open/{test.jsonl,dev.tsv} and "
        "triviaqa/dev.tsv (DPR's releases, github.com/facebookresearch/DPR), hotpotqa/dev.json, fever/dev.jsonl, "
        "mmlu/data/{dev,test}/*.csv (github.com/hendrycks/test)",
        instead="evaluate any question file with --task qa-file:PATH",
    )


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def _from_question(q: Question) -> Example:
    return Example(id=q.id, question=q.question, answers=list(q.answers), meta=dict(q.meta), answer_type=q.answer_type)


def read_qa(spec: str, limit: int | None = None, *, on_error: str = "error", answers_are_regex: bool = False,
            stats: ReadStats | None = None) -> list[Example]:
    """Open-domain QA questions through `load_questions` (file/line errors, empty questions rejected);
    `on_error`, `answers_are_regex` and `stats` as there."""
    questions = load_questions(spec, limit=limit, require_answers=True, on_error=on_error,
                               answers_are_regex=answers_are_regex, stats=stats)
    return [_from_question(q) for q in questions]


def _skip(error: RecordError, on_error: str, stats: ReadStats) -> None:
    """Count a bad record under on_error="skip"; raise it otherwise."""
    if on_error == "error" or error.reason is None:
        raise error
    stats.skip(error)


def _mmlu_example(row: list[str], where: str, subject: str, index: int) -> Example:
    if len(row) != 6:
        problem = f"{len(row)} columns, expected 6 (question,A,B,C,D,answer)"
        raise bad(where, "row", problem, "MMLU csv files have no header; quote cells holding commas", "bad_row")
    question, *options, answer = row
    answer = answer.strip()
    if answer not in MMLU_LETTERS:
        raise bad(where, "answer", f"{answer!r} is not one of {', '.join(MMLU_LETTERS)}", "fix the answer letter", "bad_answer")
    if not question.strip():
        raise bad(where, "question", "empty", "remove the row or fill in the question", "empty_question")
    return Example(id=f"{subject}-{index}", question=question.strip(), answers=[answer],
                   choices=dict(zip(MMLU_LETTERS, (o.strip() for o in options))), label=answer, meta={"subject": subject})


def read_mmlu_csv(path: Path, on_error: str = "error", stats: ReadStats | None = None) -> list[Example]:
    """One MMLU subject file: header-less `question,A,B,C,D,answer` rows (a quoted cell may span
    lines). A row's id counts the file's rows, bad ones too, so that skipping one moves no other."""
    subject = path.stem.rsplit("_", 1)[0]  # astronomy_test.csv -> astronomy
    text = decode_utf8(path.read_bytes(), str(path))
    file_stats = ReadStats()
    examples, index = [], 0
    try:
        for start, row in read_rows(io.StringIO(text, newline="\n"), ","):
            if not any(cell.strip() for cell in row):
                continue
            try:
                examples.append(_mmlu_example(row, f"{path}:{start}", subject, index))
            except RecordError as e:
                _skip(e, on_error, file_stats)
            index += 1
    except Malformed as m:  # a quote left open to the end of the file
        raise m.at(f"{path}:{m.pos}", field="row", whole_file=True) from None
    _done(file_stats, len(examples), stats, str(path))
    return examples


def _done(file_stats: ReadStats, kept: int, stats: ReadStats | None, source: str) -> None:
    """Warn once about a file's skipped records and add its counts to the caller's `stats`."""
    file_stats.kept = kept
    file_stats.warn(log, source)
    if stats is not None:
        stats.add(file_stats)


def _fever_example(line: str, where: str, default_id: str) -> Example | None:
    """One FEVER claim as a true/false question; None for a NOT ENOUGH INFO claim."""
    try:
        rec = parse_json(line)
    except Malformed as m:
        raise m.at(where) from None
    if not isinstance(rec, dict):
        raise bad(where, "record", f"a JSON {type(rec).__name__}, not an object", "write one object per claim", "not_an_object")
    label = rec.get("label")
    if label == FEVER_DROPPED:
        return None
    if label not in FEVER_LABELS:
        valid = ", ".join([*FEVER_LABELS, FEVER_DROPPED])
        raise bad(where, "label", f"{label!r} is not one of {valid}", "fix the label or remove the claim", "bad_label")
    claim = rec.get("claim")
    if not isinstance(claim, str) or not claim.strip():
        raise bad(where, "claim", "missing or empty", "remove the record or fill in the claim", "empty_question")
    if problem := surrogate_problem(claim):
        raise bad(where, "claim", problem, SURROGATE_FIX, "unpaired_surrogate")
    answer = FEVER_LABELS[label]
    return Example(id=str(rec.get("id", default_id)), question=claim.strip(), answers=[answer], label=answer)


def read_fever(path: Path, on_error: str = "error", stats: ReadStats | None = None) -> tuple[list[Example], int]:
    """FEVER claims (`{id, label, claim, ...}` per line) as true/false questions; NOT ENOUGH INFO is dropped.

    Returns the examples and the number of dropped claims.
    """
    text = decode_utf8(path.read_bytes(), str(path))
    file_stats = ReadStats()
    examples, dropped = [], 0
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            example = _fever_example(line, f"{path}:{n}", f"{path.stem}-{n}")
        except RecordError as e:
            _skip(e, on_error, file_stats)
            continue
        if example is None:
            dropped += 1
        else:
            examples.append(example)
    _done(file_stats, len(examples), stats, str(path))
    return examples, dropped


def _shuffled(examples: list[Example], seed: str) -> list[Example]:
    pool = list(examples)
    random.Random(f"{seed}:{DEMO_SEED}").shuffle(pool)
    return pool


def _split_head(examples: list[Example], name: str) -> tuple[list[Example], list[Example]]:
    """(evaluated, demonstration pool): the first HELD_OUT examples are the pool."""
    if len(examples) <= HELD_OUT:
        raise ValueError(f"task {name}: {len(examples)} examples, but the first {HELD_OUT} are held out as "
                         "demonstrations; give a larger file")
    return examples[HELD_OUT:], _shuffled(examples[:HELD_OUT], name)


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


def _qa_task(name: str, source: str, demos_spec: str | None, held_out: bool = False, *, on_error: str = "error",
             answers_are_regex: bool = False, seed: str | None = None) -> Task:
    """An open-QA task over a `load_questions` file; demos from another file, or its held-out head.

    `answers_are_regex` applies to `source` only: demonstrations show their answer to the model, so
    they need plain-text ones. `seed` shuffles the demonstrations (default: the task's name).
    """
    seed = name if seed is None else seed

    @functools.cache
    def split() -> tuple[list[Example], list[Example]]:  # (evaluated, held-out head)
        examples = read_qa(source, on_error=on_error, answers_are_regex=answers_are_regex)
        return _split_head(examples, name) if held_out else (examples, [])

    @functools.cache
    def pool() -> list[Example]:  # read only when shots > 0
        if held_out:
            return split()[1]
        if demos_spec is None:
            raise ValueError(f"task {name} has no demonstration split; give --demos FILE (a question file) for --shots > 0")
        return _shuffled(read_qa(demos_spec, on_error=on_error), seed)

    return Task(name, "generative", "qa", "em_f1", source, read=lambda: split()[0], demo_pool=lambda example: pool())


def squad_open(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    return _qa_task("squad-open", "quickstart:squad-open/test", "quickstart:squad-open/train", on_error=on_error)


def nq_open(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    root = resolve_data_dir(data_dir) / "nq_open"
    return _qa_task("nq-open", str(require(root / "test.jsonl", "NQ-open test")), str(require(root / "dev.tsv", "NQ-open dev")),
                    on_error=on_error)


def triviaqa(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    path = require(resolve_data_dir(data_dir) / "triviaqa" / "dev.tsv", "TriviaQA dev")
    return _qa_task("triviaqa", str(path), None, held_out=True, on_error=on_error)


def hotpotqa(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    path = require(resolve_data_dir(data_dir) / "hotpotqa" / "dev.json", "HotpotQA dev")
    return _qa_task("hotpotqa", str(path), None, held_out=True, on_error=on_error)


def fever(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    path = require(resolve_data_dir(data_dir) / "fever" / "dev.jsonl", "FEVER dev")
    notes: list[str] = []

    @functools.cache
    def split() -> tuple[list[Example], list[Example]]:
        examples, dropped = read_fever(path, on_error)
        if dropped:
            # KILT's FEVER (the paper's) is the two-way SUPPORTS / REFUTES task.
            notes.append(f"dropped {dropped} {FEVER_DROPPED} claims (KILT FEVER is two-way)")
            log.info("%s: %s", path, notes[-1])
        return _split_head(examples, "fever")

    return Task("fever", "choice", "fever", "accuracy", str(path), read=lambda: split()[0],
                demo_pool=lambda example: split()[1], notes=notes)


def mmlu(data_dir: str | Path | None = None, on_error: str = "error") -> Task:
    root = require(resolve_data_dir(data_dir) / "mmlu" / "data", "MMLU data folder")
    test_dir, dev_dir = require(root / "test", "MMLU test folder"), require(root / "dev", "MMLU dev folder")

    @functools.cache
    def read() -> list[Example]:
        files = sorted(test_dir.glob("*_test.csv"))
        if not files:
            raise FileNotFoundError(f"{test_dir}: no *_test.csv files")
        return [ex for path in files for ex in read_mmlu_csv(path, on_error)]

    @functools.cache
    def dev(subject: str) -> list[Example]:
        return read_mmlu_csv(require(dev_dir / f"{subject}_dev.csv", f"MMLU dev file of {subject}"), on_error)

    def pool(example: Example | None) -> list[Example]:
        if example is None or "subject" not in example.meta:
            raise ValueError("mmlu demonstrations are per subject: pass the example being asked")
        return dev(example.meta["subject"])

    return Task("mmlu", "choice", "mmlu", "accuracy", str(test_dir), read=read, demo_pool=pool)


TASKS: dict[str, Callable[[str | Path | None, str], Task]] = {
    "squad-open": squad_open,
    "nq-open": nq_open,
    "triviaqa": triviaqa,
    "hotpotqa": hotpotqa,
    "mmlu": mmlu,
    "fever": fever,
}


def get_task(name: str, data_dir: str | Path | None = None, demos: str | None = None, *, on_error: str = "error",
             answers_are_regex: bool = False) -> Task:
    """The task called `name` (a `TASKS` key or `qa-file:PATH`), reading from `data_dir`.

    Args:
        demos: a question file of demonstrations; required for `qa-file:` tasks with shots > 0 and
            overrides the demonstration pool of the other QA tasks.
        on_error: `error` stops at the first bad record of any file the task reads; `skip` drops bad
            records, counts them and logs one warning per file.
        answers_are_regex: the answers of a `qa-file:` task's records without an `answer_type` are
            regular expressions (DPR's CuratedTREC tsv).
    """
    check_on_error(on_error)
    if name.startswith(QA_FILE_PREFIX):
        path = name[len(QA_FILE_PREFIX):]
        if not path:
            raise ValueError(f"--task {name}: give the question file after {QA_FILE_PREFIX!r}, e.g. qa-file:questions.jsonl")
        return _qa_task(name, path, demos, on_error=on_error, answers_are_regex=answers_are_regex, seed=QA_FILE_SEED)
    if answers_are_regex:
        raise ValueError(f"--answers-are-regex applies to {QA_FILE_PREFIX}PATH tasks; {name} reads its own answers")
    if name not in TASKS:
        raise ValueError(f"--task {name!r} is unknown; valid: {', '.join(TASKS)}, or {QA_FILE_PREFIX}PATH for a question file")
    task = TASKS[name](data_dir, on_error)
    if demos is not None:
        if task.kind != "generative":
            raise ValueError(f"--demos applies to open-QA tasks; {name} draws its own demonstrations")
        pool = functools.cache(lambda: _shuffled(read_qa(demos, on_error=on_error), name))
        task.demo_pool = lambda example: pool()
    return task


def task_slug(name: str) -> str:
    """A file-name-safe form of a task name (`qa-file:dir/q.jsonl` -> `qa-file-q`)."""
    if name.startswith(QA_FILE_PREFIX):
        stem = Path(name[len(QA_FILE_PREFIX):]).name.split(".")[0]
        return f"qa-file-{stem}"
    return name
