"""Answer-text rules shared by inference, evaluation and training data: SQuAD normalisation, the
short answer a generated text holds, and whether generation can stop.

The lowest layer that knows what an answer looks like: `radit.augment` merges candidates with
`normalize_answer`, `radit.lm.generate` stops decoding with `answer_complete`, `radit.eval.metrics`
scores with both.
"""

from __future__ import annotations

import re
import string

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
