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
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import logging
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from radit.data.qa import Question, load_questions

log = logging.getLogger(__name__)

HELD_OUT = 64
"""Rows at the head of a single-split data set that are kept as demonstrations, never evaluated."""
DEMO_SEED = 0
DATA_ENV = "RADIT_DATA"
DEFAULT_DATA_DIR = "../shared/data"
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
        return pool[:n]


# --------------------------------------------------------------------------------------------------
# Data folder
# --------------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """`data_dir`, else `$RADIT_DATA`, else `../shared/data`; an error saying where to get it if missing."""
    if data_dir:
        where, path = "--data-dir", Path(data_dir)
    elif os.environ.get(DATA_ENV):
        where, path = f"${DATA_ENV}", Path(os.environ[DATA_ENV])
    else:
        where, path = "the default", Path(DEFAULT_DATA_DIR)
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder {path} ({where}) does not exist. It holds the public evaluation sets in their "
            "original formats: nq_open/{test.jsonl,dev.tsv} and triviaqa/dev.tsv (DPR's releases, "
            "github.com/facebookresearch/DPR), hotpotqa/dev.json, fever/dev.jsonl, mmlu/data/{dev,test}/*.csv "
            "(github.com/hendrycks/test). Point --data-dir (or $RADIT_DATA) at such a folder, or evaluate "
            "any question file with --task qa-file:PATH"
        )
    return path


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found in the data folder; check --data-dir (or ${DATA_ENV})")
    return path


# --------------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------------


def _from_question(q: Question) -> Example:
    return Example(id=q.id, question=q.question, answers=list(q.answers), meta=dict(q.meta))


def read_qa(spec: str, limit: int | None = None) -> list[Example]:
    """Open-domain QA questions through `load_questions` (file/line errors, empty questions rejected)."""
    return [_from_question(q) for q in load_questions(spec, limit=limit, require_answers=True)]


def read_mmlu_csv(path: Path) -> list[Example]:
    """One MMLU subject file: header-less `question,A,B,C,D,answer` rows."""
    subject = path.stem.rsplit("_", 1)[0]  # astronomy_test.csv -> astronomy
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    examples = []
    end = 0
    for row in reader:
        where, end = f"{path}:{end + 1}", reader.line_num  # a quoted cell may span lines
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 6:
            raise ValueError(f"{where}: row: {len(row)} columns, expected 6 (question,A,B,C,D,answer); "
                             "MMLU csv files have no header")
        question, *options, answer = row
        answer = answer.strip()
        if answer not in MMLU_LETTERS:
            raise ValueError(f"{where}: answer: {answer!r} is not one of {', '.join(MMLU_LETTERS)}")
        if not question.strip():
            raise ValueError(f"{where}: question: empty; remove the row or fill in the question")
        examples.append(Example(
            id=f"{subject}-{len(examples)}", question=question.strip(), answers=[answer],
            choices=dict(zip(MMLU_LETTERS, (o.strip() for o in options))), label=answer, meta={"subject": subject},
        ))
    return examples


def read_fever(path: Path) -> tuple[list[Example], int]:
    """FEVER claims (`{id, label, claim, ...}` per line) as true/false questions; NOT ENOUGH INFO is dropped.

    Returns the examples and the number of dropped claims.
    """
    examples, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: line: invalid JSON at column {e.colno}: {e.msg}") from None
            label = rec.get("label")
            if label == FEVER_DROPPED:
                dropped += 1
                continue
            if label not in FEVER_LABELS:
                raise ValueError(f"{where}: label: {label!r} is not one of {[*FEVER_LABELS, FEVER_DROPPED]}")
            claim = rec.get("claim")
            if not isinstance(claim, str) or not claim.strip():
                raise ValueError(f"{where}: claim: missing or empty; remove the record or fill in the claim")
            answer = FEVER_LABELS[label]
            examples.append(Example(id=str(rec.get("id", f"{path.stem}-{n}")), question=claim.strip(),
                                    answers=[answer], label=answer))
    return examples, dropped


def _shuffled(examples: list[Example], name: str) -> list[Example]:
    pool = list(examples)
    random.Random(f"{name}:{DEMO_SEED}").shuffle(pool)
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


def _qa_task(name: str, source: str, demos_spec: str | None, held_out: bool = False) -> Task:
    """An open-QA task over a `load_questions` file; demos from another file, or its held-out head."""

    @functools.cache
    def split() -> tuple[list[Example], list[Example]]:  # (evaluated, held-out head)
        examples = read_qa(source)
        return _split_head(examples, name) if held_out else (examples, [])

    @functools.cache
    def pool() -> list[Example]:  # read only when shots > 0
        if held_out:
            return split()[1]
        if demos_spec is None:
            raise ValueError(f"task {name} has no demonstration split; give --demos FILE (a question file) for --shots > 0")
        return _shuffled(read_qa(demos_spec), name)

    return Task(name, "generative", "qa", "em_f1", source, read=lambda: split()[0], demo_pool=lambda example: pool())


def squad_open(data_dir: str | Path | None = None) -> Task:
    return _qa_task("squad-open", "quickstart:squad-open/test", "quickstart:squad-open/train")


def nq_open(data_dir: str | Path | None = None) -> Task:
    root = resolve_data_dir(data_dir) / "nq_open"
    return _qa_task("nq-open", str(_need(root / "test.jsonl", "NQ-open test")), str(_need(root / "dev.tsv", "NQ-open dev")))


def triviaqa(data_dir: str | Path | None = None) -> Task:
    path = _need(resolve_data_dir(data_dir) / "triviaqa" / "dev.tsv", "TriviaQA dev")
    return _qa_task("triviaqa", str(path), None, held_out=True)


def hotpotqa(data_dir: str | Path | None = None) -> Task:
    path = _need(resolve_data_dir(data_dir) / "hotpotqa" / "dev.json", "HotpotQA dev")
    return _qa_task("hotpotqa", str(path), None, held_out=True)


def fever(data_dir: str | Path | None = None) -> Task:
    path = _need(resolve_data_dir(data_dir) / "fever" / "dev.jsonl", "FEVER dev")
    notes: list[str] = []

    @functools.cache
    def split() -> tuple[list[Example], list[Example]]:
        examples, dropped = read_fever(path)
        if dropped:
            # KILT's FEVER (the paper's) is the two-way SUPPORTS / REFUTES task.
            notes.append(f"dropped {dropped} {FEVER_DROPPED} claims (KILT FEVER is two-way)")
            log.info("%s: %s", path, notes[-1])
        return _split_head(examples, "fever")

    return Task("fever", "choice", "fever", "accuracy", str(path), read=lambda: split()[0],
                demo_pool=lambda example: split()[1], notes=notes)


def mmlu(data_dir: str | Path | None = None) -> Task:
    root = _need(resolve_data_dir(data_dir) / "mmlu" / "data", "MMLU data folder")
    test_dir, dev_dir = _need(root / "test", "MMLU test folder"), _need(root / "dev", "MMLU dev folder")

    @functools.cache
    def read() -> list[Example]:
        files = sorted(test_dir.glob("*_test.csv"))
        if not files:
            raise FileNotFoundError(f"{test_dir}: no *_test.csv files")
        return [ex for path in files for ex in read_mmlu_csv(path)]

    @functools.cache
    def dev(subject: str) -> list[Example]:
        return read_mmlu_csv(_need(dev_dir / f"{subject}_dev.csv", f"MMLU dev file of {subject}"))

    def pool(example: Example | None) -> list[Example]:
        if example is None or "subject" not in example.meta:
            raise ValueError("mmlu demonstrations are per subject: pass the example being asked")
        return dev(example.meta["subject"])

    return Task("mmlu", "choice", "mmlu", "accuracy", str(test_dir), read=read, demo_pool=pool)


TASKS: dict[str, Callable[[str | Path | None], Task]] = {
    "squad-open": squad_open,
    "nq-open": nq_open,
    "triviaqa": triviaqa,
    "hotpotqa": hotpotqa,
    "mmlu": mmlu,
    "fever": fever,
}


def get_task(name: str, data_dir: str | Path | None = None, demos: str | None = None) -> Task:
    """The task called `name` (a `TASKS` key or `qa-file:PATH`), reading from `data_dir`.

    Args:
        demos: a question file of demonstrations; required for `qa-file:` tasks with shots > 0 and
            overrides the demonstration pool of the other QA tasks.
    """
    if name.startswith(QA_FILE_PREFIX):
        path = name[len(QA_FILE_PREFIX):]
        if not path:
            raise ValueError(f"--task {name}: give the question file after {QA_FILE_PREFIX!r}, e.g. qa-file:questions.jsonl")
        return _qa_task(name, path, demos)
    if name not in TASKS:
        raise ValueError(f"--task {name!r} is unknown; valid: {', '.join(TASKS)}, or {QA_FILE_PREFIX}PATH for a question file")
    task = TASKS[name](data_dir)
    if demos is not None:
        if task.kind != "generative":
            raise ValueError(f"--demos applies to open-QA tasks; {name} draws its own demonstrations")
        pool = functools.cache(lambda: _shuffled(read_qa(demos), name))
        task.demo_pool = lambda example: pool()
    return task


def task_slug(name: str) -> str:
    """A file-name-safe form of a task name (`qa-file:dir/q.jsonl` -> `qa-file-q`)."""
    if name.startswith(QA_FILE_PREFIX):
        stem = Path(name[len(QA_FILE_PREFIX):]).name.split(".")[0]
        return f"qa-file-{stem}"
    return name
