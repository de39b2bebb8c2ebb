"""The RA-IT data builder (radit.train.lm_data): k' examples per open-domain example, Background placement,
markers, mixture, token budget, determinism, leakage, errors."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from radit.augment import chunk_text
from radit.config import IndexConfig, LMDataConfig
from radit.data.instructions import article_key, evaluated_questions, normalize_text
from radit.data.qa import load_questions, quickstart_documents
from radit.data.records import RecordError
from radit.prompts import TEMPLATES, get_template
from radit.retriever.index import build_index
from radit.retriever.search import load_searcher
from radit.train.lm_data import build_lm_data, mixture_counts, summary_path

DATA = Path(__file__).parent / "fixtures" / "data"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

QUESTIONS = [
    ("Who was the first emperor of the Ming?", "Zhu Yuanzhang"),  # "Who founded the Ming dynasty?" is a dev question
    ("What is the capital of France?", "Paris"),
    ("Who discovered oxygen?", "Joseph Priestley"),
    ("Where does the Nile flow into?", "the Mediterranean Sea"),
    ("Who won Super Bowl 50?", "the Denver Broncos"),
    ("Who first walked on the Moon?", "Neil Armstrong"),
    ("Who invented the piano?", "Bartolomeo Cristofori"),
    ("How many keys does a piano have?", "88"),
    ("Who described the DNA double helix?", "Watson and Crick"),
    ("Who founded Rome?", "Romulus"),
    ("Where did tea originate?", "southwest China"),
    ("How many spectators could the Colosseum hold?", "50,000"),
]


@pytest.fixture
def bm25_index(tmp_path, passages_file) -> Path:
    out = tmp_path / "index"
    build_index(IndexConfig(passages=str(passages_file), output=str(out), backend="bm25"))
    return out


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return f"jsonl:{path}"


def qa_source(tmp_path: Path, n: int = len(QUESTIONS), name: str = "qa.jsonl") -> str:
    return write_jsonl(tmp_path / name, [{"instruction": q, "output": a} for q, a in QUESTIONS[:n]])


def reading_source(tmp_path: Path, n: int, name: str) -> str:
    rows = [{"instruction": f"What is item {i}?", "context": f"Item {i} of {name} is a thing.", "output": f"thing {i}",
             "id": f"{name}-{i}"} for i in range(n)]
    return write_jsonl(tmp_path / f"{name}.jsonl", rows)


def config(tmp_path: Path, tiny_lm_dir: Path, index: Path | None, sources: list[str], **kw) -> LMDataConfig:
    kw.setdefault("output", str(tmp_path / "out" / "train.jsonl"))
    return LMDataConfig(sources=sources, index=str(index) if index else None, tokenizer=str(tiny_lm_dir),
                        data_dir=str(DATA), max_length=kw.pop("max_length", 512), **kw)


def read_lines(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_open_domain_examples_one_per_retrieved_chunk(tmp_path, tiny_lm_dir, bm25_index):
    source = qa_source(tmp_path, n=4)
    cfg = config(tmp_path, tiny_lm_dir, bm25_index, [source], k=3, randomize_markers=False)
    summary = build_lm_data(cfg)
    lines = read_lines(cfg.output)
    assert summary["examples"] == len(lines) == 4 * 3
    assert set(lines[0]) == {"id", "source", "category", "prompt", "target", "background", "passage_id", "truncated"}
    searcher = load_searcher(bm25_index)
    qa = get_template("qa")
    for i, (question, answer) in enumerate(QUESTIONS[:4]):
        hits = searcher.search([question], 3)[0]
        mine = sorted((x for x in lines if x["id"].startswith(f"{source}:qa-{i}#")), key=lambda x: x["id"])
        assert [x["id"] for x in mine] == [f"{source}:qa-{i}#{j}" for j in range(3)]
        assert [x["passage_id"] for x in mine] == [h.id for h in hits]  # the top-k', in rank order
        for x, hit in zip(mine, hits):
            assert x["prompt"] == qa.render(question, background=chunk_text(hit))
            assert x["target"] == qa.continuation(answer) == f" {answer}"
            assert (x["background"], x["category"], x["source"], x["truncated"]) == ("retrieved", "open-qa", source, False)
    assert summary["sources"][source]["examples"] == 12 and summary["sources"][source]["used"] == 4


def test_background_placement_by_category(tmp_path, tiny_lm_dir):
    reading = write_jsonl(tmp_path / "read.jsonl", [
        {"instruction": "Who won?", "context": "The Denver Broncos beat the Carolina Panthers.", "output": "The Broncos"}])
    cfg = config(tmp_path, tiny_lm_dir, None, [reading, "bigbench:xsum", "bigbench:quoref"], max_length=2048)
    summary = build_lm_data(cfg)  # no source retrieves, so no index is needed
    assert summary["index"] is None
    by_source = {}
    for x in read_lines(cfg.output):
        by_source.setdefault(x["source"], []).append(x)
    (r,) = by_source[reading]
    assert r["id"].endswith("#0") and (r["background"], r["passage_id"], r["category"]) == ("own", None, "reading")
    assert r["prompt"].startswith("Background: The Denver Broncos beat the Carolina Panthers.\n\n")
    assert r["prompt"].endswith("Who won?\nAnswer:") or r["prompt"].endswith("Who won?\nA:")
    xsum = by_source["bigbench:xsum"]
    assert len(xsum) == 2
    article = json.loads((DATA / "instructions/gem/xsum/task.json").read_text())["examples"][0]
    (first,) = [x for x in xsum if x["id"] == "bigbench:xsum:0#0"]
    assert first["prompt"] == f"Background: {article['input'].strip()}\n\nSummarize this article:"
    assert first["target"] == " " + article["target"].strip() and first["category"] == "summarize"
    assert all(x["background"] == "own" for x in by_source["bigbench:quoref"])


def test_markers_randomised_canonical_template_unchanged(tmp_path, tiny_lm_dir, bm25_index):
    canonical = dataclasses.replace(TEMPLATES["qa"])
    cfg = config(tmp_path, tiny_lm_dir, bm25_index, [qa_source(tmp_path)], k=3)
    build_lm_data(cfg)
    prompts = [x["prompt"] for x in read_lines(cfg.output)]
    question_part = [p.split("\n\n", 1)[1] for p in prompts]
    assert any(q.startswith("Question: ") for q in question_part) and any(q.startswith("Q: ") for q in question_part)
    assert any(p.endswith("\nAnswer:") for p in prompts) and any(p.endswith("\nA:") for p in prompts)
    assert TEMPLATES["qa"] == canonical and get_template("qa").question == "Question: {question}\nAnswer:"
    plain = config(tmp_path, tiny_lm_dir, bm25_index, [qa_source(tmp_path)], k=3, randomize_markers=False,
                   output=str(tmp_path / "plain.jsonl"))
    build_lm_data(plain)
    assert all(x["prompt"].split("\n\n", 1)[1].startswith("Question: ") and x["prompt"].endswith("\nAnswer:")
               for x in read_lines(plain.output))


def test_cap_and_weights(tmp_path, tiny_lm_dir):
    a, b = reading_source(tmp_path, 10, "a"), reading_source(tmp_path, 4, "b")
    capped = build_lm_data(config(tmp_path, tiny_lm_dir, None, [a, b], cap=6))
    assert [capped["sources"][s]["capped"] for s in (a, b)] == [6, 4]
    assert [capped["sources"][s]["examples"] for s in (a, b)] == [6, 4] and capped["examples"] == 10

    cfg = config(tmp_path, tiny_lm_dir, None, [a, b], cap=6, weights=[1.0, 3.0], output=str(tmp_path / "w.jsonl"))
    weighted = build_lm_data(cfg)
    assert mixture_counts([6, 4], [1.0, 3.0]) == [round(0.25 * 10), round(0.75 * 10)] == [2, 8]
    lines = read_lines(cfg.output)
    ids_b = sorted(x["id"] for x in lines if x["source"] == b)
    assert len(ids_b) == 8 and sum("@1#" in i for i in ids_b) == 4  # 4 examples, each twice
    assert len(set(ids_b)) == 8 and weighted["sources"][b]["repeated"] == 4
    assert len([x for x in lines if x["source"] == a]) == 2


def test_same_config_same_bytes(tmp_path, tiny_lm_dir, bm25_index):
    sources = [qa_source(tmp_path), reading_source(tmp_path, 5, "r")]
    first = config(tmp_path, tiny_lm_dir, bm25_index, sources, cap=4, output=str(tmp_path / "one" / "train.jsonl"))
    second = dataclasses.replace(first, output=str(tmp_path / "two" / "train.jsonl"))
    other_seed = dataclasses.replace(first, output=str(tmp_path / "three" / "train.jsonl"), seed=1)
    summaries = [build_lm_data(c) for c in (first, second, other_seed)]
    assert Path(first.output).read_bytes() == Path(second.output).read_bytes()
    assert Path(first.output).read_bytes() != Path(other_seed.output).read_bytes()
    strip = lambda s: {k: v for k, v in s.items() if k not in ("output", "config")}  # noqa: E731
    assert strip(summaries[0]) == strip(summaries[1])
    assert json.loads(summary_path(first.output).read_text()) == summaries[0]
    assert summary_path("runs/lm-data/train.jsonl") == Path("runs/lm-data/summary.json")  # where train-lm reads it


def test_token_budget_truncates_background_and_skips_too_long(tmp_path, tiny_lm_dir):
    long_context = " ".join(f"word{i}" for i in range(300))
    source = write_jsonl(tmp_path / "long.jsonl", [
        {"instruction": "Which word comes first?", "context": long_context, "output": "word0", "id": "cut"},
        {"instruction": "Repeat everything.", "context": "short", "output": " ".join(["answer"] * 200), "id": "huge"},
        {"instruction": "Fine?", "context": "A short passage.", "output": "yes", "id": "fits"},
    ])
    cfg = config(tmp_path, tiny_lm_dir, None, [source], max_length=64, randomize_markers=False)
    summary = build_lm_data(cfg)
    counts = summary["sources"][source]
    assert (counts["examples"], counts["truncated"], counts["too_long"]) == (2, 1, 1)
    lines = {x["id"].split(":")[-1]: x for x in read_lines(cfg.output)}
    assert set(lines) == {"cut#0", "fits#0"}
    cut = next(x for x in lines.values() if x["truncated"])
    background = cut["prompt"].split("\n\n", 1)[0].removeprefix("Background: ")
    assert background and long_context.startswith(background) and len(background) < len(long_context)
    assert cut["target"] == " word0"  # the target is never cut
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    for x in lines.values():
        n = len(tokenizer(x["prompt"])["input_ids"]) + len(tokenizer(x["target"], add_special_tokens=False)["input_ids"]) + 1
        assert n <= 64
    assert summary["totals"]["tokens"] == counts["tokens"] > 0


def test_bad_records_error_or_skip(tmp_path, tiny_lm_dir):
    source = write_jsonl(tmp_path / "bad.jsonl", [
        {"instruction": "Q1", "context": "c", "output": "a"}, '{"instruction": broken', {"instruction": "Q3", "context": "c"}])
    cfg = config(tmp_path, tiny_lm_dir, None, [source])
    with pytest.raises(RecordError, match=r"bad\.jsonl:2: record: invalid JSON"):
        build_lm_data(cfg)
    assert not Path(cfg.output).exists()
    summary = build_lm_data(dataclasses.replace(cfg, on_error="skip"))
    assert summary["sources"][source]["bad_records"] == {"invalid_json": 1, "missing_output": 1}
    assert summary["examples"] == 1


def test_missing_index_is_one_line_and_writes_nothing(tmp_path, tiny_lm_dir):
    cfg = config(tmp_path, tiny_lm_dir, tmp_path / "no-index", [qa_source(tmp_path)])
    with pytest.raises(FileNotFoundError, match="build one with `radit index`") as err:
        build_lm_data(cfg)
    assert "\n" not in str(err.value) and "no-index" in str(err.value)
    assert not Path(cfg.output).exists() and not summary_path(cfg.output).exists()
    assert not Path(cfg.output).parent.exists()
    # A registered open-domain source fails before anything is read (here: before the missing data folder).
    nowhere = dataclasses.replace(cfg, sources=["nq-open/dev"], data_dir=str(tmp_path / "no-data"))
    with pytest.raises(FileNotFoundError, match="no-index: no index there"):
        build_lm_data(nowhere)


def test_sources_given_twice(tmp_path, tiny_lm_dir):
    source = qa_source(tmp_path)
    with pytest.raises(ValueError, match="each source once"):
        build_lm_data(config(tmp_path, tiny_lm_dir, None, [source, source]))


def test_summary_records_the_settings(tmp_path, tiny_lm_dir, bm25_index):
    cfg = config(tmp_path, tiny_lm_dir, bm25_index, [qa_source(tmp_path, n=2)], k=2, seed=3)
    summary = build_lm_data(cfg)
    assert summary["index"] == str(bm25_index.resolve()) and Path(summary["index"]).is_absolute()
    assert (summary["k"], summary["seed"], summary["tokenizer"]) == (2, 3, str(tiny_lm_dir))
    assert summary["template"] == {"name": "qa", "version": 1}
    assert summary["config"] == dataclasses.asdict(cfg)
    assert summary["totals"]["examples"] == summary["examples"] == 4


# --- leakage -------------------------------------------------------------------------------------


def test_evaluated_questions_are_dropped_and_an_evaluated_file_refused(tmp_path, tiny_lm_dir, bm25_index):
    cfg = config(tmp_path, tiny_lm_dir, bm25_index, ["nq-open/dev"], k=1)
    summary = build_lm_data(cfg)
    counts = summary["sources"]["nq-open/dev"]
    assert counts["leaked_by_set"] == {"nq-open/test": 1} and counts["read"] == 4 and counts["used"] == 3
    assert all("does he love me with reba" not in x["prompt"] for x in read_lines(cfg.output))

    test_split = load_questions("quickstart:squad-open/test", limit=20)
    copied = write_jsonl(tmp_path / "copied.jsonl", [{"instruction": q.question, "output": q.answers[0]} for q in test_split])
    with pytest.raises(ValueError, match="quickstart:squad-open/test, which `radit eval` scores"):
        build_lm_data(config(tmp_path, tiny_lm_dir, bm25_index, [copied]))


def test_default_sources_hold_no_evaluation_question_or_article(tmp_path, tiny_lm_dir):
    """The quickstart recipe's training file (bundled SQuAD-open train, top-3 chunks of the bundled corpus)
    holds no question of an evaluated set and no chunk of a SQuAD-open dev/test article."""
    data_dir = SHARED if SHARED.is_dir() else DATA  # the real evaluation sets where this checkout has them
    evaluated = evaluated_questions(data_dir)
    # The SQuAD paragraphs and the Wikipedia extracts whose titles are held-out articles, and a few others.
    passages, others = tmp_path / "passages.jsonl", 0
    with gzip.open(quickstart_documents(), "rt", encoding="utf-8") as f, open(passages, "w", encoding="utf-8") as out:
        for line in f:
            doc = json.loads(line)
            keep = doc["id"].startswith("squad:") or article_key(doc["title"]) in evaluated.articles
            if not keep and others < 300:
                keep, others = True, others + 1
            if keep:
                out.write(json.dumps({"id": f"{doc['id']}#0", "doc_id": doc["id"], "title": doc["title"], "text": doc["text"]}) + "\n")
    index = tmp_path / "index"
    build_index(IndexConfig(passages=str(passages), output=str(index), backend="bm25"))
    held_out_chunks: set[str] = set()
    with open(passages, encoding="utf-8") as f:
        for line in f:
            p = json.loads(line)
            if article_key(p["title"]) in evaluated.articles:
                held_out_chunks.add(f"{p['title']}: {p['text']}")
    assert len(held_out_chunks) > 600  # the 15 dev/test articles' paragraphs (and their Wikipedia extracts)

    defaults = LMDataConfig()
    cfg = dataclasses.replace(defaults, index=str(index), tokenizer=str(tiny_lm_dir), data_dir=str(data_dir),
                              output=str(tmp_path / "train.jsonl"), max_length=512)
    summary = build_lm_data(cfg)
    train = {q.id: q for q in load_questions("quickstart:squad-open/train")}
    lines = read_lines(cfg.output)
    assert len(lines) == summary["examples"] > 20000
    for x in lines:
        qid = x["id"].removeprefix("quickstart:squad-open/train:").split("#")[0]
        assert evaluated.find(train[qid].question) is None
        assert normalize_text(train[qid].question) in normalize_text(x["prompt"])
        assert article_key(train[qid].meta["title"]) not in evaluated.articles
        background = x["prompt"].split("\n\n", 1)[0].removeprefix("Background: ")
        assert background not in held_out_chunks
        doc = x["passage_id"].rsplit("#", 1)[0]
        assert not (doc.startswith("squad:") and article_key(doc[len("squad:"):].rsplit(":", 1)[0]) in evaluated.articles)
    assert summary["leakage"]["held_out_chunks_passed_over"] > 0  # the check had something to do
    assert summary["leakage"]["checked"][:2] == ["quickstart:squad-open/dev", "quickstart:squad-open/test"]
    if data_dir == SHARED:
        assert summary["sources"]["quickstart:squad-open/train"]["leaked"] >= 1  # e.g. an NQ-open test question
