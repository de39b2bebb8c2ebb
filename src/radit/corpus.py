"""Read documents, split them into passages of at most N words, write a passages file.

    radit corpus --inputs docs.jsonl --output runs/corpus/passages.jsonl

Inputs are jsonl / json / tsv / csv / parquet records with `text` and optional `id` and `title`
(`.gz` is read too, except for parquet, which compresses itself), a SQuAD JSON file (one document
per paragraph) or a Wikipedia vital-articles `summaries.json` (one document per article). The output
holds one JSON object per line, `{"id": "<doc_id>#<chunk_no>", "doc_id", "title", "text"}`, and stays
uncompressed so that `PassageStore` can seek to any row.

tsv and csv files keep CSV quoting (DPR's `psgs_w100.tsv`: `id<TAB>text<TAB>title`, fields holding
quotes written `"a ""quoted"" word"`), but a quote never silently swallows the rows after it: a tsv row is
one line unless `--multiline-fields` is given, so an unmatched `"` is an error of its own row; a quoted
field left open at the end of a csv file (or a tsv file read with `--multiline-fields`) is an error
of the whole file, naming the line where it opened.

Every bad input is a `CorpusError` naming the file, the line (or JSON path, or parquet row), the field
and what to do; with `--on-error skip` bad records are dropped, counted by reason and logged instead.
Problems of a whole file (one it cannot read past, such as that unclosed quote) are never skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import json
import logging
import math
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from radit.artifacts import atomic_open
from radit.config import CorpusConfig
from radit.data.records import (
    SURROGATE_FIX,
    Malformed,
    RecordError,
    decode_utf8,
    iter_json_list,
    line_finder,
    parse_json,
    read_rows,
    split_line,
    surrogate_problem,
)
from radit.distributed import progress_bar

log = logging.getLogger(__name__)

FORMATS = (".jsonl", ".json", ".tsv", ".csv", ".parquet")
FIELDS = ("id", "title", "text")
_SHOWN_SKIPS = 10  # skipped records logged one by one before they are only counted
_to_json = json.JSONEncoder(ensure_ascii=False).encode  # one encoder, not one per json.dumps call


class CorpusError(RecordError):
    """A bad input, in one line: `<file>:<line>: <field>: <problem>; <what to do>`.

    `reason` is the `CorpusStats.skipped` key of a bad record; None marks a file-level problem, which
    `--on-error skip` never skips.
    """


def _bad(where: str, field: str, problem: str, fix: str, reason: str | None = None) -> CorpusError:
    return CorpusError(f"{where}: {field}: {problem}; {fix}", reason)


@dataclasses.dataclass
class Document:
    """One input document, before chunking."""

    id: str
    title: str
    text: str
    source: str
    """Where it was read: `file:line`, `file:row N` (parquet, from 0) or `file:<JSON path>` (.json)."""


@dataclasses.dataclass
class CorpusStats:
    """What `build_passages` read and wrote."""

    documents: int = 0
    passages: int = 0
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Bad records dropped under `--on-error skip`, by reason (invalid_json, empty_text, ...)."""

    def to_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "passages": self.passages, "skipped": dict(sorted(self.skipped.items()))}


def chunk_words(text: str, max_words: int) -> list[str]:
    """Split `text` into the fewest chunks of at most `max_words` whitespace words, of equal size.

    The paper (App. A) cuts long sections "into equal chunks under 200 words" rather than into N-word
    chunks and a short remainder: ceil(n / N) chunks whose sizes differ by at most one, the first ones
    longer. A text of at most N words stays one chunk.

    Args:
        text: Any text; whitespace runs become single spaces.
        max_words: The limit N (>= 1).

    Returns:
        The chunks in order; [] for empty or whitespace-only text.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = text.split()
    n_chunks = math.ceil(len(words) / max_words)
    size, extra = divmod(len(words), max(n_chunks, 1))
    chunks, start = [], 0
    for i in range(n_chunks):
        end = start + size + (i < extra)
        chunks.append(" ".join(words[start:end]))
        start = end
    return chunks


# Readers yield (where, default id, record, name of its text field) per record. A record is a parsed
# value (checked later by _to_document) or the CorpusError of a record that could not be parsed;
# file-level problems are raised.


def _check_input(path: Path) -> tuple[str, bool]:
    """The format (".jsonl", ...) of an input file and whether it is gzipped."""
    if not path.exists():
        raise _bad(str(path), "file", "does not exist", "check the path given to --inputs")
    if path.is_dir():
        raise _bad(str(path), "file", "is a directory", "pass the files in it instead, e.g. DIR/*.jsonl")
    name = path.name.lower()
    gz = name.endswith(".gz")
    ext = Path(name.removesuffix(".gz")).suffix
    if ext not in FORMATS or (gz and ext == ".parquet"):
        shown = ext + ".gz" * gz or "(none)"
        fix = f"use {', '.join(FORMATS)} (or .gz of all but .parquet)"
        raise _bad(str(path), "file", f"unknown extension {shown!r}", fix)
    return ext, gz


def _lines(path: Path, gz: bool, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each physical line; None for a line over `limit` bytes, which is read in
    pieces and dropped so that a file without line breaks never sits in memory whole."""
    with gzip.open(path, "rb") if gz else open(path, "rb", buffering=1 << 20) as f:
        for lineno, line in enumerate(iter(lambda: f.readline(limit + 1), b""), 1):
            if len(line) > limit and not line.endswith(b"\n"):
                while (rest := f.readline(limit + 1)) and not rest.endswith(b"\n"):
                    pass
                line = None
            yield lineno, line


def _too_large(where: str, cfg: CorpusConfig) -> CorpusError:
    problem = f"longer than --max-record-bytes {cfg.max_record_bytes}"
    return _bad(where, "record", problem, "raise --max-record-bytes or split the document", "too_large")


def _decode(raw: bytes, where: str) -> str | CorpusError:
    # Strict, so that a latin-1 or binary file is reported at its line instead of read as mojibake.
    try:
        return raw.decode("utf-8").lstrip("\ufeff")  # a byte-order mark may open the file
    except UnicodeDecodeError as e:
        problem = f"byte {raw[e.start]:#04x} at column {e.start + 1} is not UTF-8"
        return _bad(where, "record", problem, "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", "non_utf8")


def _jsonl_records(path: Path, gz: bool, cfg: CorpusConfig, stem: str) -> Iterator[tuple]:
    for lineno, raw in _lines(path, gz, cfg.max_record_bytes):
        where = f"{path}:{lineno}"
        line = _too_large(where, cfg) if raw is None else _decode(raw, where)
        if isinstance(line, str):
            if not line.strip():
                continue
            try:
                line = parse_json(line)
            except Malformed as m:
                line = m.at(where, CorpusError)
        yield where, f"{stem}-{lineno}", line, "text"


def _check_columns(where: str, columns: list[str], cfg: CorpusConfig) -> None:
    """A tsv/csv header or parquet schema needs `text`; other columns than id/title/text follow
    --extra-fields, checked once per file rather than once per row."""
    if "text" not in columns:
        problem = f"no `text` column (columns: {', '.join(columns)})"
        raise _bad(where, "text", problem, "name the document column `text`")
    unknown = [c for c in columns if c not in FIELDS]
    if unknown and cfg.extra_fields == "error":
        problem = "unknown column(s) (expected id, title, text)"
        raise _bad(where, ", ".join(unknown), problem, "pass --extra-fields ignore to drop them")


_MULTILINE_FIX = "pass --multiline-fields if quoted fields of this file span lines"


def _line_rows(path: Path, gz: bool, cfg: CorpusConfig, delimiter: str) -> Iterator[tuple[int, Any]]:
    """(line, fields or the problem) of each line: a tsv row is one line, parsed by itself."""
    for lineno, raw in _lines(path, gz, cfg.max_record_bytes):
        where = f"{path}:{lineno}"
        line = _too_large(where, cfg) if raw is None else _decode(raw, where)
        if isinstance(line, str):
            try:
                line = split_line(line, delimiter, _MULTILINE_FIX)
            except Malformed as m:
                line = m
        yield lineno, line


def _spanning_rows(path: Path, gz: bool, cfg: CorpusConfig, delimiter: str) -> Iterator[tuple[int, Any]]:
    """(first line, fields or the problem) of each row of a file whose quoted fields may span lines."""
    # Lines are decoded one by one so that a bad byte is reported at its line; problems found while
    # reading lines are reported with the row that holds them.
    problems: list[CorpusError] = []
    nbytes = row_start = 0

    def decoded() -> Iterator[str]:
        nonlocal nbytes
        for lineno, raw in _lines(path, gz, cfg.max_record_bytes):
            line = _too_large(f"{path}:{lineno}", cfg) if raw is None else _decode(raw, f"{path}:{lineno}")
            if isinstance(line, CorpusError):
                problems.append(line)
                line = "\n" if raw is None else raw.decode("utf-8", "replace")
            nbytes += len(raw or b"")
            yield line

    for start, row in read_rows(decoded(), delimiter):
        size, row_start = nbytes - row_start, nbytes
        if problems:
            yield start, problems[0]
            problems.clear()
        elif size > cfg.max_record_bytes:
            yield start, _too_large(f"{path}:{start}", cfg)
        else:
            yield start, row


def _delimited_records(path: Path, gz: bool, cfg: CorpusConfig, stem: str, delimiter: str) -> Iterator[tuple]:
    # The csv module refuses fields over 128 KiB by default; our own limit is the record size.
    csv.field_size_limit(max(csv.field_size_limit(), cfg.max_record_bytes))
    multiline = delimiter == "," or cfg.multiline_fields  # standard CSV lets quoted fields span lines
    rows = (_spanning_rows if multiline else _line_rows)(path, gz, cfg, delimiter)
    header: list[str] | None = None

    def column(m: Malformed) -> str:
        return header[m.index] if header and m.index is not None and m.index < len(header) else "record"

    try:
        for start, row in rows:
            where = f"{path}:{start}"
            if header is None:  # a problem in the header is one of the whole file
                if isinstance(row, Malformed):
                    raise row.at(where, CorpusError, field="header", whole_file=True)
                if isinstance(row, CorpusError):
                    raise CorpusError(str(row))
                header = [c.strip() for c in row]
                if not header:
                    return  # an empty file, reported by the caller
                _check_columns(where, header, cfg)
            elif isinstance(row, Malformed):
                yield where, None, row.at(where, CorpusError, field=column(row)), "text"
            elif isinstance(row, CorpusError):
                yield where, None, row, "text"
            elif row and len(row) != len(header):  # csv yields [] for a blank line
                problem = f"{len(row)} fields, the header has {len(header)}"
                if delimiter == "\t" and any("\t" in cell for cell in row):
                    problem += ' (a quoted field holds a tab: is a " unmatched?)'
                fix = "quote fields that contain the delimiter" + (" or line breaks" if multiline else "")
                yield where, None, _bad(where, "record", problem, fix, "bad_row"), "text"
            elif row:
                yield where, f"{stem}-{start}", {k: v for k, v in zip(header, row) if k in FIELDS}, "text"
    except Malformed as m:  # from a file read with multi-line fields: nothing after it can be trusted
        raise m.at(f"{path}:{m.pos}", CorpusError, field=column(m), whole_file=True) from None


def _parquet_records(path: Path, gz: bool, cfg: CorpusConfig, stem: str) -> Iterator[tuple]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        _check_columns(str(path), pf.schema_arrow.names, cfg)
        row = 0
        # Batches keep memory flat however large the file; only id/title/text are decoded.
        for batch in pf.iter_batches(batch_size=1024, columns=[c for c in pf.schema_arrow.names if c in FIELDS]):
            for rec in batch.to_pylist():
                yield f"{path}:row {row}", f"{stem}-{row}", rec, "text"
                row += 1
    except pa.ArrowException as e:
        raise _bad(str(path), "file", f"not a readable parquet file ({e})", "rewrite it with pyarrow") from None


def _slug(title: str) -> str:
    # Wikipedia's URL form: whitespace becomes underscores, case and punctuation stay, so distinct
    # titles stay distinct ids (a lower-case alphanumeric slug merges "Cell biology" and "Cell (biology)").
    return "_".join(title.split())


def _json_records(path: Path, gz: bool, cfg: CorpusConfig, stem: str) -> Iterator[tuple]:
    # A .json file is one JSON value, so it is read whole (SQuAD dev is 5 MB, the Wikipedia vital
    # summaries 7 MB); large corpora belong in jsonl or parquet, which are streamed. A list is parsed
    # one record at a time, so that a record too deep or holding too long a number is skipped by
    # itself; in the SQuAD and Wikipedia layouts such a value is an error of the file.
    text = decode_utf8(gzip.decompress(path.read_bytes()) if gz else path.read_bytes(), str(path), CorpusError)
    if not text.strip():
        return
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        if text.startswith("[", start):
            for i, (_, rec) in enumerate(iter_json_list(text, start)):
                where = f"{path}:[{i}]"
                yield where, f"{stem}-{i}", rec.at(where, CorpusError) if isinstance(rec, Malformed) else rec, "text"
            return
        obj = parse_json(text, "fix the file")
    except Malformed as m:
        raise m.at(f"{path}:{line_finder(text)(m.pos)}", CorpusError, field="file", whole_file=True) from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):  # SQuAD
        for a, article in enumerate(obj["data"]):
            where = f"{path}:data[{a}]"
            if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
                error = _bad(where, "paragraphs", "missing", "fix the SQuAD file", "not_an_object")
                yield where, None, error, "context"
                continue
            title = str(article.get("title") or "")
            doc_id = _slug(title) or f"{stem}-{a}"
            for p, para in enumerate(article["paragraphs"]):
                if isinstance(para, dict):
                    para = {"id": f"{doc_id}-p{p}", "title": title.replace("_", " "), "context": para.get("context")}
                yield f"{where}.paragraphs[{p}]", None, para, "context"
    elif isinstance(obj, dict) and all(isinstance(v, dict) for v in obj.values()):
        # Wikipedia vital summaries: {title: {"title", "extract", "description", "topic"}}
        for key, article in obj.items():
            title = str(article.get("title") or key)
            rec = {"id": _slug(title), "title": title, "extract": article.get("extract")}
            yield f"{path}:[{json.dumps(key, ensure_ascii=False)}]", None, rec, "extract"
    else:
        layouts = 'a list of records, SQuAD {"data": [...]} or Wikipedia summaries {title: {"extract": ...}}'
        raise _bad(str(path), "file", "unrecognised JSON layout", f"expected {layouts}")


_READERS = {
    ".jsonl": _jsonl_records,
    ".json": _json_records,
    ".tsv": functools.partial(_delimited_records, delimiter="\t"),
    ".csv": functools.partial(_delimited_records, delimiter=","),
    ".parquet": _parquet_records,
}


def _to_document(rec: Any, where: str, default_id: str | None, cfg: CorpusConfig, text_field: str) -> Document:
    """Check one parsed record and make it a Document, or raise CorpusError with a reason."""
    if not isinstance(rec, dict):
        problem = f"a JSON {type(rec).__name__}, not an object"
        raise _bad(where, "record", problem, "write one object per record", "not_an_object")
    text = rec.get(text_field)
    if text is None:
        problem = f"missing (fields: {', '.join(map(str, rec)) or 'none'})"
        raise _bad(where, text_field, problem, f"give every record a `{text_field}`", "missing_text")
    if not isinstance(text, str):
        problem = f"must be a string, got {type(text).__name__}"
        raise _bad(where, text_field, problem, "write the document as one string", "text_not_string")
    if not text.strip():
        raise _bad(where, text_field, "empty", "remove the record or fill it", "empty_text")
    unknown = [str(k) for k in rec if k not in ("id", "title", text_field)]
    if unknown and cfg.extra_fields == "error":
        problem = "unknown field(s) (expected id, title, text)"
        raise _bad(where, ", ".join(unknown), problem, "pass --extra-fields ignore to drop them", "unknown_fields")
    doc_id = rec.get("id")
    if doc_id is None or doc_id == "":
        doc_id = default_id
    elif isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    elif not isinstance(doc_id, str):
        raise _bad(where, "id", f"must be a string or integer, got {type(doc_id).__name__}", "fix the id", "bad_id")
    title = rec.get("title")
    if title is not None and not isinstance(title, str):
        raise _bad(where, "title", f"must be a string, got {type(title).__name__}", "fix the title", "bad_title")
    # Caught here, not when the passages are written, so that --on-error skip can drop the record.
    for field, value in ((text_field, text), ("title", title), ("id", doc_id)):
        if problem := surrogate_problem(value):
            raise _bad(where, field, problem, SURROGATE_FIX, "unpaired_surrogate")
    return Document(doc_id, title or "", text, where)  # type: ignore[arg-type]  # readers give an id or a default


def iter_documents(
    path: str | Path, cfg: CorpusConfig, stats: CorpusStats, seen: dict[str, str] | None = None
) -> Iterator[Document]:
    """Stream the documents of one input file, checking every record.

    Args:
        path: A document file (formats in the module docstring).
        cfg: Uses `on_error`, `extra_fields`, `max_record_bytes` and `multiline_fields`.
        stats: `documents` and `skipped` grow as records are read.
        seen: Document id -> the file it came from, shared across files so that ids are unique over
            all inputs; None checks this file alone.

    Raises:
        CorpusError: For a bad record (unless `cfg.on_error == "skip"`) and for a missing, empty,
            unreadable or unsupported file (always).
    """
    path = Path(path)
    ext, gz = _check_input(path)
    seen = {} if seen is None else seen
    name, stem = str(path), Path(path.name.removesuffix(".gz")).stem
    n_records = 0
    try:
        for where, default_id, rec, text_field in _READERS[ext](path, gz, cfg, stem):
            n_records += 1
            try:
                if isinstance(rec, CorpusError):
                    raise rec
                doc = _to_document(rec, where, default_id, cfg, text_field)
                if doc.id in seen:
                    problem = f"duplicate id {doc.id!r}, already used in {seen[doc.id]}"
                    raise _bad(where, "id", problem, "make ids unique across all inputs", "duplicate_id")
            except CorpusError as e:
                if cfg.on_error == "error" or e.reason is None:
                    raise
                stats.skipped[e.reason] = stats.skipped.get(e.reason, 0) + 1
                if (n := sum(stats.skipped.values())) <= _SHOWN_SKIPS:
                    log.warning("skipped %s%s", e, " (further skips are only counted)" if n == _SHOWN_SKIPS else "")
                continue
            seen[doc.id] = name  # one shared string per file, so the map costs little more than its keys
            stats.documents += 1
            yield doc
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise _bad(name, "file", f"cannot decompress ({e})", "check the download; `gzip -t` tests the file") from None
    if n_records == 0:
        raise _bad(name, "file", "holds no records", "remove it from --inputs or fill it")


def build_passages(cfg: CorpusConfig) -> CorpusStats:
    """The `radit corpus` stage: the documents of `cfg.inputs`, in order, chunked into `cfg.output`.

    The output appears only when complete: after any error a previous file there is as it was.

    Returns:
        Counts of documents, passages and skipped records.
    """
    if not cfg.inputs:
        raise CorpusError("--inputs: no document files given; pass one or more jsonl/json/tsv/csv/parquet files")
    for path in cfg.inputs:  # fail before a long run rather than at its last file
        _check_input(Path(path))
    stats, seen = CorpusStats(), {}
    with atomic_open(cfg.output) as out, progress_bar(desc="chunk documents", unit="doc") as bar:
        for path in cfg.inputs:
            for doc in iter_documents(path, cfg, stats, seen):
                passages = [
                    {"id": f"{doc.id}#{i}", "doc_id": doc.id, "title": doc.title, "text": chunk}
                    for i, chunk in enumerate(chunk_words(doc.text, cfg.max_words))
                ]
                out.write("".join(_to_json(p) + "\n" for p in passages))
                stats.passages += len(passages)
                bar.update()
        if stats.documents == 0:
            problem = f"every record was skipped ({stats.skipped})"
            raise CorpusError(f"--inputs: {problem}; rerun with --on-error error to see why")
    if stats.skipped:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items()))
        total = sum(stats.skipped.values())
        log.warning("skipped %d bad records (%s); rerun with --on-error error to stop at the first", total, counts)
    return stats


class PassageStore:
    """Passages of a jsonl file by row number, read from disk on demand: only the int64 byte offset
    of each line is held, so the corpus can be far larger than memory.

    Rows are the file's lines in order, skipping lines that hold only a line break. The store keeps no
    open file (each read opens one), so it is safe to share between threads and to pickle.
    """

    def __init__(self, path: str | Path, offsets: np.ndarray | None = None):
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise ValueError(f"{self.path}: a passages file must be uncompressed so that rows can be read by offset")
        self.offsets = self.scan_offsets(self.path) if offsets is None else np.asarray(offsets, dtype=np.int64)

    @staticmethod
    def scan_offsets(path: str | Path, block: int = 1 << 24) -> np.ndarray:
        """Byte offset of every non-blank line of `path`, as int64; reads 16 MiB at a time."""
        starts, pos = [np.zeros(1, dtype=np.int64)], 0
        with open(path, "rb") as f:
            while buf := f.read(block):
                newlines = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == ord("\n"))
                starts.append(newlines.astype(np.int64) + pos + 1)
                pos += len(buf)
        offsets = np.concatenate(starts)
        return offsets[np.diff(offsets, append=pos) > 1]  # drops blank lines and the end of the file

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, row: int) -> dict[str, Any]:
        return self.get_many([row])[0]

    def get_many(self, rows: Iterable[int]) -> list[dict[str, Any]]:
        """Passages of `rows`, in the order given; read in file order, through one open file."""
        n = len(self.offsets)
        rows = [int(r) for r in rows]
        out: list[Any] = [None] * len(rows)
        with open(self.path, "rb") as f:
            for i in sorted(range(len(rows)), key=rows.__getitem__):
                if not -n <= rows[i] < n:
                    raise IndexError(f"passage row {rows[i]} out of range: {self.path} has {n} passages")
                start = int(self.offsets[rows[i]])
                f.seek(start)
                line = f.readline()
                if not line.startswith(b"{"):
                    problem = f"row {rows[i]} (byte {start}) is not a passage"
                    raise ValueError(f"{self.path}: {problem}; the file changed after its offsets were taken")
                out[i] = json.loads(line)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every passage in file order, streamed (no offsets needed)."""
        with open(self.path, "rb") as f:
            for line in f:
                if len(line) > 1:  # the rule of scan_offsets: a lone b"\n" is a blank line
                    yield json.loads(line)

    def iter_ids(self) -> Iterator[str]:
        """Passage ids in file order, streamed."""
        for p in self:
            yield p["id"]
