"""Prompt templates render exactly the paper's strings; they save/load with the model; fields randomise."""

from __future__ import annotations

import json
import random

import pytest

from radit.prompts import (
    ANSWER_MARKERS,
    QUESTION_MARKERS,
    TEMPLATE_FILE,
    TEMPLATES,
    PromptTemplate,
    comp_prompt,
    fit_background,
    get_template,
    randomized,
)

BG = "Paris is the capital of France."
MMLU_CHOICES = {"A": "Lyon", "B": "Paris", "C": "Nice", "D": "Lille"}


@pytest.mark.parametrize(("name", "closed_book", "with_background"), [
    ("qa", "Question: capital of France?\nAnswer:",
     "Background: Paris is the capital of France.\n\nQuestion: capital of France?\nAnswer:"),
    ("qa-short", "Q: capital of France?\nA:",
     "Background: Paris is the capital of France.\n\nQ: capital of France?\nA:"),
    ("fever", 'Is this statement true? "capital of France?"\nAnswer:',
     'Background: Paris is the capital of France.\n\nIs this statement true? "capital of France?"\nAnswer:'),
    ("wow", "Q: capital of France?\nA:",
     "Background: Paris is the capital of France.\n\nQ: capital of France?\nA:"),
    ("dialogue", "Q: capital of France?\nA:",
     "Background: Paris is the capital of France.\n\nQ: capital of France?\nA:"),
    ("summarize", "Summarize this article:",
     "Background: Paris is the capital of France.\n\nSummarize this article:"),
])
def test_renders_exactly(name, closed_book, with_background):
    t = get_template(name)
    assert t.render("capital of France?") == closed_book
    assert t.render("capital of France?", background=BG) == with_background


def test_mmlu_with_choices():
    t = get_template("mmlu")
    assert t.render("Capital of France?", background=BG, choices=MMLU_CHOICES) == (
        "Background: Paris is the capital of France.\n\n"
        "Question: Capital of France?\nA. Lyon\nB. Paris\nC. Nice\nD. Lille\nAnswer:"
    )
    assert t.continuation("B") == " B"
    assert t.answer_options == ("A", "B", "C", "D")
    with pytest.raises(ValueError, match="needs choices"):
        t.render("Capital of France?")
    with pytest.raises(ValueError, match="needs choices"):
        t.render("Capital of France?", choices={**MMLU_CHOICES, "E": "Metz"})
    with pytest.raises(ValueError, match="takes no choices"):
        get_template("qa").render("q", choices=MMLU_CHOICES)


def test_two_demonstrations():
    t = get_template("qa")
    demos = [("capital of Italy?", "Rome"), ("capital of Spain?", "Madrid")]
    assert t.render("capital of France?", background=BG, demonstrations=demos) == (
        "Background: Paris is the capital of France.\n\n"
        "Question: capital of Italy?\nAnswer: Rome\n\n"
        "Question: capital of Spain?\nAnswer: Madrid\n\n"
        "Question: capital of France?\nAnswer:"
    )
    assert t.render("capital of France?", demonstrations=demos[:1]) == (
        "Question: capital of Italy?\nAnswer: Rome\n\nQuestion: capital of France?\nAnswer:"
    )


def test_mmlu_demonstrations_carry_their_choices():
    t = get_template("mmlu")
    demo = ("2 + 2?", "C", {"A": "1", "B": "2", "C": "4", "D": "5"})
    assert t.render("Capital of France?", choices=MMLU_CHOICES, demonstrations=[demo]) == (
        "Question: 2 + 2?\nA. 1\nB. 2\nC. 4\nD. 5\nAnswer: C\n\n"
        "Question: Capital of France?\nA. Lyon\nB. Paris\nC. Nice\nD. Lille\nAnswer:"
    )


def test_braces_in_user_text_are_literal():
    assert get_template("qa").render("what is {x}?", background="{y}") == "Background: {y}\n\nQuestion: what is {x}?\nAnswer:"


def test_continuation_and_comp_prompt():
    assert get_template("qa").continuation("Paris") == " Paris"
    assert comp_prompt(get_template("qa")) == "Answer:"
    assert comp_prompt(get_template("mmlu")) == "Answer:"
    assert comp_prompt(get_template("fever")) == "Answer:"
    assert comp_prompt(get_template("qa-short")) == "A:"
    with pytest.raises(ValueError, match="answer marker"):
        comp_prompt(PromptTemplate(name="bare", version=1, question="{question}"))


def test_registry_names_match_keys_and_error_lists_names():
    assert all(key == t.name for key, t in TEMPLATES.items())
    assert {"qa", "qa-short", "mmlu", "fever", "wow", "dialogue", "summarize"} <= set(TEMPLATES)
    with pytest.raises(KeyError, match="valid names: .*'mmlu'.*'qa'"):
        get_template("hotpot")


def test_invalid_templates():
    with pytest.raises(ValueError, match="version"):
        PromptTemplate(name="x", version=0, question="{question}")
    with pytest.raises(ValueError, match="unknown placeholders"):
        PromptTemplate(name="x", version=1, question="{query}")
    with pytest.raises(ValueError, match="choices"):
        PromptTemplate(name="x", version=1, question="{question}{choices}")
    with pytest.raises(ValueError, match="background"):
        PromptTemplate(name="x", version=1, question="{question}", background="Context:\n")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_save_load_round_trip(tmp_path, name):
    t = get_template(name)
    path = t.save(tmp_path)
    assert path == tmp_path / TEMPLATE_FILE
    assert json.loads(path.read_text())["name"] == name
    loaded = PromptTemplate.load(tmp_path)
    assert loaded == t
    assert loaded.render("q", background="b", choices=MMLU_CHOICES if t.choices else None) == \
        t.render("q", background="b", choices=MMLU_CHOICES if t.choices else None)


def test_load_errors(tmp_path):
    data = get_template("qa").to_dict()
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps({**data, "sep": "\n"}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sep'\]; valid keys"):
        PromptTemplate.load(tmp_path)
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps({k: v for k, v in data.items() if k != "version"}))
    with pytest.raises(ValueError, match="missing key"):
        PromptTemplate.load(tmp_path)
    # Same name and version as the registry, different text: the version no longer identifies it.
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps({**data, "question": "Query: {question}\nAnswer:"}))
    with pytest.raises(ValueError, match="bump the version"):
        PromptTemplate.load(tmp_path)
    # Another version of a registered name: the saved one wins.
    (tmp_path / TEMPLATE_FILE).write_text(json.dumps({**data, "version": 7, "question": "Query: {question}\nAnswer:"}))
    assert PromptTemplate.load(tmp_path).render("q") == "Query: q\nAnswer:"
    with pytest.raises(FileNotFoundError):
        PromptTemplate.load(tmp_path / "nowhere")


def test_randomized_markers():
    seen = set()
    for seed in range(40):
        t = randomized(get_template("qa"), random.Random(seed))
        q_marker, a_marker = t.question.split("{question}\n")
        assert q_marker in QUESTION_MARKERS and a_marker in ANSWER_MARKERS
        assert (t.name, t.version, t.answer_prefix) == ("qa", 1, " ")
        seen.add((q_marker, a_marker))
    assert seen == {(q, a) for q in QUESTION_MARKERS for a in ANSWER_MARKERS}
    # Reproducible with a seeded rng.
    draws = [randomized(get_template("qa-short"), random.Random(3)).question for _ in range(3)]
    assert len(set(draws)) == 1
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [randomized(get_template("wow"), rng_a) for _ in range(10)] == \
        [randomized(get_template("wow"), rng_b) for _ in range(10)]
    # Templates without the Q/A markers are left alone.
    for name in ("mmlu", "fever", "summarize"):
        assert randomized(get_template(name), random.Random(0)) is get_template(name)


def whitespace_tokens(text: str) -> int:
    return len(text.split())


def test_fit_background_alone():
    bg = "one two three four five six"
    assert fit_background(bg, 6, whitespace_tokens) == (bg, False)
    assert fit_background(bg, 4, whitespace_tokens) == ("one two three four", True)
    assert fit_background(bg, 0, whitespace_tokens) == ("", True)


def test_fit_background_keeps_question_intact():
    t = get_template("qa")
    question = "who wrote the book about the whale?"  # 7 words
    bg = "Moby-Dick is an 1851 novel\nby Herman Melville about a whale."  # 11 words
    render = lambda b: t.render(question, background=b)  # noqa: E731
    # Rendered: "Background:" + bg + "Question:" + 7 words + "Answer:" = 11 + 10 tokens.
    assert whitespace_tokens(render(bg)) == 21
    assert fit_background(bg, 21, whitespace_tokens, render) == (bg, False)
    fitted, truncated = fit_background(bg, 15, whitespace_tokens, render)
    assert (fitted, truncated) == ("Moby-Dick is an 1851 novel", True)
    assert whitespace_tokens(render(fitted)) == 15
    assert render(fitted).endswith("Question: who wrote the book about the whale?\nAnswer:")
    fitted, truncated = fit_background(bg, 17, whitespace_tokens, render)
    assert fitted == "Moby-Dick is an 1851 novel\nby Herman"  # original whitespace kept
    # A question longer than the budget: the background goes, the question stays.
    assert fit_background(bg, 5, whitespace_tokens, render) == ("", True)
