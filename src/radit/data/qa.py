"""Question sets: the bundled SQuAD-open splits, and question files in the usual public formats.

    from radit.data.qa import load_questions
    test = load_questions("quickstart:squad-open/test")            # bundled, offline
    nq = load_questions("../shared/data/nq_open/dev.tsv", limit=100)

A spec is `quickstart:squad-open/{train,dev,test}` or a file path; each format may also be gzipped
(`questions.jsonl.gz`):

- `.jsonl`: one object per line with `question`, `answers` (a list of strings) or `answer` (a list
  of strings or one string: NQ-open), optional `id` and `positive_ids` (document or passage ids that
  answer it); any other field is kept in `Question.meta`.
- `.json`: a list of such objects (HotpotQA dev: `[{"question", "answer", "type"}]`).
- `.tsv`: DPR style, no header: `question<TAB>answers` with the answers a Python list literal; rows
  holding quotes are CSV-quoted (NQ-open and TriviaQA dev as DPR ships them).

A record without an id gets `{file stem}-{index}`, the index counting records from 0. Every bad input
is a `ValueError` in one line, `<file>:<line>: <field>: <problem>; <what to do>`.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

QUICKSTART_DIR = Path(__file__).parent / "quickstart"
QUICKSTART_PREFIX = "quickstart:"
QUICKSTART_SETS = {f"squad-open/{split}": f"squad_open_{split}.jsonl" for split in ("train", "dev", "test")}
FORMATS = (".jsonl", ".json", ".tsv")
_REBUILD = "python scripts/make_quickstart_data.py (from a radit checkout)"
_FILE_HELP = "a .jsonl, .json or .tsv question file (optionally .gz) or " + ", ".join(QUICKSTART_PREFIX + k for k in QUICKSTART_SETS)
_WS = re.compile(r"[ \t\n\r]*")


@dataclasses.dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    """Gold answer strings; empty when the file gives none (a query file for `radit search`)."""
    positive_ids: list[str] = dataclasses.field(default_factory=list)
    """Ids of the documents (or passages) that answer the question; empty when unknown."""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The record's other fields (SQuAD-open `title`, HotpotQA `type`, ...)."""


def _bad(where: str, field: str, problem: str, fix: str) -> ValueError:
    return ValueError(f"{where}: {field}: {problem}; {fix}")


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


def load_questions(spec: str, limit: int | None = None, *, require_answers: bool = False) -> list[Question]:
    """Read a question set (see the module docstring for specs and formats).

    Args:
        spec: `quickstart:squad-open/{train,dev,test}` or a question file path.
        limit: keep only the first N questions.
        require_answers: reject records without answers (for evaluations that score answers).

    Raises:
        ValueError: naming the file, line and field of the first bad record, and what to do.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be a non-negative number of questions, got {limit}")
    path = resolve_questions(spec)
    name = path.name[:-3] if path.name.lower().endswith(".gz") else path.name
    ext = Path(name).suffix.lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unknown question file type {ext or '(none)'!r}; give {_FILE_HELP}")
    text = _read_text(path, gz=name != path.name)
    records = {".jsonl": _jsonl_records, ".json": _json_records, ".tsv": _tsv_records}[ext](text, str(path), Path(name).stem)

    questions: list[Question] = []
    seen: dict[str, str] = {}
    for where, default_id, rec in records:
        if limit is not None and len(questions) >= limit:
            break
        q = _to_question(rec, where, default_id, require_answers)
        if q.id in seen:
            raise _bad(where, "id", f"{q.id!r} was already used at {seen[q.id]}", "give every question a distinct id")
        seen[q.id] = where
        questions.append(q)
    if not questions and limit != 0:
        raise ValueError(f"{path}: no questions in the file; give {_FILE_HELP}")
    return questions


def _read_text(path: Path, gz: bool) -> str:
    # Question sets are small (NQ-open dev is 0.5 MB), so a file is read whole: one decode, and a
    # line number for any byte that is not UTF-8.
    data = path.read_bytes()
    if gz:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise _bad(str(path), "file", f"not a readable gzip file ({e})", "recompress it, or drop the .gz suffix if it is plain text") from None
    try:
        return data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise _bad(f"{path}:{line}", "file", f"byte {data[e.start]:#04x} is not UTF-8", "re-encode the file as UTF-8") from None


def _jsonl_records(text: str, path: str, stem: str) -> Iterator[tuple[str, str, Any]]:
    i = 0
    # split("\n"), not splitlines(): U+2028 and friends may sit unescaped inside JSON strings.
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            fix = "write one JSON object per line" + (" (is this a .json list? rename it .json)" if line.lstrip().startswith("[") else "")
            raise _bad(f"{path}:{n}", "line", f"invalid JSON at column {e.colno}: {e.msg}", fix) from None
        yield f"{path}:{n}", f"{stem}-{i}", rec
        i += 1


def _json_records(text: str, path: str, stem: str) -> Iterator[tuple[str, str, Any]]:
    # Decoded one list element at a time so that an error names the line of the record at fault.
    decoder = json.JSONDecoder()
    line, last = 1, 0

    def at(pos: int) -> str:
        nonlocal line, last
        line += text.count("\n", last, pos)
        last = pos
        return f"{path}:{line}"

    def invalid(e: json.JSONDecodeError) -> ValueError:
        return _bad(f"{path}:{e.lineno}", "file", f"invalid JSON at column {e.colno}: {e.msg}", "fix the file")

    pos = _WS.match(text).end()
    if not text.startswith("[", pos):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            raise invalid(e) from None
        fix = 'write a list, [{"question": ..., "answers": [...]}, ...], or one object per line as .jsonl'
        raise _bad(at(pos), "file", "the top-level JSON value is not a list of records", fix)
    pos = _WS.match(text, pos + 1).end()
    i = 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                rec, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise invalid(e) from None
            yield f"{at(pos)} (record {i})", f"{stem}-{i}", rec
            i += 1
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise _bad(at(pos), "file", f"expected ',' or ']' after record {i - 1}", "fix the file")
    if _WS.match(text, pos).end() != len(text):
        raise _bad(at(pos), "file", "extra data after the list", "keep one JSON list per .json file")


def _tsv_records(text: str, path: str, stem: str) -> Iterator[tuple[str, str, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    fix = "write `question<TAB>['answer 1', 'answer 2']` per line, with no header row (DPR format)"
    i, end = 0, 0
    while True:
        start = end + 1  # a CSV-quoted row may span lines: report the line it starts on
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise _bad(f"{path}:{start}", "row", f"unreadable TSV ({e})", fix) from None
        end = reader.line_num
        where = f"{path}:{start}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise _bad(where, "row", f"{len(row)} tab-separated columns, expected 2 (question, answers)", fix)
        question, raw = row
        try:
            answers = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            raise _bad(where, "answers", f"not a Python list literal: {shown!r}", fix) from None
        yield where, f"{stem}-{i}", {"question": question, "answers": answers}
        i += 1


def _string_list_problem(value: Any) -> str | None:
    if not isinstance(value, list):
        return f"must be a list of strings, got {type(value).__name__}"
    for j, item in enumerate(value):
        if not isinstance(item, str):
            return f"must be a list of strings, item {j} is {type(item).__name__} {item!r}"
        if not item.strip():
            return f"item {j} is an empty string"
    return None


def _to_question(rec: Any, where: str, default_id: str, require_answers: bool) -> Question:
    if not isinstance(rec, dict):
        raise _bad(where, "record", f"a JSON {type(rec).__name__}, not an object", "write one object per question")
    question = rec.get("question")
    if question is None:
        problem = f"missing (fields: {', '.join(map(str, rec)) or 'none'})"
        raise _bad(where, "question", problem, "give every record a `question`")
    if not isinstance(question, str):
        raise _bad(where, "question", f"must be a string, got {type(question).__name__}", "write the question as one string")
    if not question.strip():
        raise _bad(where, "question", "empty", "remove the record or fill in the question")

    key = "answers" if "answers" in rec else "answer" if "answer" in rec else None
    answers: Any = [] if key is None else rec[key]
    if key == "answer" and isinstance(answers, str):  # HotpotQA: one answer string
        answers = [answers]
    if key is not None and (problem := _string_list_problem(answers)):
        # An empty answer string would match every passage, so it is an error, not a no-op.
        raise _bad(where, key, problem, 'write the answers as non-empty strings, e.g. "answers": ["Paris"]')
    if require_answers and not answers:
        raise _bad(where, key or "answers", "no answers", 'give every record "answers": ["..."], at least one')

    qid = rec.get("id")
    if qid is None or qid == "":
        qid = default_id
    elif isinstance(qid, int) and not isinstance(qid, bool):
        qid = str(qid)
    elif not isinstance(qid, str):
        raise _bad(where, "id", f"must be a string or integer, got {type(qid).__name__}", "fix the id, or leave it out")

    positive_ids = rec.get("positive_ids")
    positive_ids = [] if positive_ids is None else positive_ids
    if problem := _string_list_problem(positive_ids):
        raise _bad(where, "positive_ids", problem, 'write the ids of the answering documents, e.g. "positive_ids": ["doc-7"]')

    meta = {k: v for k, v in rec.items() if k not in ("id", "question", key, "positive_ids")}
    return Question(id=qid, question=question.strip(), answers=list(answers), positive_ids=list(positive_ids), meta=meta)
