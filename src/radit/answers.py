"""Answer-text rules shared by inference, evaluation and training data: SQuAD normalisation, the
short answer a generated text holds, whether generation can stop, and regular-expression answers.

The lowest layer that knows what an answer looks like: `radit.augment` merges candidates with
`normalize_answer`, `radit.lm.generate` stops decoding with `answer_complete`, `radit.eval.metrics`
scores with both, and `radit.data.qa` checks regex answers with `compile_answer_pattern`.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE
"""DPR's flags for regex answers (`dpr/data/qa_validation.py: regex_match`)."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and articles, squeeze whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


# A leading answer marker the model may repeat ("Answer: Paris", "A: Paris").
_MARKER = re.compile(r"^(?:answer|a)\s*:\s*", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The paper-style short answer: the first line that is non-empty once stripped of a leading
    "Answer:" / "A:" marker, stripped. "" when there is none.

        extract_answer(" Paris\\nQuestion: ...")  ->  "Paris"
        extract_answer("\\nAnswer: Zhu Yuanzhang") ->  "Zhu Yuanzhang"
    """
    for line in text.splitlines():
        answer = _MARKER.sub("", line.strip()).strip()
        if answer:
            return answer
    return ""


def answer_complete(text: str) -> bool:
    """Whether generated `text` already holds the whole answer `extract_answer` keeps: a non-empty
    answer line followed by a newline. Decoding can stop there without changing the answer."""
    return "\n" in text and bool(extract_answer(text[: text.rfind("\n")]))


def compile_answer_pattern(pattern: str) -> re.Pattern[str]:
    """A regex answer (DPR's CuratedTREC) as DPR matches it: NFD-normalised, with `REGEX_FLAGS`.

    Raises:
        re.error: for an invalid pattern (readers report it at the record's file and line).
    """
    return re.compile(unicodedata.normalize("NFD", pattern), REGEX_FLAGS)


def pattern_found(pattern: re.Pattern[str], text: str) -> bool:
    """Whether a regex answer occurs anywhere in `text` (NFD-normalised, as DPR's `has_answer`)."""
    return pattern.search(unicodedata.normalize("NFD", text)) is not None


def gold_answers(answers: Sequence[str], answer_type: str = "string") -> list[str | re.Pattern[str]]:
    """Answers as the metrics take them: the strings themselves, or compiled patterns when
    `answer_type` is "regex"."""
    if answer_type == "regex":
        return [compile_answer_pattern(a) for a in answers]
    return list(answers)
