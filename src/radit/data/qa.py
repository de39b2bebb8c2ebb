"""Question sets: the bundled SQuAD-open splits, and question files in the usual public formats.

    from radit.data.qa import load_questions
    test = load_questions("quickstart:squad-open/test")            # bundled, offline
    nq = load_questions("../shared/data/nq_open/dev.tsv", limit=100)

A spec is `quickstart:squad-open/{train,dev,test}` or a file path; each format may also be gzipped
(`questions.jsonl.gz`):

- `.jsonl`: one object per line with `question`, `answers` (a list of strings) or `answer` (a list
  of strings or one string: NQ-open), optional `id`, `positive_ids` (document or passage ids that
  answer it) and `answer_type` (`string`, the default, or `regex`: the answers are regular
  expressions, as in DPR's CuratedTREC); any other field is kept in `Question.meta`.
- `.json`: a list of such objects (HotpotQA dev: `[{"question", "answer", "type"}]`).
- `.tsv`: DPR style, no header: `question<TAB>answers` with the answers a Python list literal; fields
  holding quotes are CSV-quoted (NQ-open and TriviaQA dev as DPR ships them). A row is one line, so
  that an unmatched `"` spoils only its own row, unless `multiline_fields=True`. DPR's CuratedTREC
  (`curatedtrec-test.txt`, renamed .tsv) is read with `answers_are_regex=True`.

A record without an id gets `{file stem}-{index}`, the index counting the file's records from 0, bad
ones included (so that skipping one leaves the other ids as they were). Every bad input is a
`RecordError` (a ValueError) in one line, `<file>:<line>: <field>: <problem>; <what to do>`; with
`on_error="skip"` bad records are dropped, counted in a `ReadStats` and summarised in one warning.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import io
import logging
import random
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from radit.answers import compile_answer_pattern, gold_answers
from radit.data.records import (
    SURROGATE_FIX,
    Malformed,
    ReadStats,
    RecordError,
    bad,
    check_on_error,
    decode_utf8,
    iter_json_list,
    line_finder,
    parse_json,
    read_rows,
    split_line,
    surrogate_problem,
)

log = logging.getLogger(__name__)

QUICKSTART_DIR = Path(__file__).parent / "quickstart"
QUICKSTART_PREFIX = "quickstart:"
QUICKSTART_SETS = {f"squad-open/{split}": f"squad_open_{split}.jsonl" for split in ("train", "dev", "test")}
FORMATS = (".jsonl", ".json", ".tsv")
ANSWER_TYPES = ("string", "regex")
_REBUILD = "python scripts/make_quickstart_data.py (from a radit checkout)"
_FILE_HELP = "a .jsonl, .json or .tsv question file (optionally .gz) or " + ", ".join(QUICKSTART_PREFIX + k for k in QUICKSTART_SETS)
_TSV_FIX = "write `question<TAB>['answer 1', 'answer 2']` per line, with no header row (DPR format)"
_TSV_COLUMNS = ("question", "answers")
_MULTILINE_FIX = "read the file with multiline_fields=True if its quoted fields span lines"


@dataclasses.dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    """Gold answers; empty when the file gives none (a query file for `radit search`)."""
    positive_ids: list[str] = dataclasses.field(default_factory=list)
    """Ids of the documents (or passages) that answer the question; empty when unknown."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The record's other fields (SQuAD-open `title`, HotpotQA `type`, ...)."""
    answer_type: Literal["string", "regex"] = "string"
    """How `answers` match: `string`, as text after SQuAD normalisation; `regex`, as regular
    expressions searched for in a prediction or passage (DPR's CuratedTREC)."""

    @property
    def gold_answers(self) -> list[str | re.Pattern[str]]:
        """The answers as `radit.eval.metrics` takes them (compiled patterns for regex answers)."""
        return gold_answers(self.answers, self.answer_type)


def quickstart_documents() -> Path:
    """The bundled retrieval corpus, `documents.jsonl.gz` (SQuAD v1.1 dev paragraphs + Wikipedia extracts)."""
    path = QUICKSTART_DIR / "documents.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundled quickstart corpus is missing; reinstall radit, or rebuild it with {_REBUILD}")
    return path


def resolve_questions(spec: str) -> Path:
    """The file a question spec names; `ValueError` when there is none."""
    if spec.startswith(QUICKSTART_PREFIX):
        name = spec[len(QUICKSTART_PREFIX):]
        if name not in QUICKSTART_SETS:
            valid = ", ".join(QUICKSTART_PREFIX + k for k in QUICKSTART_SETS)
            raise ValueError(f"{spec}: unknown bundled question set {name!r}; valid: {valid}")
        path = QUICKSTART_DIR / QUICKSTART_SETS[name]
        for candidate in (path, path.with_name(path.name + ".gz")):  # the build script gzips files over 1 MiB
            if candidate.is_file():
                return candidate
        raise ValueError(f"{path}: the bundled question set {spec} is missing; reinstall radit, or rebuild it with {_REBUILD}")
    path = Path(spec)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give {_FILE_HELP}")
    if not path.is_file():
        raise ValueError(f"{path}: file not found; give {_FILE_HELP}")
    return path


T = TypeVar("T")


def sample_in_order(items: Sequence[T], n: int, seed: int = 0) -> list[T]:
    """`n` of `items` drawn at random (`seed`), kept in their order: a fair subset of a file sorted by
    article or subject, where the first `n` would come from one or two of them. All of them when n >= len."""
    if n >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), n))
    return [x for i, x in enumerate(items) if i in keep]


def dev_questions(spec: str, n: int, sample: bool) -> list[Question]:
    """The dev questions a training loop evaluates on: the first `n` of `spec`, or with `sample` `n`
    drawn at random (seed 0) from all of them."""
    if sample:
        return sample_in_order(load_questions(spec, require_answers=True), n)
    return load_questions(spec, limit=n, require_answers=True)


def load_questions(
    spec: str,
    limit: int | None = None,
    *,
    require_answers: bool = False,
    on_error: str = "error",
    answers_are_regex: bool = False,
    multiline_fields: bool = False,
    stats: ReadStats | None = None,
) -> list[Question]:
    """Read a question set (see the module docstring for specs and formats).

    Args:
        spec: `quickstart:squad-open/{train,dev,test}` or a question file path.
        limit: keep only the first N questions (skipped records do not count).
        require_answers: reject records without answers (for evaluations that score answers).
        on_error: `error` raises at the first bad record; `skip` drops bad records, counts them in
            `stats` and logs one warning. A problem of the whole file (missing, not UTF-8, broken
            JSON list, a quote left open to its end) always raises.
        answers_are_regex: the answers of records that give no `answer_type` are regular
            expressions (DPR's CuratedTREC tsv).
        multiline_fields: let CSV-quoted tsv fields span line breaks (DPR's files never do).
        stats: filled with the number of questions kept and of records skipped, by reason.

    Raises:
        RecordError: a ValueError naming the file, line and field of the first bad record (or of
            the file's problem), and what to do.
    """
    check_on_error(on_error)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be a non-negative number of questions, got {limit}")
    path = resolve_questions(spec)
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    ext = Path(name).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown question file type {ext or '(none)'!r}; give {_FILE_HELP}")
    text = _read_text(path, gz=name != path.name)
    stem = Path(name).stem
    if ext == ".tsv":
        records = _tsv_records(text, str(path), stem, multiline_fields)
    else:
        records = (_jsonl_records if ext == ".jsonl" else _json_records)(text, str(path), stem)

    file_stats = ReadStats()
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for where, default_id, rec in records:
        if limit is not None and len(questions) >= limit:
            break
        try:
            if isinstance(rec, RecordError):
                raise rec
            q = _to_question(rec, where, default_id, require_answers, answers_are_regex)
            if q.id in seen:
                problem = f"{q.id!r} was already used at {seen[q.id]}"
                raise bad(where, "id", problem, "give every question a distinct id", "duplicate_id")
        except RecordError as e:
            if on_error == "error" or e.reason is None:
                raise
            file_stats.skip(e)
            continue
        seen[q.id] = where
        questions.append(q)
    file_stats.kept = len(questions)
    file_stats.warn(log, str(path))
    if stats is not None:
        stats.add(file_stats)
    if not questions and limit != 0:
        if file_stats.skipped:
            raise RecordError(f"{path}: file: every record was skipped ({file_stats.counts()}); "
                              "rerun with --on-error error to see why")
        raise RecordError(f"{path}: no questions in the file; give {_FILE_HELP}")
    return questions


def _read_text(path: Path, gz: bool) -> str:
    # Question sets are small (NQ-open dev is 0.5 MB), so a file is read whole: one decode, and a
    # line number for any byte that is not UTF-8.
    data = path.read_bytes()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise bad(str(path), "file", f"not a readable gzip file ({e})", "recompress it, or drop the .gz suffix if it is plain text") from None
    return decode_utf8(data, str(path))


# Readers yield (where, default id, record) per record: a parsed record (checked by _to_question) or
# the RecordError of one that could not be parsed; problems of the whole file are raised.


def _jsonl_records(text: str, path: str, stem: str) -> Iterator[tuple[str, str, Any]]:
    i = 0
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside JSON strings.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        fix = "write one JSON object per line" + (" (is this a .json list? rename it .json)" if line.lstrip().startswith("[") else "")
        try:
            rec = parse_json(line, fix)
        except Malformed as m:
            rec = m.at(where)
        yield where, f"{stem}-{i}", rec
        i += 1


def _json_records(text: str, path: str, stem: str) -> Iterator[tuple[str, str, Any]]:
    # Decoded one list element at a time so that an error names the line of the record at fault.
    if not text.strip():
        return
    line = line_finder(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        if not text.startswith("[", start):
            parse_json(text, "fix the file")  # invalid JSON is reported as such
            fix = 'write a list, [{"question": ..., "answers": [...]}, ...], or one object per line as .jsonl'
            raise bad(f"{path}:{line(start)}", "file", "the top-level JSON value is not a list of records", fix)
        for i, (pos, rec) in enumerate(iter_json_list(text, start)):
            where = f"{path}:{line(pos)} (record {i})"
            yield where, f"{stem}-{i}", rec.at(where) if isinstance(rec, Malformed) else rec
    except Malformed as m:
        raise m.at(f"{path}:{line(m.pos)}", field="file", whole_file=True) from None


def _tsv_rows(text: str) -> Iterator[tuple[int, list[str] | Malformed]]:
    for n, line in enumerate(text.split("\n"), 1):
        try:
            yield n, split_line(line, "\t", _MULTILINE_FIX)
        except Malformed as m:
            yield n, m


def _tsv_records(text: str, path: str, stem: str, multiline_fields: bool) -> Iterator[tuple[str, str, Any]]:
    rows = read_rows(io.StringIO(text, newline="\n"), "\t") if multiline_fields else _tsv_rows(text)
    i = 0
    try:
        for n, row in rows:
            where = f"{path}:{n}"
            if isinstance(row, Malformed):
                rec: Any = row.at(where, field=_TSV_COLUMNS[row.index] if row.index in (0, 1) else "row")
            elif not any(cell.strip() for cell in row):
                continue
            elif len(row) != 2:
                problem = f"{len(row)} tab-separated columns, expected 2 (question, answers)"
                if any("\t" in cell for cell in row):
                    problem += ' (a quoted field holds a tab: is a " unmatched?)'
                rec = bad(where, "row", problem, _TSV_FIX, "bad_row")
            else:
                rec = {"question": row[0], "answers": _answer_literal(row[1], where)}
                if isinstance(rec["answers"], RecordError):
                    rec = rec["answers"]
            yield where, f"{stem}-{i}", rec
            i += 1
    except Malformed as m:  # from a file read with multi-line fields: nothing after it can be trusted
        field = _TSV_COLUMNS[m.index] if m.index in (0, 1) else "row"
        raise m.at(f"{path}:{m.pos}", field=field, whole_file=True) from None


def _answer_literal(raw: str, where: str) -> Any:
    """The answers cell of a DPR tsv row, a Python list literal, or the RecordError saying why not."""
    try:
        with warnings.catch_warnings():
            # A regex such as "\s+" is an invalid escape to Python (a SyntaxWarning since 3.12); the
            # literal keeps the backslash, which is what the pattern means.
            warnings.simplefilter("ignore")
            return ast.literal_eval(raw.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        shown = raw if len(raw) <= 60 else raw[:57] + "..."
        return bad(where, "answers", f"not a Python list literal: {shown!r}", _TSV_FIX, "bad_answers")


def _string_list_problem(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of strings, got {type(value).__name__}"
    for j, item in enumerate(value):
        if not isinstance(item, str):
            return f"must be a list of strings, item {j} is {type(item).__name__} {item!r}"
        if not item.strip():
            return f"item {j} is an empty string"
    return None


def _regex_problem(answers: list[str]) -> str | None:
    for j, answer in enumerate(answers):
        try:
            pattern = compile_answer_pattern(answer)
        except re.error as e:
            return f"item {j}, {answer!r}, is not a valid regular expression ({e})"
        if pattern.search("") is not None:
            # Like an empty answer string: it would count every prediction and passage as a hit.
            return f"item {j}, {answer!r}, matches an empty text, so it would match every text"
    return None


def _to_question(rec: Any, where: str, default_id: str, require_answers: bool, answers_are_regex: bool) -> Question:
    if not isinstance(rec, dict):
        raise bad(where, "record", f"a JSON {type(rec).__name__}, not an object", "write one object per question", "not_an_object")
    question = rec.get("question")
    if question is None:
        problem = f"missing (fields: {', '.join(map(str, rec)) or 'none'})"
        raise bad(where, "question", problem, "give every record a `question`", "missing_question")
    if not isinstance(question, str):
        problem = f"must be a string, got {type(question).__name__}"
        raise bad(where, "question", problem, "write the question as one string", "question_not_string")
    if not question.strip():
        raise bad(where, "question", "empty", "remove the record or fill in the question", "empty_question")

    key = "answers" if "answers" in rec else "answer" if "answer" in rec else None
    answers: Any = [] if key is None else rec[key]
    if key == "answer" and isinstance(answers, str):  # HotpotQA: one answer string
        answers = [answers]
    if key is not None and (problem := _string_list_problem(answers)):
        # An empty answer string would match every passage, so it is an error, not a no-op.
        raise bad(where, key, problem, 'write the answers as non-empty strings, e.g. "answers": ["Paris"]', "bad_answers")
    if require_answers and not answers:
        raise bad(where, key or "answers", "no answers", 'give every record "answers": ["..."], at least one', "no_answers")

    answer_type = rec.get("answer_type", "regex" if answers_are_regex else "string")
    if answer_type not in ANSWER_TYPES:
        fix = 'write "answer_type": "regex" for regular-expression answers, or leave it out'
        raise bad(where, "answer_type", f"{answer_type!r} is not one of {', '.join(ANSWER_TYPES)}", fix, "bad_answer_type")
    if answer_type == "regex" and (problem := _regex_problem(answers)):
        raise bad(where, key or "answers", problem, "fix the pattern, or mark the answers as plain strings", "invalid_regex")

    qid = rec.get("id")
    if qid is None or qid == "":
        qid = default_id
    elif isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    elif not isinstance(qid, str):
        raise bad(where, "id", f"must be a string or integer, got {type(qid).__name__}", "fix the id, or leave it out", "bad_id")

    positive_ids = rec.get("positive_ids")
    positive_ids = [] if positive_ids is None else positive_ids
    if problem := _string_list_problem(positive_ids):
        fix = 'write the ids of the answering documents, e.g. "positive_ids": ["doc-7"]'
        raise bad(where, "positive_ids", problem, fix, "bad_positive_ids")

    meta = {k: v for k, v in rec.items() if k not in ("id", "question", key, "positive_ids", "answer_type")}
    # Caught here, not when a prediction file is written, so that on_error="skip" can drop the record.
    fields = [("question", question), (key or "answers", answers), ("id", qid), ("positive_ids", positive_ids)]
    for field, value in fields + [(str(k), [k, v]) for k, v in meta.items()]:
        if problem := surrogate_problem(value):
            raise bad(where, field.encode("utf-8", "backslashreplace").decode(), problem, SURROGATE_FIX, "unpaired_surrogate")
    return Question(id=qid, question=question.strip(), answers=list(answers), positive_ids=list(positive_ids),
                    meta=meta, answer_type=answer_type)
