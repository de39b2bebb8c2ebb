"""radit.eval.tasks beyond the harness: demonstrations that do not depend on where a file lies,
regex answers, and bad records of every task reader under on_error."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from radit.data.records import ReadStats
from radit.eval.metrics import exact_match, has_answer
from radit.eval.tasks import get_task, read_fever, read_mmlu_csv, read_qa


def _questions(path: Path, n: int, **extra) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": f"q{i}?", "answers": [f"a{i}"], **extra}) + "\n" for i in range(n)),
                    encoding="utf-8")
    return path


def test_qa_file_demonstrations_do_not_depend_on_where_the_files_lie(tmp_path):
    # Before, the shuffle's seed held the task name "qa-file:PATH": a renamed copy got other
    # demonstrations, and so other scores.
    questions, demos = _questions(tmp_path / "a" / "test.jsonl", 3), _questions(tmp_path / "a" / "demos.jsonl", 20)
    moved = tmp_path / "elsewhere" / "renamed"
    moved.mkdir(parents=True)
    shutil.copy(questions, moved / "other.jsonl")
    shutil.copy(demos, moved / "pool.jsonl")
    first = get_task(f"qa-file:{questions}", demos=str(demos)).demonstrations(5)
    second = get_task(f"qa-file:{moved / 'other.jsonl'}", demos=str(moved / "pool.jsonl")).demonstrations(5)
    assert [d.question for d in first] == [d.question for d in second]
    assert [d.question for d in first] != [f"q{i}?" for i in range(5)]  # still shuffled, not the file's head


def test_qa_file_task_with_regex_answers(tmp_path):
    trec = tmp_path / "curatedtrec-test.tsv"
    trec.write_text('who killed Kennedy\t["Lee\\s+Harvey\\s+Oswald"]\nwhat year\t["19[0-9]{2}"]\n', encoding="utf-8")
    task = get_task(f"qa-file:{trec}", answers_are_regex=True)
    first, second = task.load()
    assert first.answer_type == "regex" and isinstance(first.gold_answers[0], re.Pattern)
    assert exact_match("Lee Harvey Oswald", first.gold_answers) == 1.0 and exact_match("1963", second.gold_answers) == 1.0
    assert has_answer("... shot by lee harvey oswald from the ...", first.gold_answers)
    # without the option the patterns are plain text
    plain = get_task(f"qa-file:{trec}").load()[1]
    assert plain.answer_type == "string" and exact_match("1963", plain.gold_answers) == 0.0
    with pytest.raises(ValueError, match="--answers-are-regex applies to qa-file:PATH tasks"):
        get_task("squad-open", answers_are_regex=True)


def test_demonstrations_with_regex_answers_are_refused(tmp_path):
    questions = _questions(tmp_path / "test.jsonl", 2)
    demos = _questions(tmp_path / "demos.jsonl", 3, answer_type="regex")
    with pytest.raises(ValueError, match="has regex answers; give --demos FILE with plain-text answers"):
        get_task(f"qa-file:{questions}", demos=str(demos)).demonstrations(2)


def test_qa_file_task_skips_bad_records(tmp_path, caplog):
    path = tmp_path / "qs.jsonl"
    path.write_text('{"question": "q0?", "answers": ["a"]}\n{"question": "q1?", "answers": ["b"], "x": '
                    + "[" * 100_000 + "]" * 100_000 + '}\n{"question": "q2?", "answers": ["c"]}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"qs\.jsonl:2: record: nested"):
        get_task(f"qa-file:{path}").load()
    with caplog.at_level(logging.WARNING):
        examples = get_task(f"qa-file:{path}", on_error="skip").load()
    assert [e.question for e in examples] == ["q0?", "q2?"]
    assert "skipped 1 bad records (too_deep: 1)" in caplog.text
    stats = ReadStats()
    assert len(read_qa(str(path), on_error="skip", stats=stats)) == 2 and stats.skipped == {"too_deep": 1}
    with pytest.raises(ValueError, match="--on-error must be one of"):
        get_task(f"qa-file:{path}", on_error="warn")


def test_fever_reader_bad_lines_name_file_and_line_and_can_be_skipped(tmp_path):
    path = tmp_path / "dev.jsonl"
    lines = [
        {"id": 1, "label": "SUPPORTS", "claim": "A is B."},
        '{"id": 2, "label": "REFUTES", "claim": ' + "[" * 100_000 + "]" * 100_000 + "}",  # was a RecursionError
        '["not", "an object"]',  # was an AttributeError
        {"id": 4, "label": "MAYBE", "claim": "C."},
        {"id": 5, "label": "NOT ENOUGH INFO", "claim": "D."},
        {"id": 6, "label": "REFUTES", "claim": "E is F."},
    ]
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"dev\.jsonl:2: record: nested .*; flatten"):
        read_fever(path)
    stats = ReadStats()
    examples, dropped = read_fever(path, "skip", stats)
    assert [(e.id, e.label) for e in examples] == [("1", "true"), ("6", "false")] and dropped == 1
    assert stats.skipped == {"too_deep": 1, "not_an_object": 1, "bad_label": 1}
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": 1, "label": "SUPPORTS", "claim": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"latin1\.jsonl:1: file: byte 0xe9 is not UTF-8"):
        read_fever(latin1, "skip")


def test_mmlu_reader_quote_open_to_the_end_and_bad_rows(tmp_path):
    path = tmp_path / "astronomy_test.csv"
    path.write_text('Q1?,a,b,c,d,A\n"Q2 opens a quote?,a,b,c,d,B\nQ3?,a,b,c,d,C\n', encoding="utf-8")
    # before: the open quote swallowed Q3 and the file read as one good row
    with pytest.raises(ValueError, match=r"astronomy_test\.csv:2: row: .*never closed"):
        read_mmlu_csv(path, "skip")
    path.write_text('Q1?,a,b,c,d,A\nQ2?,a,b,c,d,E\n"Q3,\nover two lines?",a,b,c,d,C\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"astronomy_test\.csv:2: answer: 'E' is not one of A, B, C, D; fix"):
        read_mmlu_csv(path)
    examples = read_mmlu_csv(path, "skip")
    assert [(e.id, e.question, e.label) for e in examples] == [("astronomy-0", "Q1?", "A"), ("astronomy-2", "Q3,\nover two lines?", "C")]
    path.write_bytes(b"Q1?,a,b,c,d,A\nQ\xe92?,a,b,c,d,B\n")
    with pytest.raises(ValueError, match=r"astronomy_test\.csv:2: file: byte 0xe9 is not UTF-8"):
        read_mmlu_csv(path)
