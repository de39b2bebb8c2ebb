"""radit.corpus: chunking, every input format, every bad input, skip accounting, PassageStore."""

from __future__ import annotations

import gzip
import json
import logging
import pickle
import random
from pathlib import Path

import numpy as np
import pytest

from radit.config import CorpusConfig
from radit.corpus import CorpusError, CorpusStats, PassageStore, build_passages, chunk_words, iter_documents

# --------------------------------------------------------------------------------------------------
# chunk_words
# --------------------------------------------------------------------------------------------------


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def test_chunk_short_text_is_one_chunk_with_normalised_spaces():
    assert chunk_words("  a\tb\n\nc  ", 3) == ["a b c"]
    assert chunk_words("a b", 200) == ["a b"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_chunk_empty_text(text):
    assert chunk_words(text, 5) == []


def test_chunk_exact_multiple():
    chunks = chunk_words(words(400), 200)
    assert [len(c.split()) for c in chunks] == [200, 200]


def test_chunk_one_over_gives_two_near_equal_chunks():
    # The paper's equal chunks: 201 words -> 101 + 100, not 200 + 1.
    assert [len(c.split()) for c in chunk_words(words(201), 200)] == [101, 100]


def test_chunk_max_words_one():
    assert chunk_words("a b c", 1) == ["a", "b", "c"]


def test_chunk_rejects_max_words_below_one():
    with pytest.raises(ValueError, match="max_words"):
        chunk_words("a", 0)


@pytest.mark.parametrize("n,max_words", [(1000, 7), (999, 100), (17, 16), (5, 2), (3, 3), (1, 1), (250, 200)])
def test_chunk_sizes_and_order(n, max_words):
    chunks = chunk_words(words(n), max_words)
    sizes = [len(c.split()) for c in chunks]
    assert len(chunks) == -(-n // max_words)  # the fewest chunks under the limit
    assert max(sizes) <= max_words
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the first chunks take the extra words
    assert " ".join(chunks).split() == words(n).split()


def test_chunk_random_texts_keep_every_word():
    rng = random.Random(0)
    for _ in range(200):
        toks = [rng.choice(["a", "bb", "ccc", "é", "中"]) for _ in range(rng.randrange(0, 60))]
        text = rng.choice([" ", "  ", "\n", "\t"]).join(toks)
        m = rng.randrange(1, 12)
        chunks = chunk_words(text, m)
        assert " ".join(chunks).split() == toks
        assert all(1 <= len(c.split()) <= m for c in chunks)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

DOCS = [
    {"id": "ming", "title": "Ming dynasty", "text": "Zhu Yuanzhang founded the Ming."},
    {"id": "cafe", "title": "Café", "text": "Un  café\tcrème, 咖啡馆"},
    {"id": "long", "title": "", "text": words(9)},
]


def write_jsonl(path: Path, records, opener=open) -> Path:
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def write_delimited(path: Path, records, delimiter: str) -> Path:
    import csv

    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(["id", "title", "text"])
        for r in records:
            w.writerow([r["id"], r["title"], r["text"]])
    return path


def write_parquet(path: Path, records) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=2)  # several row groups
    return path


def run(tmp_path: Path, *inputs, **kwargs) -> tuple[CorpusStats, list[dict]]:
    out = tmp_path / "out" / "passages.jsonl"
    stats = build_passages(CorpusConfig(inputs=[str(p) for p in inputs], output=str(out), **kwargs))
    # split on b"\n" only: str.splitlines() would also break at U+2028 inside a passage
    return stats, [json.loads(line) for line in out.read_bytes().split(b"\n") if line]


EXPECTED = [
    {"id": "ming#0", "doc_id": "ming", "title": "Ming dynasty", "text": DOCS[0]["text"]},
    {"id": "cafe#0", "doc_id": "cafe", "title": "Café", "text": "Un café crème, 咖啡馆"},
    {"id": "long#0", "doc_id": "long", "title": "", "text": "w0 w1 w2 w3 w4"},
    {"id": "long#1", "doc_id": "long", "title": "", "text": "w5 w6 w7 w8"},
]

# --------------------------------------------------------------------------------------------------
# formats
# --------------------------------------------------------------------------------------------------

WRITERS = {
    "docs.jsonl": lambda p: write_jsonl(p, DOCS),
    "docs.jsonl.gz": lambda p: write_jsonl(p, DOCS, opener=gzip.open),
    "docs.json": lambda p: p.write_text(json.dumps(DOCS, indent=2), encoding="utf-8"),
    "docs.json.gz": lambda p: p.write_bytes(gzip.compress(json.dumps(DOCS).encode())),
    "docs.tsv": lambda p: write_delimited(p, DOCS, "\t"),
    "docs.csv": lambda p: write_delimited(p, DOCS, ","),
    "docs.csv.gz": lambda p: p.write_bytes(gzip.compress(write_delimited(p, DOCS, ",").read_bytes())),
    "docs.parquet": lambda p: write_parquet(p, DOCS),
}


@pytest.mark.parametrize("name", WRITERS)
def test_each_format_gives_the_same_passages(tmp_path, name):
    WRITERS[name](tmp_path / name)
    stats, passages = run(tmp_path, tmp_path / name, max_words=5)
    assert passages == EXPECTED
    assert stats.to_dict() == {"documents": 3, "passages": 4, "skipped": {}}


@pytest.mark.parametrize("name", WRITERS)
def test_output_is_byte_identical_across_runs(tmp_path, name):
    WRITERS[name](tmp_path / name)
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.jsonl"
        build_passages(CorpusConfig(inputs=[str(tmp_path / name)], output=str(out), max_words=5))
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_default_ids_int_ids_and_missing_title(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl.gz", [{"text": "a b c"}, "", {"id": 7, "text": "d"}, {"text": "e"}], gzip.open)
    _, passages = run(tmp_path, path)
    assert [(p["id"], p["doc_id"], p["title"]) for p in passages] == [
        ("docs-1#0", "docs-1", ""), ("7#0", "7", ""), ("docs-4#0", "docs-4", "")
    ]


def test_default_ids_of_csv_and_parquet_without_id_column(tmp_path):
    (tmp_path / "c.csv").write_text('text\n"multi\nline"\nsecond\n', encoding="utf-8")
    write_parquet(tmp_path / "p.parquet", [{"text": "x"}, {"text": "y"}, {"text": "z"}])
    _, passages = run(tmp_path, tmp_path / "c.csv", tmp_path / "p.parquet")
    # csv ids use the line a row starts on (the first row spans lines 2-3); parquet ids the row number
    assert [p["id"] for p in passages] == ["c-2#0", "c-4#0", "p-0#0", "p-1#0", "p-2#0"]
    assert [p["text"] for p in passages] == ["multi line", "second", "x", "y", "z"]


def test_squad_json_one_document_per_paragraph(tmp_path):
    squad = {
        "version": "1.1",
        "data": [
            {"title": "Super_Bowl_50", "paragraphs": [
                {"context": "Super Bowl 50 was an American football game.", "qas": [{"id": "q1", "question": "?", "answers": []}]},
                {"context": "The Broncos won.", "qas": []},
            ]},
            {"title": "Warsaw", "paragraphs": [{"context": words(7), "qas": []}]},
        ],
    }
    (tmp_path / "dev.json").write_text(json.dumps(squad), encoding="utf-8")
    stats, passages = run(tmp_path, tmp_path / "dev.json", max_words=4)
    assert [(p["id"], p["doc_id"], p["title"]) for p in passages] == [
        ("Super_Bowl_50-p0#0", "Super_Bowl_50-p0", "Super Bowl 50"),
        ("Super_Bowl_50-p0#1", "Super_Bowl_50-p0", "Super Bowl 50"),
        ("Super_Bowl_50-p1#0", "Super_Bowl_50-p1", "Super Bowl 50"),
        ("Warsaw-p0#0", "Warsaw-p0", "Warsaw"),
        ("Warsaw-p0#1", "Warsaw-p0", "Warsaw"),
    ]
    assert passages[3]["text"] == "w0 w1 w2 w3"
    assert stats.documents == 3


def test_wiki_vital_summaries(tmp_path):
    wiki = {
        title: {"title": title, "extract": extract, "description": "", "topic": "Science"}
        for title, extract in [
            ("Cell biology", "Cell biology studies cells."),
            ("Cell (biology)", "The cell is the basic unit of life."),
            ("Zürich", "Zürich is the largest city in Switzerland."),
        ]
    }
    (tmp_path / "summaries.json").write_text(json.dumps(wiki, indent=2, ensure_ascii=False), encoding="utf-8")
    _, passages = run(tmp_path, tmp_path / "summaries.json")
    # distinct titles stay distinct ids (a lower-case alphanumeric slug would merge the first two)
    assert [(p["id"], p["title"], p["text"]) for p in passages] == [
        ("Cell_biology#0", "Cell biology", "Cell biology studies cells."),
        ("Cell_(biology)#0", "Cell (biology)", "The cell is the basic unit of life."),
        ("Zürich#0", "Zürich", "Zürich is the largest city in Switzerland."),
    ]


def test_extra_fields_ignore_drops_them(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x y", "url": "http://a", "meta": {}}])
    (tmp_path / "d.tsv").write_text("id\ttext\turl\nb\tz\thttp://b\n", encoding="utf-8")
    _, passages = run(tmp_path, path, tmp_path / "d.tsv", extra_fields="ignore")
    assert passages == [
        {"id": "a#0", "doc_id": "a", "title": "", "text": "x y"},
        {"id": "b#0", "doc_id": "b", "title": "", "text": "z"},
    ]


def test_parquet_columns_follow_extra_fields(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [{"id": "a", "text": "x", "url": "u"}])
    with pytest.raises(CorpusError, match=r"d\.parquet: url: unknown column.*--extra-fields ignore"):
        run(tmp_path, path)
    _, passages = run(tmp_path, path, extra_fields="ignore")
    assert passages == [{"id": "a#0", "doc_id": "a", "title": "", "text": "x"}]
    no_text = write_parquet(tmp_path / "e.parquet", [{"id": "a", "body": "x"}])
    with pytest.raises(CorpusError, match=r"e\.parquet: text: no `text` column"):
        run(tmp_path, no_text)


def test_iter_documents_streams_with_sources(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "x"}, "", {"id": "b", "title": "T", "text": "y"}])
    stats = CorpusStats()
    docs = list(iter_documents(path, CorpusConfig(), stats))
    assert [(d.id, d.title, d.text, d.source) for d in docs] == [("a", "", "x", f"{path}:1"), ("b", "T", "y", f"{path}:3")]
    assert stats.documents == 2


# --------------------------------------------------------------------------------------------------
# bad inputs: (file name, content, where the error is, field, skip reason or None for file-level)
# --------------------------------------------------------------------------------------------------

GOOD = b'{"id": "ok", "text": "fine"}\n'
BAD = {
    "invalid_json": ("d.jsonl", GOOD + b'{"text": "unterminated\n', ":2:", "record", "invalid_json"),
    "not_an_object": ("d.jsonl", GOOD + b'["a", "list"]\n', ":2:", "record", "not_an_object"),
    "missing_text": ("d.jsonl", GOOD + b'{"id": "x", "txt": "typo"}\n', ":2:", "text", "missing_text"),
    "empty_text": ("d.jsonl", GOOD + b'{"id": "x", "text": " \\n "}\n', ":2:", "text", "empty_text"),
    "text_not_string": ("d.jsonl", GOOD + b'{"id": "x", "text": ["a"]}\n', ":2:", "text", "text_not_string"),
    "non_utf8": ("d.jsonl", GOOD + b'\n{"id": "x", "text": "caf\xe9"}\n', ":3:", "record", "non_utf8"),
    "too_large": ("d.jsonl", GOOD + b'{"id": "x", "text": "' + b"y" * 300 + b'"}\n', ":2:", "record", "too_large"),
    "duplicate_id": ("d.jsonl", GOOD + b'{"id": "ok", "text": "again"}\n', ":2:", "id", "duplicate_id"),
    "unknown_fields": ("d.jsonl", GOOD + b'{"id": "x", "text": "t", "url": "u"}\n', ":2:", "url", "unknown_fields"),
    "bad_id": ("d.jsonl", GOOD + b'{"id": 1.5, "text": "t"}\n', ":2:", "id", "bad_id"),
    "bad_title": ("d.jsonl", GOOD + b'{"id": "x", "title": 3, "text": "t"}\n', ":2:", "title", "bad_title"),
    "gz_invalid_json": ("d.jsonl.gz", gzip.compress(GOOD + b"{oops}\n"), ":2:", "record", "invalid_json"),
    "json_list_missing_text": ("d.json", b'[{"text": "a"}, {"title": "no text"}]', ":[1]:", "text", "missing_text"),
    "squad_missing_context": (
        "dev.json", json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "c"}, {"qas": []}]}]}).encode(),
        ":data[0].paragraphs[1]:", "context", "missing_text",
    ),
    "wiki_empty_extract": (
        "s.json", b'{"A": {"title": "A", "extract": "a"}, "B": {"title": "B", "extract": ""}}', ':["B"]:', "extract", "empty_text",
    ),
    "csv_non_utf8": ("d.csv", b'id,text\nok,fine\n"x","\xff"\n', ":3:", "record", "non_utf8"),
    "csv_wrong_field_count": ("d.csv", b'id,text\nok,fine\n"x\ny",a,b\n', ":3:", "record", "bad_row"),
    "tsv_empty_text": ("d.tsv", b"id\ttext\nok\tfine\nx\t\n", ":3:", "text", "empty_text"),
    # a tsv row is one line: an unmatched quote spoils its own row, not the rows after it
    "tsv_unclosed_quote": ("d.tsv", b'id\ttext\nok\tfine\nx\t"open\n', ":3:", "text", "unclosed_quote"),
    "tsv_bad_row": ("d.tsv", b"id\ttext\nok\tfine\nx\ty\rz\n", ":3:", "record", "bad_row"),
    "unpaired_surrogate": ("d.jsonl", GOOD + b'{"id": "x", "text": "a \\ud800 b"}\n', ":2:", "text", "unpaired_surrogate"),
    "surrogate_in_title": ("d.json", b'[{"text": "a"}, {"title": "\\udfff", "text": "b"}]', ":[1]:", "title", "unpaired_surrogate"),
    "cut_off_jsonl": ("d.jsonl", GOOD + b'{"id": "a", "text": "abc', ":2:", "record", "invalid_json"),
    # file-level: always errors, even with --on-error skip
    "empty_file": ("d.jsonl", b"", "d.jsonl:", "file", None),
    "blank_lines_only": ("d.jsonl", b"\n  \n", "d.jsonl:", "file", None),
    "empty_json_list": ("d.json", b"[]", "d.json:", "file", None),
    "header_only_csv": ("d.csv", b"id,text\n", "d.csv:", "file", None),
    "json_invalid": ("d.json", b'[\n{"text": "a"},\n{"text": }\n]', ":3:", "file", None),
    "json_lines_named_json": ("d.json", GOOD + GOOD, ":2:", "file", None),
    "json_unknown_layout": ("d.json", b'{"a": 1}', "d.json:", "file", None),
    "json_non_utf8": ("d.json", b'[\n{"text": "\xff"}]', ":2:", "file", None),
    "csv_without_text_column": ("d.csv", b"id,body\n1,x\n", ":1:", "text", None),
    "csv_unknown_column": ("d.csv", b"id,text,url\n1,x,u\n", ":1:", "url", None),
    # a quote left open to the end of a csv file swallowed every later row: nothing to skip to
    "csv_unclosed_at_eof": ("d.csv", b'id,text\nok,fine\nx,"open\ny,z\n', ":3:", "text", None),
    "tsv_header_unclosed": ("d.tsv", b'id\t"text\nok\tfine\n', ":1:", "header", None),
    "unknown_extension": ("d.txt", GOOD, "d.txt:", "file", None),
    "parquet_gz": ("d.parquet.gz", b"x", "d.parquet.gz:", "file", None),
    "corrupt_gzip": ("d.jsonl.gz", b"not gzip at all", "d.jsonl.gz:", "file", None),
    "corrupt_parquet": ("d.parquet", b"not parquet", "d.parquet:", "file", None),
}


def write_bad(tmp_path: Path, case: str) -> Path:
    name, content, *_ = BAD[case]
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", BAD)
def test_bad_input_names_file_line_and_field_and_writes_nothing(tmp_path, case):
    _, _, where, field, _ = BAD[case]
    path = write_bad(tmp_path, case)
    out = tmp_path / "out" / "passages.jsonl"
    with pytest.raises(CorpusError) as e:
        build_passages(CorpusConfig(inputs=[str(path)], output=str(out), max_record_bytes=200))
    msg = str(e.value)
    assert str(path) in msg and where in msg and f" {field}: " in msg, msg
    assert "; " in msg and "\n" not in msg  # one line: the problem, then what to do
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no temporary leftovers


@pytest.mark.parametrize("case", ["invalid_json", "non_utf8", "empty_file", "csv_without_text_column"])
def test_bad_input_leaves_a_previous_output_untouched(tmp_path, case):
    path = write_bad(tmp_path, case)
    out = tmp_path / "passages.jsonl"
    out.write_text("previous good file\n")
    with pytest.raises(CorpusError):
        build_passages(CorpusConfig(inputs=[str(path)], output=str(out), max_record_bytes=200))
    assert out.read_text() == "previous good file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "passages.jsonl"])


@pytest.mark.parametrize("case", [c for c, v in BAD.items() if v[4] is not None])
def test_skip_drops_the_bad_record_and_counts_it(tmp_path, case):
    reason = BAD[case][4]
    stats, passages = run(tmp_path, write_bad(tmp_path, case), on_error="skip", max_record_bytes=200)
    assert stats.skipped == {reason: 1}
    assert passages[0]["text"] in ("fine", "a", "c")
    assert stats.documents == len(passages) == 1


@pytest.mark.parametrize("case", [c for c, v in BAD.items() if v[4] is None])
def test_skip_never_skips_file_level_problems(tmp_path, case):
    with pytest.raises(CorpusError):
        run(tmp_path, write_bad(tmp_path, case), on_error="skip")


def test_skip_counts_every_reason_and_logs_the_totals(tmp_path, caplog):
    lines = [
        b'{"id": "a", "text": "one"}', b"{bad", b"{also bad", b"[1]", b'{"id": "x"}', b'{"text": ""}',
        b'{"id": "b", "text": "caf\xe9"}', b'{"id": "a", "text": "dup"}', b'{"id": "c", "text": "t", "extra": 1}',
        b'{"id": "d", "text": "' + b"z" * 500 + b'"}', b'{"id": "e", "text": "two"}',
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with caplog.at_level(logging.WARNING, logger="radit.corpus"):
        stats, passages = run(tmp_path, path, on_error="skip", max_record_bytes=200)
    assert [p["id"] for p in passages] == ["a#0", "e#0"]
    assert stats.skipped == {
        "invalid_json": 2, "not_an_object": 1, "missing_text": 1, "empty_text": 1, "non_utf8": 1,
        "duplicate_id": 1, "unknown_fields": 1, "too_large": 1,
    }
    summary = caplog.records[-1].getMessage()
    assert "skipped 9 bad records" in summary and "invalid_json: 2" in summary and "too_large: 1" in summary


def test_skipping_everything_is_an_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"{bad\n[1]\n")
    out = tmp_path / "p.jsonl"
    with pytest.raises(CorpusError, match="every record was skipped"):
        build_passages(CorpusConfig(inputs=[str(path)], output=str(out), on_error="skip"))
    assert not out.exists()


def test_duplicate_ids_across_files_name_both(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "one"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "y", "text": "two"}, {"id": "x", "text": "three"}])
    with pytest.raises(CorpusError) as e:
        run(tmp_path, a, b)
    assert f"{b}:2: id: duplicate id 'x', already used in {a}" in str(e.value)


def test_long_line_is_rejected_without_reading_it_whole(tmp_path):
    # The next record after an over-long line is still read from the right line.
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "' + b"x" * 5000 + b'"}\n{"id": "k", "text": "kept"}\n')
    stats, passages = run(tmp_path, path, on_error="skip", max_record_bytes=100)
    assert stats.skipped == {"too_large": 1} and passages[0]["id"] == "k#0"
    with pytest.raises(CorpusError, match="raise --max-record-bytes or split the document"):
        run(tmp_path, path, max_record_bytes=100)


def test_unmatched_quote_in_a_tsv_is_an_error_of_its_row(tmp_path):
    # The issue's case: before, row 2's field swallowed rows 3 and 4 (4 documents -> 2, exit 0).
    path = tmp_path / "d.tsv"
    path.write_text('id\ttext\n1\tone\n2\t"two\n3\tthree\n4\tfour\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r'd\.tsv:3: text: a field opens with " and is not closed on its line; .*--multiline-fields'):
        run(tmp_path, path)
    # the row is skipped by itself: the rows after it are read as they are
    stats, passages = run(tmp_path, path, on_error="skip")
    assert [p["text"] for p in passages] == ["one", "three", "four"]
    assert stats.skipped == {"unclosed_quote": 1}


@pytest.mark.parametrize("name, options", [("d.tsv", {"multiline_fields": True}), ("d.csv", {})])
def test_quote_open_to_the_end_of_the_file_is_never_skipped(tmp_path, name, options):
    # With multi-line fields (always, for csv) the open quote runs to the end of the file: every
    # row after it is lost, so skipping it would hide them. An error of the file, naming the line.
    delimiter = "\t" if name.endswith(".tsv") else ","
    path = tmp_path / name
    path.write_text(f'id{delimiter}text\n1{delimiter}one\n2{delimiter}"two\n3{delimiter}three\n4{delimiter}four\n', encoding="utf-8")
    for on_error in ("error", "skip"):
        with pytest.raises(CorpusError, match=rf"{name}:3: text: .*never closed.*swallowing every later row") as e:
            run(tmp_path, path, on_error=on_error, **options)
        assert e.value.reason is None


def test_dpr_psgs_w100_tsv_with_doubled_quotes(tmp_path):
    # DPR's psgs_w100.tsv: header id, text, title; a field holding quotes is quoted, its quotes doubled.
    path = tmp_path / "psgs_w100.tsv"
    path.write_bytes(
        b'id\ttext\ttitle\n'
        b'1\t"Aaron Aaron ( or ; ""Ah\xc3\xa4r\xc3\xb4n"") is a prophet"\tAaron\n'
        b'2\tSo Ahab said, "Go up" to the king\t"""Weird Al"" Yankovic"\n'
        b'3\t"He said ""hi"""\tGreeting\r\n'
    )
    stats, passages = run(tmp_path, path)
    assert [(p["id"], p["title"], p["text"]) for p in passages] == [
        ("1#0", "Aaron", 'Aaron Aaron ( or ; "Ah\u00e4r\u00f4n") is a prophet'),
        ("2#0", '"Weird Al" Yankovic', 'So Ahab said, "Go up" to the king'),  # a quote inside a field is kept
        ("3#0", "Greeting", 'He said "hi"'),
    ]
    assert stats.skipped == {}


def test_multiline_tsv_field_is_refused_unless_allowed(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text('id\ttext\na\t"line one\nline two"\nb\tsecond\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"d\.tsv:2: text: .*not closed on its line.*--multiline-fields"):
        run(tmp_path, path)
    _, passages = run(tmp_path, path, multiline_fields=True)
    assert [(p["id"], p["text"]) for p in passages] == [("a#0", "line one line two"), ("b#0", "second")]


DEEP = "[" * 100_000 + "]" * 100_000  # deeper than any recursion limit
LONG_INT = "7" * 5_000  # over Python's 4,300-digit limit for int()


@pytest.mark.parametrize("value, reason, problem", [(DEEP, "too_deep", "nested 100001 levels deep"),
                                                    (LONG_INT, "number_too_long", "an integer of more than 4300 digits")])
@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_deep_nesting_and_long_integers_are_bad_records(tmp_path, name, value, reason, problem):
    # Before: a RecursionError traceback, or Python's own ValueError with no file or line; neither skippable.
    records = ['{"id": "a", "text": "one"}', f'{{"id": "b", "text": "two", "extra": {value}}}', '{"id": "c", "text": "three"}']
    path = tmp_path / name
    path.write_text("\n".join(records) + "\n" if name.endswith(".jsonl") else "[" + ",\n".join(records) + "]", encoding="utf-8")
    with pytest.raises(CorpusError) as e:
        run(tmp_path, path, max_record_bytes=1 << 20)
    where = f"{path}:2: record: " if name.endswith(".jsonl") else f"{path}:[1]: record: "
    assert str(e.value).startswith(where + problem) and "; " in str(e.value) and e.value.reason == reason
    stats, passages = run(tmp_path, path, on_error="skip", extra_fields="ignore", max_record_bytes=1 << 20)
    assert [p["text"] for p in passages] == ["one", "three"] and stats.skipped == {reason: 1}


@pytest.mark.parametrize("value", [DEEP, LONG_INT])
def test_deep_or_long_value_in_a_squad_file_names_its_line(tmp_path, value):
    path = tmp_path / "dev.json"
    path.write_text('{"data": [\n{"title": "T", "paragraphs": [\n{"context": "c", "qas": ' + value + "}]}]}", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"dev\.json:3: file: "):
        run(tmp_path, path)


def test_cut_off_jsonl_line_is_reported_at_its_end(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(GOOD + b'{"id": "a", "text": "abc')  # the download stopped mid-record
    with pytest.raises(CorpusError, match=r"d\.jsonl:2: record: invalid JSON: cut off after column 24 inside a string opened at column 21"):
        run(tmp_path, path)


def test_csv_line_numbers_follow_multiline_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('id,text\na,"line one\nline two"\nb,\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=r"d\.csv:4: text: empty"):
        run(tmp_path, path)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_file_and_directory(tmp_path, kind):
    path = tmp_path / "docs.jsonl"
    if kind == "directory":
        path.mkdir()
    good = write_jsonl(tmp_path / "good.jsonl", DOCS)
    out = tmp_path / "p.jsonl"
    with pytest.raises(CorpusError, match=f"{path}: file: ") as e:
        # checked before any input is read, even when it is not the first
        build_passages(CorpusConfig(inputs=[str(good), str(path)], output=str(out)))
    assert ("does not exist" if kind == "missing" else "is a directory") in str(e.value)
    assert not out.exists()


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(CorpusError, match=r"\.jsonl.*\.json.*\.tsv.*\.csv.*\.parquet"):
        run(tmp_path, tmp_path / "d.txt")


def test_unknown_fields_message_suggests_ignore(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "a", "text": "t", "url": "u", "lang": "en"}])
    with pytest.raises(CorpusError, match=r"d\.jsonl:1: url, lang: unknown field.*--extra-fields ignore"):
        run(tmp_path, path)


def test_no_inputs_is_an_error(tmp_path):
    with pytest.raises(CorpusError, match="--inputs"):
        build_passages(CorpusConfig(inputs=[], output=str(tmp_path / "p.jsonl")))


# --------------------------------------------------------------------------------------------------
# PassageStore
# --------------------------------------------------------------------------------------------------

TRICKY = ["naïve café", "中文 文本 测试", "emoji 🎉 here", "line\u2028separator and\u0085next", 'quote " and \\ slash', "plain"]


@pytest.fixture
def store_file(tmp_path) -> Path:
    """A passages file as build_passages writes it, with non-ASCII rows (raw UTF-8, ensure_ascii=False)."""
    path = tmp_path / "passages.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(40):
            text = f"{TRICKY[i % len(TRICKY)]} {words(i % 7)}"
            record = {"id": f"d{i}#0", "doc_id": f"d{i}", "title": f"T{i} é", "text": text}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def test_store_random_access_equals_sequential_reading(store_file):
    store = PassageStore(store_file)
    # U+2028 and U+0085 are line breaks to str.splitlines() but not to a jsonl reader
    assert "\u2028" in store_file.read_text(encoding="utf-8")
    sequential = [json.loads(line) for line in store_file.read_bytes().split(b"\n") if line]
    assert len(store) == len(sequential) == 40
    assert list(store) == sequential
    assert [store[i] for i in range(len(store))] == sequential
    rows = np.random.default_rng(0).permutation(len(store))
    assert store.get_many(rows) == [sequential[r] for r in rows]
    assert store.get_many(range(3)) == sequential[:3]
    assert store.get_many([]) == []
    assert store[-1] == sequential[-1]
    assert list(store.iter_ids()) == [p["id"] for p in sequential]


def test_store_over_build_passages_output_has_stable_ids(tmp_path):
    docs = [{"id": "doc", "text": words(5)}, {"id": "other", "title": "Ü", "text": "中文 🎉"}]
    run(tmp_path, write_jsonl(tmp_path / "docs.jsonl", docs), max_words=2)
    store = PassageStore(tmp_path / "out" / "passages.jsonl")
    assert list(store.iter_ids()) == ["doc#0", "doc#1", "doc#2", "other#0"]
    assert [store[i]["text"] for i in range(len(store))] == ["w0 w1", "w2 w3", "w4", "中文 🎉"]
    assert store[3] == {"id": "other#0", "doc_id": "other", "title": "Ü", "text": "中文 🎉"}


def test_store_with_given_offsets_and_pickle(store_file):
    offsets = PassageStore.scan_offsets(store_file)
    assert offsets.dtype == np.int64 and offsets[0] == 0
    store = PassageStore(store_file, offsets)
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get_many([5, 1]) == store.get_many([5, 1])
    assert store[2] == clone[2]


def test_store_skips_blank_lines_and_lines_without_final_newline(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"id": "a#0"}\n\n{"id": "b#0"}\n{"id": "c#0"}')
    store = PassageStore(path)
    assert [store[i]["id"] for i in range(len(store))] == ["a#0", "b#0", "c#0"] == list(store.iter_ids())


def test_store_rejects_bad_rows_and_gzip(tmp_path, store_file):
    store = PassageStore(store_file)
    with pytest.raises(IndexError):
        store[len(store)]
    stale = PassageStore(store_file, np.array([0, 3], dtype=np.int64))
    with pytest.raises(ValueError, match="offsets"):
        stale[1]
    with pytest.raises(ValueError, match="uncompressed"):
        PassageStore(tmp_path / "p.jsonl.gz", np.zeros(0, dtype=np.int64))
