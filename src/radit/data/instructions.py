"""Instruction data for LM fine-tuning (RA-IT): readers of the public instruction sets, one registry.

    from radit.data.instructions import SOURCES, load_instructions
    squad = load_instructions("quickstart:squad-open/train")              # bundled, offline
    squad_rc = load_instructions("quickstart:squad-rc/train")             # the same, gold paragraph as Background
    quoref = load_instructions("bigbench:quoref", data_dir="../shared/data")
    mine = load_instructions("jsonl:my_instructions.jsonl")

Every reader returns `InstructionExample`s: a prompt input (question or instruction), its target, and
for reading comprehension and summarisation the example's own passage (`context`), which goes into
the Background field instead of a retrieved chunk (RA-DIT §2.3). A spec is a `SOURCES` key, or:

- `jsonl:PATH`: one `{"instruction", "input"?, "output"}` object per line (Alpaca style; optional
  `id`, `context`, `category`). `input` is more input to the instruction, as in Alpaca, not a passage:
  the prompt is `instruction + "\\n" + input` and the example retrieves its Background like an open
  question. A passage the answer must be read from goes in `context` (then the category defaults
  to `reading`, and the passage is the Background).
- `hf:NAME[:split]` (default split `train`): a Hugging Face data set through the `datasets` library
  (not a radit dependency: `pip install datasets`; needs the hub or a warm cache). Columns are mapped
  by name: instruction/input/output (Alpaca), instruction/context/response (Dolly), question/answer(s)
  with an optional context/passage, prompt/completion.

BIG-bench reading-comprehension tasks (`natural_instructions/subtask0xx_*`) hold the passage inside
`input`, always as `<label>: <passage> \\nQuestion: <question>[ \\nAnswer type: ...]`. The input is
split at its last `\\nQuestion:`: the part before (less a leading `Passage:` / `Context:` / `Fact:` /
`Paragraph-` label; ROPES keeps its `Background Paragraph:` and `Story:` labels) is the context, and
the prompt is the task's short instruction (the text after `Prompt:` in its `task_prefix`), a line
break, then the question without its `Question:` label (the template adds its own marker), e.g.
`Answer the given question. ...\\nWhat is the first name of ...?` (Table 10: `{instruction}{question}`).
The trailing period BIG-bench's copy adds to every answer ("Catherine.") is dropped. An input without
the marker keeps the whole input as context and the instruction alone as the prompt (counted in
`notes` as `unsplit`; none of the six subtasks of the public data has one).

Other BIG-bench tasks: `target` is used when given (StrategyQA's answer with its rationale, the
chain-of-thought target), else the option of `target_scores` scored highest; tasks that show their
options (`append_choices_to_input`) get `\\nOptions: a; b; c` after the input. FEVER claims are asked
as `radit eval`'s fever template asks them (`Is this statement true? "<claim>"`, true/false) and
retrieve with the claim alone; Topical-Chat turns become one `agent_X: <turn>` line each, the reply
is the target and the last three turns the retrieval query; XSum's article is the context of a
`Summarize this article:` prompt.

The sets `radit eval` scores are never sources: SQuAD-open dev/test, NQ-open test, TriviaQA dev,
HotpotQA dev, MMLU test and FEVER dev have no reader here, and `evaluated_questions` lists their
questions for the builder's leakage check (`radit.train.lm_data`). BIG-bench `fact_checker/fever`
claims that are also FEVER dev claims (same text after normalisation) are dropped and counted.

Public data sets come from a data folder: `data_dir`, else `$RADIT_DATA`, else `../shared/data`.
Bad records are errors `<file>:<line>: <field>: <problem>; <what to do>`; with `on_error="skip"`
they are dropped and counted (`radit.data.records.ReadStats`).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from radit.answers import normalize_answer
from radit.data import folder
from radit.data.folder import DATA_ENV, require
from radit.data.qa import QUICKSTART_PREFIX, load_questions, quickstart_documents
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
    surrogate_problem,
)

log = logging.getLogger(__name__)

CATEGORIES = ("open-qa", "reading", "summarize", "reasoning", "fact-check", "dialogue", "knowledge")
"""RA-DIT's dataset categories (Table 1), plus `knowledge` (cloze facts) and `fact-check`. Examples of
`reading` and `summarize` carry their own context; the others retrieve their Background."""
OWN_CONTEXT = ("reading", "summarize")
"""The categories whose examples bring their own Background (their `context`)."""
JSONL_PREFIX = "jsonl:"
HF_PREFIX = "hf:"
SUMMARIZE_PROMPT = "Summarize this article:"
FEVER_PROMPT = 'Is this statement true? "{claim}"'
"""The BIG-bench claim asked as `radit eval`'s fever template asks it, with its answers true/false."""

EVALUATED = {
    "quickstart:squad-open/dev": "the dev split of `radit train-lm` and the SQuAD-open dev set",
    "quickstart:squad-open/test": "`radit eval --task squad-open`",
    "nq-open/test": "`radit eval --task nq-open`",
    "triviaqa/dev": "`radit eval --task triviaqa`",
    "hotpotqa/dev": "`radit eval --task hotpotqa`",
    "fever/dev": "`radit eval --task fever`",
    "mmlu/test": "`radit eval --task mmlu`",
}
"""Sets that are scored, so never trained on: asking for one as a source is an error saying why."""

# Hugging Face data sets (name suffix, split) that hold an evaluated set: SQuAD-open is SQuAD v1.1 dev.
_EVALUATED_HF = {
    ("squad", "validation"), ("squad_v2", "validation"), ("nq_open", "validation"), ("trivia_qa", "validation"), ("hotpot_qa", "validation"),
    ("fever", "paper_dev"), ("fever", "labelled_dev"), ("mmlu", "test"),
}


@dataclasses.dataclass
class InstructionExample:
    """One instruction example (x_i, y_i) of D_L, before retrieval."""

    id: str
    """Unique within its source."""
    source: str
    """The spec it was read from (a `SOURCES` key, `jsonl:PATH` or `hf:NAME[:split]`)."""
    category: str
    """One of CATEGORIES."""
    prompt_input: str
    """The question or instruction, what the template's `{question}` holds."""
    target: str
    """The answer text y_i (its first gold answer where there are several)."""
    context: str | None = None
    """The example's own passage (reading comprehension, summarisation): the Background, instead of a
    retrieved chunk. None: the Background is retrieved."""
    query: str | None = None
    """What the retriever searches with and the leakage check compares, when not `prompt_input`
    (a FEVER claim without the question around it; the last turn of a dialogue)."""

    @property
    def retrieval_query(self) -> str:
        return self.query or self.prompt_input


@dataclasses.dataclass
class InstructionSet:
    """What one source gave: its examples, the bad records skipped, the examples dropped on purpose."""

    source: str
    examples: list[InstructionExample]
    stats: ReadStats = dataclasses.field(default_factory=ReadStats)
    """Examples kept, and bad records skipped under on_error="skip" (by reason)."""
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    """Good records left out on purpose, by reason (e.g. `overlaps_fever_dev`)."""
    notes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Records read in a fallback way, by kind (e.g. `unsplit`: a reading-comprehension input whose
    question could not be separated from its passage)."""


Reader = Callable[[str, "Source", Path | None, str], InstructionSet]


@dataclasses.dataclass(frozen=True)
class Source:
    """A registered instruction set: where it lives and how it is read."""

    category: str
    path: str | None
    """File or folder relative to the data folder; None for a bundled set."""
    read: Reader = dataclasses.field(repr=False)
    description: str = ""
    adapt: Callable[..., dict[str, Any]] | None = dataclasses.field(default=None, repr=False)
    """BIG-bench: turns (input, target, task) into the example's fields."""


# --------------------------------------------------------------------------------------------------
# Data folder
# --------------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: str | Path | None = None, need: str = "the public data sets") -> Path:
    """The folder of the public data sets (`radit.data.folder.resolve_data_dir`), for `need`."""
    return folder.resolve_data_dir(
        data_dir,
        holds=f"{need} (nq_open/, entityquestions/, instructions/ in their original formats)",
        instead="use the bundled quickstart:squad-open/train or a jsonl:PATH source",
    )


# --------------------------------------------------------------------------------------------------
# Shared checks
# --------------------------------------------------------------------------------------------------


def _text_field(rec: dict[str, Any], field: str, where: str, fix: str, *, required: bool = True) -> str | None:
    value = rec.get(field)
    if value is None and not required:
        return None
    if value is None:
        raise bad(where, field, f"missing (fields: {', '.join(map(str, rec)) or 'none'})", fix, f"missing_{field}")
    if not isinstance(value, str):
        raise bad(where, field, f"must be a string, got {type(value).__name__}", fix, f"bad_{field}")
    if not value.strip():
        if not required:
            return None
        raise bad(where, field, "empty", fix, f"empty_{field}")
    if problem := surrogate_problem(value):
        raise bad(where, field, problem, SURROGATE_FIX, "unpaired_surrogate")
    return value.strip()


def _record_id(rec: dict[str, Any], where: str, default: str) -> str:
    rid = rec.get("id")
    if rid is None or rid == "":
        return default
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)
    if not isinstance(rid, str):
        raise bad(where, "id", f"must be a string or integer, got {type(rid).__name__}", "fix the id, or leave it out", "bad_id")
    return rid


def _collect(source: str, records: Iterator[tuple[str, Any]], make: Callable[[Any, str], InstructionExample],
             on_error: str, path: str) -> InstructionSet:
    """Examples from (where, record-or-RecordError) pairs: bad ones raise or are counted, ids unique."""
    out = InstructionSet(source, [])
    seen: dict[str, str] = {}
    for where, rec in records:
        try:
            if isinstance(rec, RecordError):
                raise rec
            ex = make(rec, where)
            if ex.id in seen:
                raise bad(where, "id", f"{ex.id!r} was already used at {seen[ex.id]}", "give every record a distinct id", "duplicate_id")
        except RecordError as e:
            if on_error == "error" or e.reason is None:
                raise
            out.stats.skip(e)
            continue
        seen[ex.id] = where
        out.examples.append(ex)
    out.stats.kept = len(out.examples)
    out.stats.warn(log, path)
    if not out.examples:
        if out.stats.skipped:
            raise RecordError(f"{path}: file: every record was skipped ({out.stats.counts()}); rerun with --on-error error to see why")
        raise RecordError(f"{path}: file: no examples; check the file")
    return out


# --------------------------------------------------------------------------------------------------
# Question sets (radit.data.qa formats): open QA, the first gold answer as target
# --------------------------------------------------------------------------------------------------


def _read_questions(name: str, src: Source, root: Path | None, on_error: str) -> InstructionSet:
    if src.path is None:
        files = [name]  # a bundled quickstart split, a load_questions spec
    else:
        assert root is not None
        path = require(root / src.path, name)
        files = [str(p) for p in sorted(path.glob("P*.train.jsonl"))] if path.is_dir() else [str(path)]
        if not files:
            raise FileNotFoundError(f"{path}: no P*.train.jsonl files; check --data-dir (or ${DATA_ENV})")
    out = InstructionSet(name, [])
    for spec in files:
        # The first answer is the target; load_questions rejects records without one (require_answers).
        for q in load_questions(spec, require_answers=True, on_error=on_error, stats=out.stats):
            out.examples.append(InstructionExample(q.id, name, src.category, q.question, q.answers[0]))
    return out


def _bundled_paragraphs() -> dict[str, str]:
    """The bundled SQuAD paragraphs by document id, each as a Background shows a retrieved chunk
    (`title: text`, as `radit.augment.chunk_text` writes it)."""
    paragraphs: dict[str, str] = {}
    with gzip.open(quickstart_documents(), "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["id"].startswith("squad:"):
                paragraphs[doc["id"]] = f"{doc['title']}: {doc['text']}" if doc.get("title") else doc["text"]
    return paragraphs


def _read_squad_reading(name: str, src: Source, root: Path | None, on_error: str) -> InstructionSet:
    """SQuAD as reading comprehension (the paper's LM-ft mixture reads SQuAD v2 so): the bundled
    SQuAD-open train questions, each with its gold paragraph, from the training articles only."""
    paragraphs = _bundled_paragraphs()
    out = InstructionSet(name, [])
    for q in load_questions(QUICKSTART_PREFIX + "squad-open/train", require_answers=True, on_error=on_error, stats=out.stats):
        gold = next((paragraphs[i] for i in q.positive_ids if i in paragraphs), None)
        if gold is None:
            out.dropped["no_gold_paragraph"] = out.dropped.get("no_gold_paragraph", 0) + 1
            continue
        out.examples.append(InstructionExample(q.id, name, src.category, q.question, q.answers[0], context=gold))
    return out


# --------------------------------------------------------------------------------------------------
# BIG-bench task.json
# --------------------------------------------------------------------------------------------------

_PASSAGE_LABEL = re.compile(r"^\s*(?:Passage|Context|Fact|Paragraph)\s*[:-]\s*")
_QUESTION_MARK = "\nQuestion:"
_FEVER_INPUT = re.compile(r"^On .*?, the following claim was made: (?P<claim>.*)\nQ: Was this claim true or false\?\s*$", re.S)
_TURN = re.compile(r"(agent_[AB]): ")


def _unquote(text: str) -> str:
    text = text.strip()
    return text[1:-1].strip() if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _with_choices(text: str, rec: dict[str, Any], task: dict[str, Any]) -> str:
    """The input, with the options listed when the task shows them to the model (append_choices_to_input)."""
    scores = rec.get("target_scores")
    if not task.get("append_choices_to_input") or not isinstance(scores, dict):
        return text
    return text.rstrip() + "\nOptions: " + "; ".join(str(k) for k in scores)


def _adapt_plain(text: str, target: str, rec: dict[str, Any], task: dict[str, Any], where: str) -> dict[str, Any]:
    return {"prompt_input": _with_choices(text, rec, task), "target": target}


def _adapt_reading(text: str, target: str, rec: dict[str, Any], task: dict[str, Any], where: str) -> dict[str, Any]:
    prefix = str(task.get("task_prefix") or "")
    instruction = prefix.rsplit("Prompt:", 1)[-1].strip() if "Prompt:" in prefix else ""
    cut = text.rfind(_QUESTION_MARK)
    if cut < 0:
        # No question to separate: the whole input is the passage, and the instruction the prompt.
        if not instruction:
            raise bad(where, "input", "no `\\nQuestion:` in the input and no instruction in the task", "fix the record", "bad_input")
        return {"prompt_input": instruction, "target": target, "context": text, "unsplit": True}
    context = _PASSAGE_LABEL.sub("", text[:cut], count=1).strip()
    # The template puts its own question marker before the prompt, so the input's `Question:` label goes.
    question = "\n".join(line.strip() for line in text[cut + len(_QUESTION_MARK):].split("\n") if line.strip())
    if not context or not question:
        raise bad(where, "input", "empty passage or question around `\\nQuestion:`", "fix or remove the record", "bad_input")
    # BIG-bench's copy of Natural Instructions ends every answer with a period ("Catherine.", "3."),
    # which the original answers and radit's evaluation answers do not have.
    target = target[:-1].rstrip() if target.endswith(".") and len(target) > 1 else target
    return {"prompt_input": f"{instruction}\n{question}" if instruction else question, "target": target, "context": context}


def _adapt_fever(text: str, target: str, rec: dict[str, Any], task: dict[str, Any], where: str) -> dict[str, Any]:
    m = _FEVER_INPUT.match(text)
    if not m:
        fix = "write `On <date>, the following claim was made: <claim>\\nQ: Was this claim true or false?`"
        raise bad(where, "input", "not a BIG-bench fact_checker claim", fix, "bad_input")
    claim = m.group("claim").strip()
    if target not in ("true", "false"):
        raise bad(where, "target_scores", f"best option {target!r} is not true/false", "fix the scores", "bad_target")
    return {"prompt_input": FEVER_PROMPT.format(claim=claim), "target": target, "query": claim}


def _adapt_summary(text: str, target: str, rec: dict[str, Any], task: dict[str, Any], where: str) -> dict[str, Any]:
    return {"prompt_input": SUMMARIZE_PROMPT, "target": target, "context": text}


def _adapt_dialogue(text: str, target: str, rec: dict[str, Any], task: dict[str, Any], where: str) -> dict[str, Any]:
    parts = _TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise bad(where, "input", "not a sequence of `agent_A: \"...\"` / `agent_B: \"...\"` turns", "fix the record", "bad_input")
    turns = [(speaker, _unquote(said)) for speaker, said in zip(parts[1::2], parts[2::2])]
    # One turn per line, speakers named as in the data. The retriever searches with the last three
    # turns: the topic (set in the first turns) and what the reply answers.
    query = " ".join(t for _, t in turns[-3:])
    return {"prompt_input": "\n".join(f"{s}: {t}" for s, t in turns), "target": _unquote(target), "query": query}


def _bigbench_target(rec: dict[str, Any], where: str) -> str:
    """`target` (a string, or the first of a list), else the option of `target_scores` scored highest."""
    fix = 'give "target" (a string or a list of strings) or "target_scores" ({option: score})'
    target = rec.get("target")
    if target is not None:
        items = target if isinstance(target, list) else [target]
        if not items or not all(isinstance(t, str) for t in items):
            raise bad(where, "target", f"must be a string or a list of strings, got {target!r:.60}", fix, "bad_target")
        first = next((t.strip() for t in items if t.strip()), None)
        if first is None:
            raise bad(where, "target", "empty", fix, "bad_target")
        return first
    scores = rec.get("target_scores")
    if isinstance(scores, dict) and scores:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scores.values()):
            raise bad(where, "target_scores", "scores must be numbers", fix, "bad_target")
        best = max(scores, key=lambda k: scores[k])  # the first of equal best, in file order
        if not str(best).strip():
            raise bad(where, "target_scores", "the best option is empty", fix, "bad_target")
        return str(best).strip()
    raise bad(where, "target", "missing (no target or target_scores)", fix, "missing_target")


def _example_positions(text: str, n: int) -> list[int] | None:
    """Offsets of the elements of the top-level `examples` list (for line numbers), or None."""
    for m in re.finditer(r'"examples"\s*:\s*\[', text):
        pos = []
        try:
            for p, _ in iter_json_list(text, m.end() - 1):
                pos.append(p)
        except Malformed:
            pass  # the list reader also checks that nothing follows the list, which here the rest of the object does
        if len(pos) == n:
            return pos
    return None


def read_bigbench(path: Path, source: str, category: str, adapt: Callable[..., dict[str, Any]],
                  on_error: str = "error") -> InstructionSet:
    """A BIG-bench `task.json`: `{examples: [{input, target or target_scores, id?}], task_prefix?, ...}`."""
    text = decode_utf8(path.read_bytes(), str(path))
    line = line_finder(text)
    try:
        task = parse_json(text, "fix the file (a BIG-bench task.json)")
    except Malformed as m:
        raise m.at(f"{path}:{line(m.pos)}", field="file", whole_file=True) from None
    if not isinstance(task, dict) or not isinstance(task.get("examples"), list):
        raise bad(f"{path}:1", "examples", "no `examples` list at the top level", 'write {"examples": [{"input": ..., "target": ...}]}')
    examples = task["examples"]
    positions = _example_positions(text, len(examples))
    notes: dict[str, int] = {}

    def records() -> Iterator[tuple[str, Any]]:
        for i, rec in enumerate(examples):
            at = f":{line(positions[i])}" if positions else ""
            yield f"{path}{at} (example {i})", (i, rec)

    def make(item: tuple[int, Any], where: str) -> InstructionExample:
        i, rec = item
        if not isinstance(rec, dict):
            raise bad(where, "record", f"a JSON {type(rec).__name__}, not an object", "write one object per example", "not_an_object")
        raw = _text_field(rec, "input", where, "give every example a non-empty `input` string")
        fields = adapt(raw, _bigbench_target(rec, where), rec, task, where)
        if fields.pop("unsplit", False):
            notes["unsplit"] = notes.get("unsplit", 0) + 1
        if problem := surrogate_problem(fields["target"]):
            raise bad(where, "target", problem, SURROGATE_FIX, "unpaired_surrogate")
        return InstructionExample(id=_record_id(rec, where, str(i)), source=source, category=category, **fields)

    out = _collect(source, records(), make, on_error, str(path))
    out.notes = notes
    return out


def _read_bigbench_source(name: str, src: Source, root: Path | None, on_error: str) -> InstructionSet:
    assert root is not None and src.path is not None and src.adapt is not None
    path = require(root / f"{src.path}/task.json", f"the BIG-bench task of {name}")
    out = read_bigbench(path, name, src.category, src.adapt, on_error)
    if src.adapt is _adapt_fever:
        # BIG-bench's FEVER claims come from FEVER; drop any that `radit eval --task fever` asks.
        dev = fever_dev_claims(str(root))
        if dev is None:
            log.warning("%s: %s/fever/dev.jsonl is missing, so its claims were not checked against FEVER dev", name, root)
        else:
            kept = [ex for ex in out.examples if normalize_answer(ex.retrieval_query) not in dev]
            if len(kept) < len(out.examples):
                out.dropped["overlaps_fever_dev"] = len(out.examples) - len(kept)
                log.info("%s: dropped %d claims that FEVER dev holds", name, len(out.examples) - len(kept))
            out.examples = kept
            out.stats.kept = len(kept)
    return out


# --------------------------------------------------------------------------------------------------
# jsonl:PATH and hf:NAME
# --------------------------------------------------------------------------------------------------

_JSONL_FIX = 'write one {"instruction": ..., "input": ..., "output": ...} object per line'


def _instruction_example(rec: Any, where: str, default_id: str, source: str, *, output_field: str = "output",
                         context_field: str = "context") -> InstructionExample:
    if not isinstance(rec, dict):
        raise bad(where, "record", f"a JSON {type(rec).__name__}, not an object", _JSONL_FIX, "not_an_object")
    instruction = _text_field(rec, "instruction", where, _JSONL_FIX)
    extra = _text_field(rec, "input", where, "write `input` as a string, or leave it out", required=False)
    output = _text_field(rec, output_field, where, _JSONL_FIX)
    context = _text_field(rec, context_field, where, f"write `{context_field}` as a string, or leave it out", required=False)
    category = rec.get("category")
    if category not in CATEGORIES:
        if category is not None and source.startswith(JSONL_PREFIX):  # a hub set's own categories (Dolly's) are not ours
            raise bad(where, "category", f"{category!r} is not one of {', '.join(CATEGORIES)}", "fix it or leave it out", "bad_category")
        category = "reading" if context else "open-qa"
    if category in OWN_CONTEXT and not context:
        raise bad(where, "context", f"a {category} example needs its passage in `context`", "add it, or change the category", "missing_context")
    assert instruction is not None and output is not None
    prompt = f"{instruction}\n{extra}" if extra else instruction
    return InstructionExample(_record_id(rec, where, default_id), source, category, prompt, output, context)


def read_jsonl(path: str | Path, source: str | None = None, on_error: str = "error") -> InstructionSet:
    """A `{"instruction", "input"?, "output", "id"?, "context"?, "category"?}` per line file (see the module docstring)."""
    path = Path(path)
    source = source or JSONL_PREFIX + str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found; give jsonl:PATH of an instruction file ({_JSONL_FIX})")
    text = decode_utf8(path.read_bytes(), str(path))
    stem = path.name.split(".")[0]

    def records() -> Iterator[tuple[str, Any]]:
        i = 0
        for n, raw in enumerate(text.split("\n"), 1):
            if not raw.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec: Any = (i, parse_json(raw, _JSONL_FIX))
            except Malformed as m:
                rec = m.at(where)
            yield where, rec
            i += 1

    return _collect(source, records(), lambda item, where: _instruction_example(item[1], where, f"{stem}-{item[0]}", source),
                    on_error, str(path))


def _hf_record(rec: dict[str, Any], where: str, default_id: str, source: str) -> InstructionExample:
    """A hub record mapped by its column names (see the module docstring)."""
    cols = set(rec)
    if "instruction" in cols and ({"output", "response"} & cols):
        return _instruction_example(rec, where, default_id, source, output_field="output" if "output" in cols else "response")
    if "question" in cols and ({"answer", "answers"} & cols):
        raw = rec.get("answers", rec.get("answer"))
        if isinstance(raw, dict):  # SQuAD: {"text": [...], "answer_start": [...]}
            raw = raw.get("text")
        answers = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        answer = next((a.strip() for a in answers if isinstance(a, str) and a.strip()), None)
        if answer is None:
            raise bad(where, "answer", "no non-empty answer string", "use a data set with answers", "no_answers")
        question = _text_field(rec, "question", where, "use a data set with questions")
        context = next((rec[c] for c in ("context", "passage", "article") if isinstance(rec.get(c), str) and rec[c].strip()), None)
        assert question is not None
        return InstructionExample(_record_id(rec, where, default_id), source, "reading" if context else "open-qa",
                                  question, answer, context.strip() if context else None)
    if "prompt" in cols and ({"completion", "response"} & cols):
        out = "completion" if "completion" in cols else "response"
        prompt = _text_field(rec, "prompt", where, "use a data set with prompts")
        target = _text_field(rec, out, where, "use a data set with completions")
        assert prompt is not None and target is not None
        return InstructionExample(_record_id(rec, where, default_id), source, "open-qa", prompt, target)
    raise RecordError(f"{where}: columns: {sorted(cols)} match no known layout; expected instruction/input/output, "
                      "instruction/context/response, question/answer(s)[/context] or prompt/completion. Convert the "
                      "data set to a jsonl:PATH file of {\"instruction\", \"input\", \"output\"} records")


def read_hf(spec: str, on_error: str = "error") -> InstructionSet:
    """`hf:NAME[:split]` through the `datasets` library (a clear error when it is missing or offline)."""
    name, _, split = spec[len(HF_PREFIX):].partition(":")
    split = split or "train"
    if not name:
        raise ValueError(f"{spec}: give a data set name, e.g. hf:tatsu-lab/alpaca or hf:databricks/databricks-dolly-15k:train")
    short = name.rsplit("/", 1)[-1].lower()
    if any(short == n and (split == s or split.startswith(s + "[")) for n, s in _EVALUATED_HF) or (short == "squad" and split != "train"):
        raise ValueError(f"{spec}: this split is (or holds) a set that `radit eval` scores; it is never trained on")
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{spec}: reading Hugging Face data sets needs the `datasets` library, which radit does not "
                          "install: pip install datasets (or convert the data to a jsonl:PATH file)") from None
    try:
        data = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 - hub, network or cache failures all become one line
        first = str(e).splitlines()[0][:200] if str(e) else ""
        raise RuntimeError(f"{spec}: cannot load {name} split {split} ({type(e).__name__}: {first}); is the Hugging Face "
                           "hub reachable (or the data set in HF_HOME's cache)? Offline, use a jsonl:PATH file") from None

    def records() -> Iterator[tuple[str, Any]]:
        for i, rec in enumerate(data):
            yield f"{spec} (row {i})", (i, rec)

    return _collect(spec, records(), lambda item, where: _hf_record(dict(item[1]), where, str(item[0]), spec), on_error, spec)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_NI = "natural_instructions/"


def _bb(category: str, path: str, adapt: Callable[..., dict[str, Any]], description: str) -> Source:
    return Source(category, "instructions/" + path, _read_bigbench_source, description, adapt)


SOURCES: dict[str, Source] = {
    "quickstart:squad-open/train": Source("open-qa", None, _read_questions, "bundled SQuAD-open train split (33 articles)"),
    "quickstart:squad-rc/train": Source("reading", None, _read_squad_reading,
                                        "the same questions as reading comprehension: each with its gold paragraph"),
    "nq-open/dev": Source("open-qa", "nq_open/dev.tsv", _read_questions, "NQ-open dev as DPR ships it (drawn from NQ train)"),
    "entityquestions/train": Source("open-qa", "entityquestions/train", _read_questions, "EntityQuestions train, all relations"),
    "bigbench:quoref": _bb("reading", _NI + "subtask002_quoref_answer_generation", _adapt_reading, "Quoref"),
    "bigbench:cosmosqa": _bb("reading", _NI + "subtask024_cosmosqa_answer_generation", _adapt_reading, "CosmosQA"),
    "bigbench:drop": _bb("reading", _NI + "subtask028_drop_answer_generation", _adapt_reading, "DROP"),
    "bigbench:qasc": _bb("reading", _NI + "subtask041_qasc_answer_generation", _adapt_reading, "QASC"),
    "bigbench:multirc": _bb("reading", _NI + "subtask058_multirc_question_answering", _adapt_reading, "MultiRC"),
    "bigbench:ropes": _bb("reading", _NI + "subtask061_ropes_answer_generation", _adapt_reading, "ROPES"),
    "bigbench:strategyqa": _bb("reasoning", "strategyqa", _adapt_plain, "StrategyQA, the answer with its rationale"),
    "bigbench:social_iqa": _bb("reasoning", "social_iqa", _adapt_plain, "Social IQa, options listed"),
    "bigbench:qa_wikidata": _bb("knowledge", "qa_wikidata", _adapt_plain, "Wikidata cloze facts"),
    "bigbench:general_knowledge": _bb("knowledge", "general_knowledge", _adapt_plain, "general-knowledge questions"),
    "bigbench:known_unknowns": _bb("knowledge", "known_unknowns", _adapt_plain, "questions whose answer is Unknown"),
    "bigbench:fever": _bb("fact-check", "fact_checker/fever", _adapt_fever, "FEVER claims, true/false (FEVER dev dropped)"),
    "bigbench:xsum": _bb("summarize", "gem/xsum", _adapt_summary, "XSum one-sentence summaries"),
    "bigbench:topical_chat": _bb("dialogue", "topical_chat", _adapt_dialogue, "Topical-Chat next turn"),
}


def _valid_specs() -> str:
    return ", ".join(SOURCES) + f", {JSONL_PREFIX}PATH, {HF_PREFIX}NAME[:split]"


def load_instructions(spec: str, data_dir: str | Path | None = None, on_error: str = "error") -> InstructionSet:
    """Read one instruction source.

    Args:
        spec: a `SOURCES` key, `jsonl:PATH` or `hf:NAME[:split]`.
        data_dir: the public data folder (default `$RADIT_DATA`, else `../shared/data`); read only by
            the sources that live there.
        on_error: `error` raises at the first bad record; `skip` drops bad records and counts them in
            the returned set's `stats`. A problem of a whole file always raises.

    Raises:
        ValueError: an unknown spec (listing the valid ones) or an evaluated set.
        FileNotFoundError: the data folder or a file of the source is missing.
        RecordError: a bad record, `<file>:<line>: <field>: <problem>; <what to do>`.
    """
    check_on_error(on_error)
    if spec.startswith(JSONL_PREFIX):
        return read_jsonl(spec[len(JSONL_PREFIX):], spec, on_error)
    if spec.startswith(HF_PREFIX):
        return read_hf(spec, on_error)
    if spec in EVALUATED:
        raise ValueError(f"--sources {spec}: scored by {EVALUATED[spec]}, so never trained on; valid sources: {_valid_specs()}")
    src = SOURCES.get(spec)
    if src is None:
        raise ValueError(f"--sources {spec}: unknown instruction source; valid: {_valid_specs()}")
    root = None if src.path is None else resolve_data_dir(data_dir, need=f"the instruction source {spec}")
    out = src.read(spec, src, root, on_error)
    log.info("%s: %d examples%s", spec, len(out.examples),
             "".join(f", {n} {why}" for why, n in {**out.stats.skipped, **out.dropped}.items()))
    return out


# --------------------------------------------------------------------------------------------------
# Evaluated sets: what the builder must never train on
# --------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """The key two questions are compared by: SQuAD normalisation (case, punctuation, articles, spaces)."""
    return normalize_answer(text)


@functools.cache
def fever_dev_claims(data_dir: str) -> frozenset[str] | None:
    """Normalised claims of `fever/dev.jsonl` (every label), or None when the file is missing."""
    path = Path(data_dir) / "fever" / "dev.jsonl"
    if not path.is_file():
        return None
    claims = set()
    for n, raw in enumerate(decode_utf8(path.read_bytes(), str(path)).split("\n"), 1):
        if not raw.strip():
            continue
        try:
            rec = parse_json(raw)
        except Malformed as m:
            raise m.at(f"{path}:{n}") from None
        if isinstance(rec, dict) and isinstance(rec.get("claim"), str):
            claims.add(normalize_text(rec["claim"]))
    return frozenset(claims)


def _mmlu_questions(folder: Path) -> set[str]:
    out = set()
    for path in sorted(folder.glob("*_test.csv")):
        text = decode_utf8(path.read_bytes(), str(path))
        try:
            for _, row in read_rows(io.StringIO(text, newline="\n"), ","):
                if row and row[0].strip():
                    out.add(normalize_text(row[0]))
        except Malformed as m:
            raise m.at(f"{path}:{m.pos}", field="row", whole_file=True) from None
    return out


@dataclasses.dataclass
class EvaluatedSets:
    """The questions of every set `radit eval` scores that could be read, normalised."""

    questions: dict[str, str]
    """normalised question -> the set it comes from (the first, where several hold it)."""
    checked: list[str]
    """The sets read."""
    missing: list[str]
    """The sets not found (no data folder, or the file is missing): not checked."""
    articles: frozenset[str]
    """SQuAD-open dev/test article titles, lower case with spaces (`nikola tesla`)."""

    def find(self, text: str) -> str | None:
        """The evaluated set that holds `text` as a question, or None."""
        return self.questions.get(normalize_text(text))


def article_key(title: str) -> str:
    """A SQuAD article or passage title as `EvaluatedSets.articles` holds it (`Nikola_Tesla` -> `nikola tesla`)."""
    return " ".join(title.replace("_", " ").split()).casefold()


@functools.cache
def _evaluated_sets(data_dir: str | None) -> EvaluatedSets:
    questions: dict[str, str] = {}
    checked, missing = [], []
    articles: set[str] = set()

    def add(name: str, texts) -> None:
        checked.append(name)
        for t in texts:
            questions.setdefault(t, name)

    for split in ("dev", "test"):
        qs = load_questions(f"{QUICKSTART_PREFIX}squad-open/{split}", on_error="skip")
        add(f"{QUICKSTART_PREFIX}squad-open/{split}", (normalize_text(q.question) for q in qs))
        articles.update(article_key(str(q.meta.get("title", ""))) for q in qs if q.meta.get("title"))
    root = Path(data_dir) if data_dir else None
    files = {"nq-open/test": "nq_open/test.jsonl", "triviaqa/dev": "triviaqa/dev.tsv", "hotpotqa/dev": "hotpotqa/dev.json"}
    for name, rel in files.items():
        if root is None or not (root / rel).is_file():
            missing.append(name)
            continue
        add(name, (normalize_text(q.question) for q in load_questions(str(root / rel), on_error="skip")))
    claims = fever_dev_claims(str(root)) if root is not None else None
    if claims is None:
        missing.append("fever/dev")
    else:
        add("fever/dev", claims)
    if root is None or not (root / "mmlu/data/test").is_dir():
        missing.append("mmlu/test")
    else:
        add("mmlu/test", _mmlu_questions(root / "mmlu/data/test"))
    questions.pop("", None)
    return EvaluatedSets(questions, checked, missing, frozenset(articles))


def evaluated_questions(data_dir: str | Path | None = None) -> EvaluatedSets:
    """The questions (and SQuAD-open articles) of the sets `radit eval` scores, for the leakage check.

    The bundled SQuAD-open dev/test splits are always read; the others (NQ-open test, TriviaQA dev,
    HotpotQA dev, FEVER dev, MMLU test) from the data folder when it is there, else listed as missing.
    """
    try:
        root: Path | None = resolve_data_dir(data_dir)
    except FileNotFoundError:
        root = None
    return _evaluated_sets(str(root.resolve()) if root is not None else None)
