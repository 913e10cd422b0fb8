"""The CommonsenseQA task format shared by the benchmark and router-trace collection.

One question per JSONL line, in the Hugging Face ``commonsense_qa`` layout (``id``, ``question``,
``choices: {label, text}``, ``answerKey``). Two answer formats (``FORMATS``):

* ``letter`` (the default): the prompt lists the five lettered choices, asks for the letter and prefills the
  assistant turn with "The answer is"; answers are a few tokens, stopped at a newline; ``extract`` reads the
  first standalone letter back.
* ``explain`` (the seed's format, after CITER's CommonsenseQA prompt): the prompt asks for a short explanation
  ending with "Therefore, the answer is (X)."; the assistant turn is prefilled with "Let's think briefly." (without
  it Qwen2.5-0.5B skipped the explanation on most questions: median 10 answer tokens on a 10-question probe, 57.5
  with it); up to 100 tokens, no newline stop; the letter is read from the *end* of the answer (``extract_final``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..prompts import render_prompt

PREFILL = "The answer is"
EXPLAIN_PREFILL = "Let's think briefly."
LETTER_INSTRUCTION = "Answer with the letter of the correct choice."
EXPLAIN_INSTRUCTION = ("Explain your reasoning in one or two short sentences, then end your answer with "
                       '"Therefore, the answer is (X)." where X is the letter of the correct choice.')


def load_questions(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The questions of ``path``, shuffled with ``seed``, the first ``limit`` of them."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


def _question_block(q: dict) -> str:
    choices = "\n".join(f"{lab}) {txt}" for lab, txt in zip(q["choices"]["label"], q["choices"]["text"]))
    return f"Question: {q['question']}\nChoices:\n{choices}"


def user_message(q: dict, fmt: str = "letter") -> str:
    return f"{_question_block(q)}\n{get_format(fmt).instruction}"


def prompt_text(lm, q: dict, fmt: str = "letter") -> str:
    """The prompt rendered with the local model's chat template, plus the format's prefill (if any)."""
    f = get_format(fmt)
    return render_prompt(lm, [{"role": "user", "content": user_message(q, fmt)}])[0] + f.prefill


def _choice_text(answer: str, q: dict) -> str | None:
    low = answer.lower()
    for lab, txt in zip(q["choices"]["label"], q["choices"]["text"]):
        if txt.lower() in low:
            return lab
    return None


def extract(answer: str, q: dict) -> str | None:
    """The first standalone letter A-E, else the label of a choice text the answer contains, else None."""
    m = re.search(r"\b([A-E])\b", answer)
    if m:
        return m.group(1)
    return _choice_text(answer, q)


# "answer is (C)", "answer is: C", "answer is **(C)**": the letter must stand alone (not "answer is Apples")
_FINAL = re.compile(r"(?i:answer\s+is)\s*:?\s*\**\s*\(?([A-E])(?![A-Za-z0-9])")
# a standalone letter; "A" followed by a lowercase word is the article ("A person would ..."), not a choice
_LETTER = re.compile(r"(?<![A-Za-z0-9])(A(?!\s+[a-z])|[B-E])(?![A-Za-z0-9])")


def extract_final(answer: str, q: dict | None = None) -> str | None:
    """The letter from the END of an explained answer: the last "answer is (X)" / "answer is X", else the
    last standalone letter A-E, else None (invalid)."""
    finals = _FINAL.findall(answer)
    if finals:
        return finals[-1]
    letters = _LETTER.findall(answer)
    return letters[-1] if letters else None


def answer_slot(answer: str) -> int | None:
    """Where the final letter stands in an explained answer (a character offset), for reports on where routed
    tokens fall; None when there is none. Routers never see this."""
    finals = list(_FINAL.finditer(answer))
    return finals[-1].start(1) if finals else None


def piece_places(pieces: list[str]) -> list[str]:
    """Where each piece of an answer (a token's text) stands, for reports: ``answer slot`` (it writes the final
    letter), ``first sentence`` (it starts before the first sentence's end) or ``elsewhere``."""
    text = "".join(pieces)
    slot = answer_slot(text)
    ends = [i for i in range(len(text)) if text[i] in ".!?" and (i + 1 == len(text) or text[i + 1].isspace())]
    first_end = ends[0] if ends else len(text)
    kinds, at = [], 0
    for piece in pieces:
        if slot is not None and at <= slot < at + max(1, len(piece)):
            kinds.append("answer slot")
        else:
            kinds.append("first sentence" if at <= first_end else "elsewhere")
        at += len(piece)
    return kinds


def routed_places(pieces: list[tuple[str, str]]) -> dict[str, int]:
    """Where an answer's cloud tokens fell: ``pieces`` are (text, source) per token (``piece_places``)."""
    out = {"answer slot": 0, "first sentence": 0, "elsewhere": 0}
    for kind, (_, source) in zip(piece_places([t for t, _ in pieces]), pieces):
        out[kind] += source == "cloud"
    return out


@dataclass(frozen=True)
class AnswerFormat:
    """How a CommonsenseQA question is asked and how its answer is read back."""

    name: str
    instruction: str  # the last line of the user message
    prefill: str  # appended to the rendered prompt (the assistant turn's start)
    max_tokens: int  # default answer length
    stop: str  # default stop sequence ("" for none)
    extract: Callable[[str, dict], str | None]


FORMATS: dict[str, AnswerFormat] = {
    "letter": AnswerFormat("letter", LETTER_INSTRUCTION, PREFILL, 6, "\n", extract),
    "explain": AnswerFormat("explain", EXPLAIN_INSTRUCTION, EXPLAIN_PREFILL, 100, "", extract_final),
}


def get_format(fmt: str | AnswerFormat) -> AnswerFormat:
    if isinstance(fmt, AnswerFormat):
        return fmt
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(f"unknown CommonsenseQA format {fmt!r}; one of {', '.join(FORMATS)}") from None


def is_correct(answer: str, q: dict, fmt: str = "letter") -> bool:
    return get_format(fmt).extract(answer, q) == q.get("answerKey")
