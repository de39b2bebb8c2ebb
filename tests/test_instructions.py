"""Instruction-data readers (radit.data.instructions) on small real records in their original formats."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from radit.data.instructions import (
    CATEGORIES,
    EVALUATED,
    FEVER_PROMPT,
    SOURCES,
    SUMMARIZE_PROMPT,
    evaluated_questions,
    load_instructions,
    read_bigbench,
    resolve_data_dir,
)
from radit.data.records import RecordError

DATA = Path(__file__).parent / "fixtures" / "data"

# What each registered source gives from tests/fixtures/data (the quickstart one reads the bundle).
EXPECTED = {
    "nq-open/dev": ("open-qa", 4), "entityquestions/train": ("open-qa", 4),
    "bigbench:quoref": ("reading", 2), "bigbench:cosmosqa": ("reading", 2), "bigbench:drop": ("reading", 2),
    "bigbench:qasc": ("reading", 2), "bigbench:multirc": ("reading", 2), "bigbench:ropes": ("reading", 2),
    "bigbench:strategyqa": ("reasoning", 3), "bigbench:social_iqa": ("reasoning", 3),
    "bigbench:qa_wikidata": ("knowledge", 3), "bigbench:general_knowledge": ("knowledge", 3),
    "bigbench:known_unknowns": ("knowledge", 3), "bigbench:fever": ("fact-check", 2),  # 1 of 3 is a FEVER dev claim
    "bigbench:xsum": ("summarize", 2), "bigbench:topical_chat": ("dialogue", 3),
}


def test_every_registered_source_is_tested():
    assert set(SOURCES) == set(EXPECTED) | {"quickstart:squad-open/train", "quickstart:squad-rc/train"}
    assert all(src.category in CATEGORIES for src in SOURCES.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_source_reads_its_real_format(name):
    data = load_instructions(name, data_dir=DATA)
    category, n = EXPECTED[name]
    assert len(data.examples) == n and data.stats.kept == n
    ids = [ex.id for ex in data.examples]
    assert len(set(ids)) == n
    for ex in data.examples:
        assert ex.source == name and ex.category == category
        assert ex.prompt_input.strip() and ex.target.strip()
        assert (ex.context is not None) == (category in ("reading", "summarize"))


def test_quickstart_train_first_answer():
    data = load_instructions("quickstart:squad-open/train")
    assert len(data.examples) == 7293
    ex = data.examples[0]
    assert ex.prompt_input == "What company owns the American Broadcasting Company?"
    assert ex.target == "The Walt Disney Company" and ex.context is None and ex.category == "open-qa"


def test_quickstart_reading_comprehension_gives_each_question_its_gold_paragraph():
    from radit.data.instructions import article_key

    open_qa = load_instructions("quickstart:squad-open/train").examples
    data = load_instructions("quickstart:squad-rc/train")
    assert [(ex.id, ex.prompt_input, ex.target) for ex in data.examples] == [(ex.id, ex.prompt_input, ex.target) for ex in open_qa]
    ex = data.examples[0]
    assert ex.category == "reading" and ex.context.startswith("American Broadcasting Company: The American Broadcasting")
    assert all(ex.target in ex.context for ex in data.examples)  # SQuAD answers are spans of their paragraph
    held_out = evaluated_questions(None).articles  # the SQuAD-open dev/test articles
    titles = {ex.context.split(": ", 1)[0] for ex in data.examples}
    assert len(titles) == 33 and not any(article_key(t) in held_out for t in titles)


def test_question_sets():
    nq = load_instructions("nq-open/dev", data_dir=DATA).examples
    assert (nq[0].prompt_input, nq[0].target) == ("who sings does he love me with reba", "Linda Davis")
    assert nq[3].target == "the Ingres Museum"  # the CSV-quoted row, first answer
    eq = load_instructions("entityquestions/train", data_dir=DATA).examples
    assert [ex.id.split("-")[0] for ex in eq] == ["P17.train"] * 2 + ["P19.train"] * 2  # relation files in sorted order
    assert eq[0].prompt_input == "Which country is Painblanc located in?" and eq[0].target == "France"


def test_reading_comprehension_split():
    quoref = load_instructions("bigbench:quoref", data_dir=DATA).examples[0]
    instruction, question = quoref.prompt_input.split("\n")
    assert instruction == "Answer the given question. Your answer must be a single span in the passage."
    assert question.startswith("What is the first name of the person who doubted")
    assert quoref.context.startswith("The earthquake swarm was noted")  # the "Passage:" label is gone
    assert "Question:" not in quoref.context and "Passage:" not in quoref.context
    assert quoref.target == "Catherine"  # BIG-bench's trailing period dropped
    drop = load_instructions("bigbench:drop", data_dir=DATA).examples[0]
    assert drop.prompt_input.endswith("How many field goals did Kris Brown kick?\nAnswer type: Number")
    assert drop.target == "3"
    ropes = load_instructions("bigbench:ropes", data_dir=DATA).examples[0]
    assert ropes.context.startswith("Background Paragraph: Passive transport") and "\nStory: A man put" in ropes.context
    assert ropes.prompt_input.endswith("\nWhich cup has a higher concentration of sugar?")


def test_reading_without_question_marker_keeps_whole_input(tmp_path):
    task = {"task_prefix": "Definition: x. Prompt: Summarise the passage in one word.",
            "examples": [{"input": "Passage: Cats sleep a lot.", "target": ["sleep."]}]}
    path = tmp_path / "task.json"
    path.write_text(json.dumps(task))
    data = read_bigbench(path, "t", "reading", SOURCES["bigbench:quoref"].adapt)
    ex = data.examples[0]
    assert ex.context == "Passage: Cats sleep a lot." and ex.prompt_input == "Summarise the passage in one word."
    assert data.notes == {"unsplit": 1}


def test_targets_and_choices():
    strategy = load_instructions("bigbench:strategyqa", data_dir=DATA).examples[0]
    assert strategy.target.startswith("Yes. College commencement")  # the rationale, not just the option
    social = load_instructions("bigbench:social_iqa", data_dir=DATA).examples[0]
    assert social.target == "Find somewhere to go"  # the option scored highest
    assert social.prompt_input.endswith("\nOptions: Make a new plan; Go home and see Riley; Find somewhere to go")
    wikidata = load_instructions("bigbench:qa_wikidata", data_dir=DATA).examples
    assert (wikidata[0].target, wikidata[1].target) == ("comedy", "English")  # a list target: its first; a string


def test_fever_claims_and_overlap_with_fever_dev():
    data = load_instructions("bigbench:fever", data_dir=DATA)
    assert data.dropped == {"overlaps_fever_dev": 1}
    assert all("Minogue" not in ex.prompt_input for ex in data.examples)
    ex = data.examples[0]
    assert ex.query == "Ukrainian Soviet Socialist Republic was a founding participant of the UN."
    assert ex.prompt_input == FEVER_PROMPT.format(claim=ex.query) and ex.target == "true"
    assert ex.id == "163803"


def test_summarization_and_dialogue():
    xsum = load_instructions("bigbench:xsum", data_dir=DATA).examples[0]
    assert xsum.prompt_input == SUMMARIZE_PROMPT
    assert xsum.context.startswith("Since late November, Scotland's five mountain resorts")
    assert xsum.target.startswith("Skiing on Scotland's snow slopes")
    chat = load_instructions("bigbench:topical_chat", data_dir=DATA).examples[1]
    assert chat.prompt_input == "agent_B: Are you a football fan?\nagent_A: yes, I'm. a football fan."
    assert chat.query == "Are you a football fan? yes, I'm. a football fan."  # the last (up to) three turns
    assert chat.target.startswith("Did you now that") and not chat.target.endswith('"')


# --- jsonl:PATH ---------------------------------------------------------------------------------


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return f"jsonl:{path}"


def test_jsonl_instruction_input_output(tmp_path):
    spec = _jsonl(tmp_path / "mine.jsonl", [
        {"instruction": "Give the capital.", "input": "France", "output": "Paris"},
        {"instruction": "Who founded it?", "output": "Zhu Yuanzhang", "id": "ming"},
        {"instruction": "Who won?", "context": "The Broncos beat the Panthers.", "output": "The Broncos"},
        {"instruction": "Summarize.", "context": "A long text.", "output": "Short.", "category": "summarize"},
    ])
    ex = load_instructions(spec).examples
    assert ex[0].prompt_input == "Give the capital.\nFrance" and ex[0].context is None and ex[0].category == "open-qa"
    assert ex[0].id == "mine-0" and ex[1].id == "ming"
    assert ex[2].category == "reading" and ex[2].context == "The Broncos beat the Panthers."
    assert ex[3].category == "summarize" and ex[0].source == spec


def test_jsonl_bad_records_error_and_skip(tmp_path):
    spec = _jsonl(tmp_path / "bad.jsonl", [
        {"instruction": "ok", "output": "fine"},
        '{"instruction": "cut off',
        {"instruction": "no output"},
        {"instruction": "x", "output": 3},
        {"instruction": "x", "output": "y", "category": "poetry"},
        {"instruction": "dup", "output": "a", "id": "mine"},
        {"instruction": "dup", "output": "b", "id": "mine"},
    ])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: record: invalid JSON"):
        load_instructions(spec)
    data = load_instructions(spec, on_error="skip")
    assert [ex.prompt_input for ex in data.examples] == ["ok", "dup"]
    assert data.stats.skipped == {"invalid_json": 1, "missing_output": 1, "bad_output": 1, "bad_category": 1, "duplicate_id": 1}
    with pytest.raises(RecordError, match="every record was skipped"):
        load_instructions(_jsonl(tmp_path / "all_bad.jsonl", [{"output": "x"}]), on_error="skip")
    with pytest.raises(FileNotFoundError, match="missing.jsonl: file not found"):
        load_instructions(f"jsonl:{tmp_path / 'missing.jsonl'}")


# --- BIG-bench errors -------------------------------------------------------------------------


def test_bigbench_bad_records_name_file_and_line(tmp_path):
    task = tmp_path / "task.json"
    task.write_text('{"name": "t",\n "examples": [\n  {"input": "q1", "target": "a1"},\n  {"input": "", "target": "a"},\n'
                    '  {"input": "q3"},\n  {"input": "q4", "target_scores": {"x": 0, "y": 1}}\n ]\n}\n')
    adapt = SOURCES["bigbench:strategyqa"].adapt
    with pytest.raises(RecordError, match=r"task\.json:4 \(example 1\): input: empty"):
        read_bigbench(task, "t", "reasoning", adapt)
    data = read_bigbench(task, "t", "reasoning", adapt, on_error="skip")
    assert [(ex.id, ex.target) for ex in data.examples] == [("0", "a1"), ("3", "y")]
    assert data.stats.skipped == {"empty_input": 1, "missing_target": 1}
    task.write_text('{"examples": [\n {"input": "q", "target": "a"}\n oops]}')
    with pytest.raises(RecordError, match=r"task\.json:3: file: invalid JSON"):
        read_bigbench(task, "t", "reasoning", adapt, on_error="skip")  # a broken file is never skipped


# --- hf:NAME ----------------------------------------------------------------------------------


def test_hf_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install datasets"):
        load_instructions("hf:tatsu-lab/alpaca")


def test_hf_maps_columns_and_refuses_evaluated_sets(monkeypatch):
    rows = {
        "tatsu-lab/alpaca": [{"instruction": "Name a colour.", "input": "", "output": "Red"}],
        "databricks/dolly": [{"instruction": "Who won?", "context": "The Broncos won.", "response": "The Broncos",
                              "category": "closed_qa"}],
        "rajpurkar/squad": [{"id": "q1", "question": "Where?", "context": "In Paris.",
                             "answers": {"text": ["Paris"], "answer_start": [3]}}],
    }

    def load_dataset(name, split):
        if name not in rows:
            raise ConnectionError("Couldn't reach the Hugging Face Hub")
        assert split == "train"
        return rows[name]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    alpaca = load_instructions("hf:tatsu-lab/alpaca").examples[0]
    assert (alpaca.prompt_input, alpaca.target, alpaca.context, alpaca.id) == ("Name a colour.", "Red", None, "0")
    dolly = load_instructions("hf:databricks/dolly:train").examples[0]
    assert (dolly.category, dolly.context, dolly.target) == ("reading", "The Broncos won.", "The Broncos")
    squad = load_instructions("hf:rajpurkar/squad").examples[0]
    assert (squad.id, squad.target, squad.context) == ("q1", "Paris", "In Paris.")
    with pytest.raises(ValueError, match="never trained on"):
        load_instructions("hf:rajpurkar/squad:validation")
    with pytest.raises(ValueError, match="never trained on"):
        load_instructions("hf:google-research-datasets/nq_open:validation")
    with pytest.raises(RuntimeError, match="hub reachable"):
        load_instructions("hf:someone/offline")


# --- registry, data folder, evaluated sets ------------------------------------------------------


def test_unknown_and_evaluated_specs():
    with pytest.raises(ValueError, match=r"unknown instruction source; valid: quickstart:squad-open/train, quickstart:squad-rc/train, nq-open/dev"):
        load_instructions("bigbench:nope")
    for spec in EVALUATED:
        assert spec not in SOURCES
        with pytest.raises(ValueError, match="never trained on"):
            load_instructions(spec)


def test_no_reader_reads_an_evaluated_file():
    evaluated_files = {"nq_open/test.jsonl", "triviaqa", "hotpotqa", "fever", "mmlu", "squad"}
    for name, src in SOURCES.items():
        assert src.path is None or not any(src.path.startswith(f) for f in evaluated_files), name
        assert "dev" not in name.split("/")[-1] or name == "nq-open/dev"  # NQ-open dev is DPR's, drawn from NQ train


def test_missing_data_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIT_DATA", raising=False)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=rf"data folder {missing} \(--data-dir\) does not exist.*\$RADIT_DATA"):
        load_instructions("bigbench:strategyqa", data_dir=missing)
    monkeypatch.setenv("RADIT_DATA", str(DATA))
    assert resolve_data_dir() == DATA
    with pytest.raises(FileNotFoundError, match=r"strategyqa/task\.json: the BIG-bench task of bigbench:strategyqa not found"):
        load_instructions("bigbench:strategyqa", data_dir=DATA / "nq_open")


def test_evaluated_questions(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIT_DATA", raising=False)
    bare = evaluated_questions(tmp_path / "nowhere")  # the bundled splits are always checked
    assert bare.checked == ["quickstart:squad-open/dev", "quickstart:squad-open/test"]
    assert set(bare.missing) == {"nq-open/test", "triviaqa/dev", "hotpotqa/dev", "fever/dev", "mmlu/test"}
    assert bare.find("what is the primary purpose of chloroplasts") == "quickstart:squad-open/dev"
    assert "nikola tesla" in bare.articles and "super bowl 50" not in bare.articles  # a train article
    full = evaluated_questions(DATA)
    assert "nq-open/test" in full.checked and "fever/dev" in full.checked
    assert full.find("Who sings Does He Love Me with Reba?") == "nq-open/test"
    assert full.find("Tilda Swinton is a vegan") == "fever/dev"
