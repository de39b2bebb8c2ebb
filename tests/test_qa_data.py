"""The bundled quickstart data and the question-set readers of radit.data.qa."""

from __future__ import annotations

import gzip
import json
import logging
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from radit.data.qa import QUICKSTART_DIR, QUICKSTART_SETS, Question, load_questions, quickstart_documents
from radit.data.records import ReadStats

SPLITS = ("train", "dev", "test")


@pytest.fixture(scope="module")
def bundled() -> dict[str, list[Question]]:
    return {s: load_questions(f"quickstart:squad-open/{s}") for s in SPLITS}


@pytest.fixture(scope="module")
def squad_docs() -> dict[str, dict]:
    with gzip.open(quickstart_documents(), "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    assert all(set(d) == {"id", "title", "text"} and d["text"].strip() for d in docs)
    assert len({d["id"] for d in docs}) == len(docs)
    assert docs[0]["id"].startswith("squad:") and docs[-1]["id"].startswith("wiki:")  # SQuAD first, then Wikipedia
    return {d["id"]: d for d in docs if d["id"].startswith("squad:")}


# --- bundled data ------------------------------------------------------------------------------


def test_bundled_splits_load(bundled):
    assert set(QUICKSTART_SETS) == {f"squad-open/{s}" for s in SPLITS}
    counts = {s: len(qs) for s, qs in bundled.items()}
    assert sum(counts.values()) == 10_570  # every SQuAD v1.1 dev question, once
    assert counts["train"] > counts["test"] > counts["dev"] > 0
    ids = [q.id for qs in bundled.values() for q in qs]
    assert len(set(ids)) == len(ids)
    for qs in bundled.values():
        assert all(q.question and q.answers and len(q.positive_ids) == 1 and q.meta["title"] for q in qs)


def test_bundled_splits_are_disjoint_by_article(bundled):
    titles = {s: {q.meta["title"] for q in qs} for s, qs in bundled.items()}
    assert {s: len(t) for s, t in titles.items()} == {"train": 33, "dev": 5, "test": 10}
    assert not titles["train"] & titles["test"]
    assert not titles["train"] & titles["dev"]
    assert not titles["dev"] & titles["test"]


def test_bundled_positives_exist_and_hold_an_answer(bundled, squad_docs):
    assert len(squad_docs) == 2_067
    test = bundled["test"]
    for q in random.Random(0).sample(test, 300):
        (pid,) = q.positive_ids
        assert pid in squad_docs, q
        assert pid.startswith(f"squad:{q.meta['title']}:")
        assert any(a in squad_docs[pid]["text"] for a in q.answers), q


def test_sample_in_order_is_seeded_ordered_and_spans_the_dev_articles():
    from radit.data.qa import dev_questions, sample_in_order

    items = list(range(50))
    picked = sample_in_order(items, 10)
    assert picked == sorted(picked) and len(set(picked)) == 10
    assert picked == sample_in_order(items, 10) != sample_in_order(items, 10, seed=1)
    # the draw `radit eval --sample` has always made (its recorded runs stay reproducible)
    keep = set(random.Random(0).sample(range(50), 10))
    assert picked == [i for i in items if i in keep]
    assert sample_in_order(items, 80) == items
    # The bundled dev split is sorted by article: its first 100 questions are one article's; a sample of
    # 100 reaches all five.
    first = dev_questions("quickstart:squad-open/dev", 100, sample=False)
    sampled = dev_questions("quickstart:squad-open/dev", 100, sample=True)
    assert len(first) == len(sampled) == 100
    assert len({q.meta.get("title") for q in first}) == 1
    assert len({q.meta.get("title") for q in sampled}) == 5


def test_quickstart_readme_names_the_licence():
    readme = (QUICKSTART_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in readme and "scripts/make_quickstart_data.py" in readme


# --- file formats ------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_with_answers_answer_ids_and_meta(tmp_path):
    path = _write(tmp_path / "qs.jsonl", "\n".join([
        json.dumps({"id": "a", "question": " Who? ", "answers": ["x", "y"], "positive_ids": ["d1"], "type": "bridge"}),
        "",  # blank lines are skipped
        json.dumps({"question": "What?", "answer": ["z"]}),
        json.dumps({"id": 7, "question": "When?", "answer": "1999"}),
        json.dumps({"question": "Where?\u2028now"}),  # no answers: a plain query file
    ]) + "\n")
    qs = load_questions(str(path))
    assert qs == [
        Question("a", "Who?", ["x", "y"], ["d1"], {"type": "bridge"}),
        Question("qs-1", "What?", ["z"]),
        Question("7", "When?", ["1999"]),
        Question("qs-3", "Where?\u2028now", []),
    ]


def test_gzipped_jsonl(tmp_path):
    path = tmp_path / "nq.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"question": "q1", "answer": ["a1"]}) + "\n" + json.dumps({"question": "q2", "answer": ["a2"]}) + "\n")
    assert [(q.id, q.answers) for q in load_questions(str(path))] == [("nq-0", ["a1"]), ("nq-1", ["a2"])]


def test_json_list_hotpotqa_style(tmp_path):
    records = [
        {"question": "Were A and B the same?", "answer": "yes", "type": "comparison"},
        {"question": "Who built C?", "answer": "D", "type": "bridge"},
    ]
    path = _write(tmp_path / "hotpot.json", json.dumps(records, indent=1))
    qs = load_questions(str(path))
    assert [(q.id, q.question, q.answers, q.meta) for q in qs] == [
        ("hotpot-0", "Were A and B the same?", ["yes"], {"type": "comparison"}),
        ("hotpot-1", "Who built C?", ["D"], {"type": "bridge"}),
    ]
    gz = tmp_path / "hotpot.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_questions(str(gz)) == qs
    assert load_questions(str(_write(tmp_path / "empty.json", "[ ]")), limit=0) == []


def test_dpr_tsv_with_csv_quoted_rows(tmp_path):
    path = _write(tmp_path / "dev.tsv", "\n".join([
        "who sings does he love me with reba\t['Linda Davis']",
        "where was the mona lisa kept during ww2\t\"['the Ingres Museum', \"\"Château d'Amboise\"\"]\"",
        "",
        "a \"quoted\" word\t['yes', \"it's\"]",  # quotes mid-field stay as they are
    ]) + "\n")
    qs = load_questions(str(path))
    assert [(q.id, q.question, q.answers) for q in qs] == [
        ("dev-0", "who sings does he love me with reba", ["Linda Davis"]),
        ("dev-1", "where was the mona lisa kept during ww2", ["the Ingres Museum", "Château d'Amboise"]),
        ("dev-2", 'a "quoted" word', ["yes", "it's"]),
    ]
    gz = tmp_path / "dev.tsv.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_questions(str(gz)) == qs


def test_limit_keeps_the_first_n(tmp_path):
    path = _write(tmp_path / "qs.jsonl", "".join(json.dumps({"question": f"q{i}", "answers": [str(i)]}) + "\n" for i in range(10)))
    assert [q.id for q in load_questions(str(path), limit=3)] == ["qs-0", "qs-1", "qs-2"]
    assert len(load_questions(str(path), limit=100)) == 10
    assert len(load_questions("quickstart:squad-open/test", limit=5)) == 5
    with pytest.raises(ValueError, match="limit"):
        load_questions(str(path), limit=-1)


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_bundled_split_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"valid: quickstart:squad-open/train, quickstart:squad-open/dev, quickstart:squad-open/test"):
        load_questions("quickstart:squad-open/val")


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl: file not found; give a \.jsonl"):
        load_questions(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="unknown question file type '.csv'"):
        load_questions(str(_write(tmp_path / "qs.csv", "q,a\n")))
    with pytest.raises(ValueError, match="no questions"):
        load_questions(str(_write(tmp_path / "blank.jsonl", "\n\n")))


GOOD = json.dumps({"question": "ok?", "answers": ["ok"]})


@pytest.mark.parametrize(
    "bad_line, field, problem",
    [
        ('{"question": "q", "answers": ["a"]', "record", "invalid JSON"),
        ('["q", "a"]', "record", "not an object"),
        ('{"answers": ["a"]}', "question", "missing"),
        ('{"question": "  ", "answers": ["a"]}', "question", "empty"),
        ('{"question": 3, "answers": ["a"]}', "question", "must be a string"),
        ('{"question": "q", "answers": "a"}', "answers", "must be a list of strings"),
        ('{"question": "q", "answers": ["a", 2]}', "answers", "item 1 is int"),
        ('{"question": "q", "answer": [""]}', "answer", "item 0 is an empty string"),
        ('{"question": "q", "answers": ["a"], "positive_ids": "d"}', "positive_ids", "must be a list"),
        ('{"id": [1], "question": "q", "answers": ["a"]}', "id", "must be a string or integer"),
        ('{"id": "qs-0", "question": "q", "answers": ["a"]}', "id", "already used at"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, bad_line, field, problem):
    path = _write(tmp_path / "qs.jsonl", f"{GOOD}\n\n{bad_line}\n{GOOD}\n")
    with pytest.raises(ValueError) as e:
        load_questions(str(path))
    assert str(e.value).startswith(f"{path}:3: {field}: ")
    assert problem in str(e.value) and "; " in str(e.value)  # the problem, then what to do


def test_require_answers(tmp_path):
    path = _write(tmp_path / "qs.jsonl", f'{GOOD}\n{{"question": "no answers?"}}\n')
    assert load_questions(str(path))[1].answers == []
    with pytest.raises(ValueError, match=r"qs\.jsonl:2: answers: no answers"):
        load_questions(str(path), require_answers=True)


def test_bad_json_list_names_the_line_of_the_record(tmp_path):
    path = _write(tmp_path / "qs.json", f'[\n  {GOOD},\n  {{"question": ""}}\n]\n')
    with pytest.raises(ValueError, match=r"qs\.json:3 \(record 1\): question: empty"):
        load_questions(str(path))
    path = _write(tmp_path / "broken.json", f'[\n  {GOOD},\n  {{"question": }}\n]\n')
    with pytest.raises(ValueError, match=r"broken\.json:3: file: invalid JSON"):
        load_questions(str(path))
    path = _write(tmp_path / "obj.json", '{"data": []}')
    with pytest.raises(ValueError, match=r"obj\.json:1: file: .*not a list"):
        load_questions(str(path))


@pytest.mark.parametrize(
    "bad_row, field, problem",
    [
        ("q\t['a'", "answers", "not a Python list literal"),
        ("question\tanswers", "answers", "not a Python list literal"),  # a header row
        ("q\t'a'", "answers", "must be a list of strings"),
        ("q only", "row", "1 tab-separated columns"),
        ("\t['a']", "question", "empty"),
    ],
)
def test_bad_tsv_names_file_line_and_field(tmp_path, bad_row, field, problem):
    # the first row is CSV-quoted and spans two lines, so the bad row is on line 4
    path = _write(tmp_path / "dev.tsv", f"q1\t['a']\n\"multi\nline\"\t['b']\n{bad_row}\n")
    with pytest.raises(ValueError) as e:
        load_questions(str(path), multiline_fields=True)
    assert str(e.value).startswith(f"{path}:4: {field}: ")
    assert problem in str(e.value)


def test_bad_bytes_name_the_line(tmp_path):
    path = tmp_path / "qs.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"question": "caf\xe9?", "answers": ["x"]}\n')
    with pytest.raises(ValueError, match=r"qs\.jsonl:2: file: byte 0xe9 is not UTF-8"):
        load_questions(str(path))
    gz = tmp_path / "qs.jsonl.gz"
    gz.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a readable gzip file"):
        load_questions(str(gz))


# --- the real public files, where this checkout sees them ---------------------------------------

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "squad").is_dir(), reason=f"no public data at {SHARED}")


@needs_shared
@pytest.mark.parametrize(
    "rel, n",
    [("nq_open/test.jsonl", 3_610), ("nq_open/dev.tsv", 8_757), ("triviaqa/dev.tsv", 8_837), ("hotpotqa/dev.json", 7_405)],
)
def test_reads_the_public_question_sets(rel, n):
    qs = load_questions(str(SHARED / rel))
    assert len(qs) == n and all(q.question and q.answers for q in qs)


@needs_shared
def test_build_script_reproduces_the_bundle(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_quickstart_data.py"
    subprocess.run([sys.executable, str(script), "--shared", str(SHARED), "--out", str(tmp_path)], check=True, capture_output=True)
    built = sorted(p.name for p in tmp_path.iterdir())
    assert built == sorted(p.name for p in QUICKSTART_DIR.iterdir() if p.is_file())
    for name in built:
        assert (tmp_path / name).read_bytes() == (QUICKSTART_DIR / name).read_bytes(), name


# --- quoting, parser limits and on_error="skip" -------------------------------------------------


def test_unmatched_quote_in_a_tsv_spoils_only_its_row(tmp_path):
    path = _write(tmp_path / "dev.tsv", "q1\t['a']\n\"q2 opens a quote\t['b']\nq3\t['c']\nq4\t['d']\n")
    with pytest.raises(ValueError, match=r'dev\.tsv:2: question: a field opens with " and is not closed on its line; .*multiline_fields=True'):
        load_questions(str(path))
    stats = ReadStats()
    qs = load_questions(str(path), on_error="skip", stats=stats)
    # ids count the file's records, the bad one too, so skipping it leaves the others' ids unchanged
    assert [(q.id, q.question) for q in qs] == [("dev-0", "q1"), ("dev-2", "q3"), ("dev-3", "q4")]
    assert stats.kept == 3 and stats.skipped == {"unclosed_quote": 1}


def test_multiline_tsv_field_is_refused_unless_allowed(tmp_path):
    path = _write(tmp_path / "dev.tsv", "\"a question\nover two lines\"\t['x']\nq2\t['y']\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:1: question: .*not closed on its line"):
        load_questions(str(path))
    qs = load_questions(str(path), multiline_fields=True)
    assert [(q.id, q.question, q.answers) for q in qs] == [("dev-0", "a question\nover two lines", ["x"]), ("dev-1", "q2", ["y"])]


@pytest.mark.parametrize("on_error", ["error", "skip"])
def test_quote_open_to_the_end_of_a_multiline_tsv_is_never_skipped(tmp_path, on_error):
    path = _write(tmp_path / "dev.tsv", "q1\t['a']\nq2\t\"['b']\nq3\t['c']\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: answers: .*never closed.*swallowing every later row") as e:
        load_questions(str(path), multiline_fields=True, on_error=on_error)
    assert e.value.reason is None


DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = "7" * 5_000


def _three_records(tmp_path: Path, ext: str, bad: str) -> Path:
    records = ['{"question": "q0", "answers": ["a"]}', bad, '{"question": "q2", "answers": ["c"]}']
    text = "\n".join(records) + "\n" if ext == ".jsonl" else "[\n" + ",\n".join(records) + "\n]\n"
    return _write(tmp_path / f"qs{ext}", text)


@pytest.mark.parametrize("ext", [".jsonl", ".json"])
@pytest.mark.parametrize(
    "bad, field, reason, problem",
    [
        (f'{{"question": "q1", "answers": ["b"], "x": {DEEP}}}', "record", "too_deep", "nested 100001 levels deep"),
        (f'{{"question": "q1", "answers": ["b"], "x": {LONG_INT}}}', "record", "number_too_long", "more than 4300 digits"),
        ('{"question": "q1", "answers": ["\\ud800"]}', "answers", "unpaired_surrogate", "unpaired surrogate \\ud800"),
        ('{"question": "q1", "answers": ["b"], "note": "\\udc00"}', "note", "unpaired_surrogate", "unpaired surrogate"),
    ],
)
def test_parser_limits_are_bad_records_that_skip_drops(tmp_path, caplog, ext, bad, field, reason, problem):
    # Before: a RecursionError traceback, Python's ValueError without file or line, or a record that
    # could not be written later; none of them skippable.
    path = _three_records(tmp_path, ext, bad)
    with pytest.raises(ValueError) as e:
        load_questions(str(path))
    where = f"{path}:2: " if ext == ".jsonl" else f"{path}:3 (record 1): "
    assert str(e.value).startswith(f"{where}{field}: ") and problem in str(e.value) and "; " in str(e.value)
    stats = ReadStats()
    with caplog.at_level(logging.WARNING, logger="radit.data.qa"):
        qs = load_questions(str(path), on_error="skip", stats=stats)
    assert [q.question for q in qs] == ["q0", "q2"] and stats.skipped == {reason: 1}
    (warning,) = caplog.records
    assert f"{path}: skipped 1 bad records ({reason}: 1); the first: {where}" in warning.getMessage()


def test_cut_off_jsonl_line_is_reported_at_its_end(tmp_path):
    path = _write(tmp_path / "qs.jsonl", f'{GOOD}\n{{"question": "q", "answers": ["abc')
    with pytest.raises(ValueError, match=r"qs\.jsonl:2: record: invalid JSON: cut off after column 34 inside a string opened at column 31"):
        load_questions(str(path))


def test_tsv_answers_too_deep_or_too_long_are_bad_records(tmp_path):
    path = _write(tmp_path / "dev.tsv", f"q0\t['a']\nq1\t{'[' * 5000}\nq2\t['b', {LONG_INT}]\nq3\t['c']\n")
    with pytest.raises(ValueError, match=r"dev\.tsv:2: answers: not a Python list literal"):
        load_questions(str(path))
    stats = ReadStats()
    assert [q.question for q in load_questions(str(path), on_error="skip", stats=stats)] == ["q0", "q3"]
    assert stats.skipped == {"bad_answers": 2}


def test_skip_counts_reasons_and_respects_limit(tmp_path):
    lines = [GOOD, "{bad", '{"question": ""}', '["not", "an object"]', GOOD.replace("ok?", "two?"),
             '{"id": "qs-0", "question": "dup", "answers": ["x"]}', GOOD.replace("ok?", "three?")]
    path = _write(tmp_path / "qs.jsonl", "\n".join(lines) + "\n")
    stats = ReadStats()
    qs = load_questions(str(path), on_error="skip", stats=stats)
    assert [(q.id, q.question) for q in qs] == [("qs-0", "ok?"), ("qs-4", "two?"), ("qs-6", "three?")]
    assert stats.skipped == {"invalid_json": 1, "empty_question": 1, "not_an_object": 1, "duplicate_id": 1}
    assert stats.first_skipped.startswith(f"{path}:2: record: invalid JSON")
    # records after the limit are not read, so they are not counted either
    stats = ReadStats()
    assert len(load_questions(str(path), limit=2, on_error="skip", stats=stats)) == 2
    assert stats.skipped == {"invalid_json": 1, "empty_question": 1, "not_an_object": 1}


def test_skip_never_skips_problems_of_the_whole_file(tmp_path):
    broken = _write(tmp_path / "broken.json", f'[\n  {GOOD},\n  {{"question": }}\n]\n')
    with pytest.raises(ValueError, match=r"broken\.json:3: file: invalid JSON"):
        load_questions(str(broken), on_error="skip")
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(GOOD.encode() + b'\n{"question": "caf\xe9?", "answers": ["x"]}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: file: byte 0xe9 is not UTF-8"):
        load_questions(str(latin1), on_error="skip")
    all_bad = _write(tmp_path / "all_bad.jsonl", "{bad\n[1]\n")
    with pytest.raises(ValueError, match=r"every record was skipped \(invalid_json: 1, not_an_object: 1\)"):
        load_questions(str(all_bad), on_error="skip")
    with pytest.raises(ValueError, match="--on-error must be one of error, skip"):
        load_questions(str(all_bad), on_error="ignore")


# --- regular-expression answers (DPR's CuratedTREC) ----------------------------------------------


def test_regex_answers_from_jsonl_field_or_tsv_option(tmp_path):
    path = _write(tmp_path / "qs.jsonl", "\n".join([
        json.dumps({"question": "Who?", "answers": ["Ed(ward)?\\s+Gein"], "answer_type": "regex"}),
        json.dumps({"question": "What?", "answers": ["a.b"], "answer_type": "string"}),
        json.dumps({"question": "When?", "answers": ["1999"]}),
    ]) + "\n")
    qs = load_questions(str(path))
    assert [(q.answer_type, q.meta) for q in qs] == [("regex", {}), ("string", {}), ("string", {})]
    (pattern,) = qs[0].gold_answers
    assert isinstance(pattern, re.Pattern) and pattern.search("EDWARD  GEIN")
    assert qs[1].gold_answers == ["a.b"]
    # the option marks records that say nothing; a record's own answer_type wins
    assert [q.answer_type for q in load_questions(str(path), answers_are_regex=True)] == ["regex", "string", "regex"]
    # DPR's curatedtrec-test.txt: question<TAB>["regex", ...], backslashes and all
    trec = _write(tmp_path / "curatedtrec-test.tsv", 'who killed Kennedy\t["Lee\\s+Harvey\\s+Oswald", "Oswald"]\n')
    (q,) = load_questions(str(trec), answers_are_regex=True)
    assert q.answers == ["Lee\\s+Harvey\\s+Oswald", "Oswald"] and q.answer_type == "regex"


@pytest.mark.parametrize(
    "record, field, reason, problem",
    [
        ({"question": "q", "answers": ["19[0-9"], "answer_type": "regex"}, "answers", "invalid_regex", "not a valid regular expression"),
        ({"question": "q", "answers": ["x", "(a)?"], "answer_type": "regex"}, "answers", "invalid_regex", "item 1, '(a)?', matches an empty text"),
        ({"question": "q", "answer": ["x"], "answer_type": "glob"}, "answer_type", "bad_answer_type", "'glob' is not one of string, regex"),
    ],
)
def test_bad_regex_answers_name_file_line_and_field(tmp_path, record, field, reason, problem):
    path = _write(tmp_path / "qs.jsonl", f"{GOOD}\n{json.dumps(record)}\n")
    with pytest.raises(ValueError) as e:
        load_questions(str(path))
    assert str(e.value).startswith(f"{path}:2: {field}: ") and problem in str(e.value) and e.value.reason == reason
    stats = ReadStats()
    assert len(load_questions(str(path), on_error="skip", stats=stats)) == 1 and stats.skipped == {reason: 1}
