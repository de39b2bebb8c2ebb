"""Parsing one record of a jsonl / json / tsv / csv input without a traceback and without silent
corruption; shared by every reader of input files (`radit.corpus`, `radit.data.qa`, `radit.eval.tasks`).

    from radit.data.records import Malformed, parse_json
    try:
        rec = parse_json(line)
    except Malformed as m:
        raise m.at(f"{path}:{lineno}")      # "docs.jsonl:7: record: invalid JSON ...; fix or remove the line"

Python's own parsers fail in ways that name neither the file nor the record, or not at all: `json`
raises RecursionError on deep nesting and a bare ValueError on an integer of more than
`sys.get_int_max_str_digits()` digits, and reports a cut-off line at the column where its last string
opened; `csv` lets a field that opens with an unmatched `"` swallow every later row. Each of these
becomes a `Malformed` (field, problem, what to do, skip reason) that the reader places at its file
and line, so that `on_error="skip"` can drop and count the record like any other bad one.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

ON_ERROR = ("error", "skip")


class RecordError(ValueError):
    """A bad input, in one line: `<file>:<line>: <field>: <problem>; <what to do>`.

    `reason` counts a bad record under `on_error="skip"` (invalid_json, empty_question, ...); None
    marks a problem of the whole file, which is never skipped.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def bad(where: str, field: str, problem: str, fix: str, reason: str | None = None) -> RecordError:
    return RecordError(f"{where}: {field}: {problem}; {fix}", reason)


class Malformed(Exception):
    """Why a record cannot be read, before the reader says where it is: `at(where)` makes the error.

    `pos` is the offset in the parsed text the problem sits at (a whole-file reader turns it into a
    line); `end` is where the bad value ends when that is known, so that a list reader can go on
    after it; `index` is the position of the bad field in a tsv/csv row, so that the reader can name
    its column.
    """

    def __init__(self, problem: str, fix: str, reason: str, field: str = "record", pos: int = 0):
        super().__init__(problem)
        self.problem, self.fix, self.reason, self.field, self.pos = problem, fix, reason, field, pos
        self.end: int | None = None
        self.index: int | None = None

    def at(self, where: str, error: type[RecordError] = RecordError, *, field: str | None = None,
           whole_file: bool = False) -> RecordError:
        """The error at `where`, naming `field` (default: `self.field`); `whole_file` makes it a
        file-level one, which is never skipped."""
        return error(f"{where}: {field or self.field}: {self.problem}; {self.fix}", None if whole_file else self.reason)


def check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"--on-error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")


@dataclasses.dataclass
class ReadStats:
    """What a reader kept and what it dropped under `on_error="skip"`."""

    kept: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Bad records dropped, by reason (invalid_json, empty_question, ...)."""
    first_skipped: str | None = None
    """The error of the first record dropped, as it would have been raised."""

    def skip(self, error: RecordError) -> None:
        self.skipped[str(error.reason)] = self.skipped.get(str(error.reason), 0) + 1
        if self.first_skipped is None:
            self.first_skipped = str(error)

    def add(self, other: ReadStats) -> None:
        """Count `other`'s records in this one too (a caller's total over several files)."""
        self.kept += other.kept
        for reason, n in other.skipped.items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.first_skipped = self.first_skipped or other.first_skipped

    def counts(self) -> str:
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))

    def warn(self, log: logging.Logger, source: str) -> None:
        """One warning for all the records of `source` that were skipped, if any."""
        if self.skipped:
            log.warning("%s: skipped %d bad records (%s); the first: %s. Rerun with --on-error error to stop at the first",
                        source, sum(self.skipped.values()), self.counts(), self.first_skipped)


def decode_utf8(data: bytes, path: str, error: type[RecordError] = RecordError) -> str:
    """The text of a whole file; a byte that is not UTF-8 is a file-level error naming its line."""
    try:
        return data.decode("utf-8").lstrip("\ufeff")  # a byte-order mark may open the file
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        problem = f"byte {data[e.start]:#04x} is not UTF-8"
        raise error(f"{path}:{line}: file: {problem}; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def line_finder(text: str) -> Callable[[int], int]:
    """pos -> the 1-based line of `text` that holds it."""
    newlines = [m.start() for m in re.finditer("\n", text)]
    return lambda pos: bisect.bisect_left(newlines, pos) + 1


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
# A JSON text as tokens that nest or not, skipping strings: enough to find where a value ends
# without recursion. A lone `"` is a string that never closes.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{]|[\]}]|[^"\[\]{}]+|"', re.S)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")


def _column(text: str, pos: int) -> str:
    column = pos - text.rfind("\n", 0, pos)
    return f"column {column}"


def _invalid(e: json.JSONDecodeError, text: str, fix: str) -> Malformed:
    """A JSONDecodeError, placed where a reader can act on it: a text that ends before its value is
    complete (a cut-off line) is reported at its end, not at the column where the open string began."""
    msg = e.msg.removesuffix(" at")  # "Unterminated string starting at", the offset being e.pos
    end = len(text.rstrip())
    unterminated = msg.startswith("Unterminated string")
    if unterminated or e.pos >= end:
        detail = f"inside a string opened at {_column(text, e.pos)}" if unterminated else f"({msg})"
        if "\n" in text[e.pos:end]:
            detail += f" of line {text.count(chr(10), 0, e.pos) + 1}"
        problem = f"invalid JSON: cut off after {_column(text, end - 1)} {detail}"
        return Malformed(problem, "complete the record or remove it", "invalid_json", pos=end)
    if msg == "Extra data" and "\n" in text[:e.pos]:  # several lines of JSON: a jsonl file named .json
        fix = "a .json file holds one JSON value: rename it .jsonl if it holds one object per line"
    return Malformed(f"invalid JSON at {_column(text, e.pos)}: {msg}", fix, "invalid_json", pos=e.pos)


def _value_end(text: str, pos: int) -> tuple[int | None, int, int, int | None]:
    """(end of the JSON value at `pos` or None if it never closes, its depth, the offset of its
    deepest bracket, the offset of its first integer over Python's digit limit or None), found
    without recursion."""
    limit = sys.get_int_max_str_digits()
    # An integer, not the digits of a fraction or an exponent, with more digits than int() reads.
    long_int = re.compile(rf"(?<![\d.eE+-])-?\d{{{limit + 1},}}(?![\d.eE])") if limit else None
    if text[pos:pos + 1] not in ("[", "{"):
        number = _NUMBER.match(text, pos)
        long_at = pos if number and long_int and long_int.fullmatch(number.group()) else None
        return (number.end() if number else None), 0, pos, long_at
    depth = deepest = 0
    deep_at, long_at = pos, None
    for m in _TOKEN.finditer(text, pos):
        c = text[m.start()]
        if c in "[{":
            depth += 1
            if depth > deepest:
                deepest, deep_at = depth, m.start()
        elif c in "]}":
            depth -= 1
            if depth == 0:
                return m.end(), deepest, deep_at, long_at
        elif c == '"':
            if m.end() - m.start() == 1:
                break  # a string that never closes
        elif long_at is None and long_int and (n := long_int.search(m.group())):
            long_at = m.start() + n.start()
    return None, deepest, deep_at, long_at


def _unparsable(e: Exception, text: str, pos: int) -> Malformed:
    """The RecursionError or int-limit ValueError of valid-looking JSON as a Malformed at the deepest
    bracket or the long integer, with the end of the value when it can be found."""
    end, depth, deep_at, long_at = _value_end(text, pos)
    if isinstance(e, RecursionError):
        levels = f"{depth} levels" if end is not None else f"at least {depth} levels"
        problem = f"nested {levels} deep (deepest at {_column(text, deep_at)}), more than Python's JSON parser reads"
        m = Malformed(problem, "flatten the value or remove the record", "too_deep", pos=deep_at)
    else:
        where = f" at {_column(text, long_at)}" if long_at is not None else ""
        problem = f"an integer of more than {sys.get_int_max_str_digits()} digits{where}, more than Python reads"
        m = Malformed(problem, "write the number as a string, or remove the record", "number_too_long",
                      pos=pos if long_at is None else long_at)
    m.end = end
    return m


def parse_json(text: str, fix: str = "fix or remove the line") -> Any:
    """The JSON value of one record (a jsonl line) or file; every failure is a Malformed with reason
    invalid_json, too_deep or number_too_long, `pos` saying where (for the line of a whole file)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _invalid(e, text, fix) from None
    except (RecursionError, ValueError) as e:  # ValueError: an integer over sys.get_int_max_str_digits()
        raise _unparsable(e, text, _WS.match(text).end()) from None


def iter_json_list(text: str, start: int) -> Iterator[tuple[int, Any]]:
    """(offset, value) of each element of the JSON list that opens at `text[start]`, parsed one at a
    time so that a bad element is reported by itself.

    An element too deep or holding too long an integer is given as a Malformed and the list goes on
    after it; invalid JSON, which leaves no way to tell where the element ends, raises a Malformed
    whose `pos` says where.
    """
    pos = _WS.match(text, start + 1).end()
    i = 0
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise _invalid(e, text, "fix the file") from None
            except (RecursionError, ValueError) as e:
                value = _unparsable(e, text, pos)
                if value.end is None:
                    raise value from None
                end = value.end
            yield pos, value
            pos = _WS.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WS.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise Malformed(f"expected ',' or ']' after record {i}", "fix the file", "invalid_json", "file", pos)
            i += 1
    if _WS.match(text, pos).end() != len(text):
        raise Malformed("extra data after the list", "keep one JSON list per .json file", "invalid_json", "file", pos)


def surrogate_problem(value: Any) -> str | None:
    """Why `value` (a string, or any JSON value) cannot be written as UTF-8: an unpaired surrogate,
    which a `\\ud800` escape in JSON or a Python literal produces. None when it can."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError as e:
                    return f"holds an unpaired surrogate \\u{ord(v[e.start]):04x} at character {e.start + 1}"
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return None


SURROGATE_FIX = "fix its \\u escapes: \\ud800-\\udfff come in high-low pairs"


# --------------------------------------------------------------------------------------------------
# tsv / csv
# --------------------------------------------------------------------------------------------------

_QUOTE_FIX = 'close the quote (a " inside a quoted field is written "")'


def split_line(line: str, delimiter: str, multiline_fix: str) -> list[str]:
    """The fields of one line of a tsv/csv file whose rows are one line each, CSV quoting undone
    (`"a ""quoted"" word"` -> `a "quoted" word`).

    Each line is parsed by itself, so that an unmatched `"` costs its own row and never swallows the
    rows after it. Raises Malformed (reason unclosed_quote, `index` the field) for a quoted field still
    open at the end of the line, naming `multiline_fix` (how to allow fields that span lines), and
    (reason bad_row) for a line the csv module refuses.
    """
    open_at_end = False

    def one_line() -> Iterator[str]:
        nonlocal open_at_end
        yield line
        open_at_end = True  # the parser asked for another line: a quoted field is still open

    try:
        row = next(csv.reader(one_line(), delimiter=delimiter), [])
    except csv.Error as e:
        raise Malformed(f"unreadable row ({e})", "fix its quoting", "bad_row") from None
    if open_at_end:
        m = Malformed('a field opens with " and is not closed on its line', f"{_QUOTE_FIX}, or {multiline_fix}",
                      "unclosed_quote")
        m.index = len(row) - 1
        raise m
    return row


def read_rows(lines: Iterable[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of each row of a tsv/csv file whose quoted fields may span lines
    (standard CSV); `lines` keep their line breaks.

    A quoted field still open at the end of the file has swallowed every row after it, so it raises
    a Malformed with `pos` the line where it opened (reason unclosed_quote; a reader makes it a
    file-level error, as skipping it would drop those rows unseen). A row the csv module refuses
    raises a Malformed with `pos` its line.
    """
    exhausted = False

    def feed() -> Iterator[str]:
        nonlocal exhausted
        yield from lines
        exhausted = True

    reader = csv.reader(feed(), delimiter=delimiter)
    end = 0
    try:
        for row in reader:
            start, end = end + 1, reader.line_num  # a row may span lines: it is reported where it starts
            if exhausted:  # the parser ran out of lines inside a quoted field
                opened = start + sum(field.count("\n") for field in row[:-1])
                problem = 'a field opens with " here and is never closed: it runs to the end of the file, swallowing every later row'
                m = Malformed(problem, _QUOTE_FIX, "unclosed_quote", pos=opened)
                m.index = len(row) - 1
                raise m
            yield start, row
    except csv.Error as e:
        raise Malformed(f"unreadable row ({e})", "fix its quoting", "bad_row", pos=reader.line_num) from None
