"""Named, versioned prompt templates with the paper's `Background:` field (RA-DIT Tables 10-12).

A retrieval-augmented prompt is `Background: {chunk}\\n\\n` followed by the task prompt (footnote 2);
without a chunk (closed book) the field is left out. The text the LM scores or is trained on after
the prompt is `template.continuation(answer)` = `answer_prefix + answer`, so prompt and continuation
are tokenised at the same boundary at training and at evaluation time.

A trained model carries its template: `template.save(model_dir)` writes `prompt_template.json`, and
`PromptTemplate.load(model_dir)` reads it back.

    from radit.prompts import get_template
    get_template("qa").render("who founded the Ming dynasty?", background="The Ming dynasty was ...")
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from radit.artifacts import atomic_write_json

log = logging.getLogger(__name__)

TEMPLATE_FILE = "prompt_template.json"

# App. C: during LM fine-tuning the field markers are randomised. The paper writes the answer markers
# as "A: " / "Answer: "; here the space belongs to `answer_prefix`, so the markers end at the colon.
QUESTION_MARKERS = ("Q: ", "Question: ")
ANSWER_MARKERS = ("A:", "Answer:")
_QA_FAMILY = re.compile(r"(Q: |Question: )\{question\}\n(A:|Answer:)")

# A demonstration is (question, answer), or (question, answer, choices) for multiple-choice templates.
Demonstration = tuple[str, str] | tuple[str, str, Mapping[str, str]]


def _fields(text: str) -> list[str]:
    """The `{placeholder}` names in a format string, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A task prompt: Background field, question (with optional choices) and answer marker."""

    name: str
    """Registry key; with `version`, identifies the exact text a model was trained or evaluated with."""
    version: int
    """Bumped whenever the rendered text of `name` changes."""
    question: str
    """The task prompt, ending in the answer marker, e.g. "Question: {question}\\nAnswer:". May use
    `{question}` and, for multiple choice, `{choices}` (where the rendered `choices` go)."""
    background: str = "Background: {background}\n\n"
    """The retrieved (or gold) context field, put before everything else; omitted when closed-book."""
    answer_prefix: str = " "
    """What separates the prompt from the answer text: the scored continuation is `answer_prefix + answer`."""
    demo_separator: str = "\n\n"
    """Between in-context demonstrations, and between the last one and the question."""
    choices: str | None = None
    """Multiple-choice options, e.g. "\\nA. {A}\\nB. {B}", substituted for `{choices}` in `question`."""
    answer_options: tuple[str, ...] | None = None
    """The closed answer set (e.g. the letters for MMLU, "true"/"false" for FEVER); None for open answers."""
    chat: bool = False
    """Send the rendered prompt as one user message through the model's chat template, with the
    assistant turn opened (`to_model_text`); the answer is the start of the assistant's reply.
    Demonstrations stay inside the user message, each answer after a space."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("prompt template: `name` must be non-empty")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"prompt template {self.name!r}: `version` must be an int >= 1, got {self.version!r}")
        if _fields(self.background) != ["background"]:
            raise ValueError(f"prompt template {self.name!r}: `background` must contain {{background}} exactly once")
        unknown = set(_fields(self.question)) - {"question", "choices"}
        if unknown:
            raise ValueError(f"prompt template {self.name!r}: `question` has unknown placeholders {sorted(unknown)}; "
                             "allowed: {question}, {choices}")
        if ("choices" in _fields(self.question)) != (self.choices is not None):
            raise ValueError(f"prompt template {self.name!r}: `choices` must be set exactly when `question` "
                             "contains {choices}")
        if self.answer_options is not None:
            # JSON gives a list back; the frozen dataclass stores a tuple so templates stay hashable.
            object.__setattr__(self, "answer_options", tuple(self.answer_options))

    @property
    def choice_keys(self) -> list[str]:
        """The option labels `render(choices=...)` expects, e.g. ["A", "B", "C", "D"]."""
        return _fields(self.choices) if self.choices is not None else []

    @property
    def answer_marker(self) -> str:
        """The text the prompt ends with after the last placeholder on its last line, e.g. "Answer:"."""
        last_line = self.question.rsplit("\n", 1)[-1]
        tail = re.split(r"\{[^{}]*\}", last_line)[-1]
        return tail.strip()

    def _question_part(self, question: str, choices: Mapping[str, str] | None) -> str:
        if self.choices is None:
            if choices is not None:
                raise ValueError(f"prompt template {self.name!r} takes no choices")
            return self.question.format(question=question)
        if choices is None:
            raise ValueError(f"prompt template {self.name!r} needs choices {self.choice_keys}")
        if set(choices) != set(self.choice_keys):
            raise ValueError(f"prompt template {self.name!r} needs choices {self.choice_keys}, got {sorted(choices)}")
        return self.question.format(question=question, choices=self.choices.format(**choices))

    def render(
        self,
        question: str,
        background: str | None = None,
        choices: Mapping[str, str] | None = None,
        demonstrations: Sequence[Demonstration] = (),
    ) -> str:
        """The prompt: Background field (unless `background` is None), demonstrations, then the question.

        Each demonstration renders as the question part + `answer_prefix` + answer, joined by
        `demo_separator`. Nothing is truncated here; see `fit_background`.
        """
        parts = []
        for demo in demonstrations:
            demo_q, demo_a, *demo_choices = demo
            # In a chat prompt the answer opens the assistant turn (no prefix); a demonstration's
            # answer sits inside the user message, after a space.
            parts.append(self._question_part(demo_q, demo_choices[0] if demo_choices else None)
                         + (self.answer_prefix or " ") + demo_a)
        parts.append(self._question_part(question, choices))
        prefix = "" if background is None else self.background.format(background=background)
        return prefix + self.demo_separator.join(parts)

    def continuation(self, answer: str) -> str:
        """The text scored (or trained on) after the prompt."""
        return self.answer_prefix + answer

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if self.answer_options is not None:
            out["answer_options"] = list(self.answer_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptTemplate:
        """Build a template; unknown or missing keys are an error naming the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"prompt template: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"prompt template: missing key(s) {missing}")
        return cls(**data)

    def save(self, directory: str | Path) -> Path:
        """Write `prompt_template.json` into `directory` (e.g. beside a model checkpoint)."""
        path = Path(directory) / TEMPLATE_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, directory: str | Path) -> PromptTemplate:
        """Read the template saved in `directory`.

        If the registry holds the same name and version with a different text, that is an error:
        the version no longer identifies the prompt. A different version is only logged, and the
        saved template (the one the model was trained with) is returned.
        """
        path = Path(directory) / TEMPLATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TEMPLATE_FILE} in {directory}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not a valid JSON template ({e}); save it again with PromptTemplate.save") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        template = cls.from_dict(data)
        known = TEMPLATES.get(template.name)
        if known is not None:
            if known.version == template.version and known != template:
                raise ValueError(f"{path}: template {template.name!r} v{template.version} differs from the "
                                 "registry's template of the same version; bump the version in radit.prompts")
            if known.version != template.version:
                log.warning("%s: template %r v%d, the registry has v%d; using the saved one",
                            path, template.name, template.version, known.version)
        return template


TEMPLATES: dict[str, PromptTemplate] = {
    t.name: t
    for t in [
        # Table 12, HotpotQA, and the open-domain QA form of Table 10.
        PromptTemplate(name="qa", version=1, question="Question: {question}\nAnswer:"),
        PromptTemplate(name="qa-short", version=1, question="Q: {question}\nA:"),
        # The qa prompt as a chat turn, for instruction-tuned models (SmolLM2-Instruct, Llama-chat).
        PromptTemplate(name="qa-chat", version=1, question="Question: {question}\nAnswer:", answer_prefix="", chat=True),
        # Table 12, MMLU: the answer is the option letter.
        PromptTemplate(
            name="mmlu", version=1, question="Question: {question}{choices}\nAnswer:",
            choices="\nA. {A}\nB. {B}\nC. {C}\nD. {D}", answer_options=("A", "B", "C", "D"),
        ),
        # MMLU as cloze: the options are not listed and each option's text is scored as the answer
        # (answer_choice returns its letter). Not the paper's format (the letters, above); small models
        # score letters near chance with a strong bias to one letter, and are usually evaluated this way.
        PromptTemplate(name="mmlu-cloze", version=1, question="Question: {question}\nAnswer:"),
        # Table 12, FEVER. The answer words are not legible in the paper's text copy; "true"/"false"
        # answer the template's own question and are our choice (KILT labels SUPPORTS -> true, REFUTES -> false).
        PromptTemplate(
            name="fever", version=1, question='Is this statement true? "{question}"\nAnswer:',
            answer_options=("true", "false"),
        ),
        # Table 12, WoW, and the dialogue form of Table 10 (the turn history goes in {question}).
        PromptTemplate(name="wow", version=1, question="Q: {question}\nA:"),
        PromptTemplate(name="dialogue", version=1, question="Q: {question}\nA:"),
        # Table 10, summarisation: the article is the Background (ground-truth context), the question unused.
        PromptTemplate(name="summarize", version=1, question="Summarize this article:"),
    ]
}


def to_model_text(template: PromptTemplate, prompt: str, tokenizer) -> str:
    """The text the model reads for a rendered prompt: the prompt itself, or for a `chat` template the
    prompt as one user message in the tokenizer's chat template with the assistant turn opened."""
    if not template.chat:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"prompt template {template.name!r} uses the model's chat format, but its tokenizer has no "
                         "chat template; use a plain template (e.g. qa)")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise KeyError(f"unknown prompt template {name!r}; valid names: {sorted(TEMPLATES)}") from None


def resolve_template(spec: str) -> PromptTemplate:
    """A template from a registry name (`qa`) or from a folder holding a saved `prompt_template.json`
    (a fine-tuned model's folder carries the template it was trained with).

    Raises:
        ValueError: `spec` is neither a registered name nor a folder with a saved template.
    """
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    path = Path(spec)
    if path.is_dir():
        if not (path / TEMPLATE_FILE).is_file():
            raise ValueError(f"template {spec!r}: the folder holds no {TEMPLATE_FILE}; give a template name "
                             f"({', '.join(sorted(TEMPLATES))}) or a model folder saved with its template")
        return PromptTemplate.load(path)
    raise ValueError(f"unknown prompt template {spec!r}; give a name ({', '.join(sorted(TEMPLATES))}) "
                     f"or a folder holding {TEMPLATE_FILE}")


def comp_prompt(template: PromptTemplate) -> str:
    """The context-free prompt of the `nll_comp` score (App. B): just the answer marker, e.g. "Answer:".

    The answer is scored as `template.continuation(answer)` after it, as after the full prompt.
    """
    marker = template.answer_marker
    if not marker:
        raise ValueError(f"prompt template {template.name!r} has no answer marker to condition nll_comp on")
    return marker


def randomized(template: PromptTemplate, rng: random.Random) -> PromptTemplate:
    """The template with its field markers drawn at random (App. C), for LM fine-tuning.

    For the QA family (question of the form `<Q marker>{question}\\n<A marker>`), the question marker
    is drawn from QUESTION_MARKERS and the answer marker from ANSWER_MARKERS. Other templates have no
    such markers and are returned as they are (no draw from `rng`). Name and version are kept: the
    variant is a training-time augmentation, and evaluation uses the canonical template.
    """
    if not _QA_FAMILY.fullmatch(template.question):
        return template
    q_marker = rng.choice(QUESTION_MARKERS)
    a_marker = rng.choice(ANSWER_MARKERS)
    return dataclasses.replace(template, question=f"{q_marker}{{question}}\n{a_marker}")


_WORD_END = re.compile(r"\S+")


def fit_background(
    background: str,
    budget_tokens: int,
    count_tokens: Callable[[str], int],
    render: Callable[[str], str] | None = None,
) -> tuple[str, bool]:
    """Cut words off the end of `background` until the prompt fits in `budget_tokens`.

    `render(background)` gives the full prompt (default: the background alone), e.g.
    `lambda b: template.render(question, background=b)`, so the question and demonstrations are
    counted but never cut. Keeps the longest word prefix that fits, found by bisection (assumes
    `count_tokens` grows with the text). Returns (background, truncated). If even an empty
    background does not fit (the question alone is over budget), returns ("", True) and the caller
    must decide what to do with the over-long prompt.
    """
    render = render or (lambda b: b)
    if count_tokens(render(background)) <= budget_tokens:
        return background, False
    ends = [m.end() for m in _WORD_END.finditer(background)]
    lo, hi = 0, len(ends) - 1  # the answer keeps `lo` words; keeping all of them did not fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(render(background[: ends[mid - 1]])) <= budget_tokens:
            lo = mid
        else:
            hi = mid - 1
    return (background[: ends[lo - 1]] if lo else ""), True
