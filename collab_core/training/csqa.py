"""The CommonsenseQA task format shared by the benchmark and router-trace collection.

One question per JSONL line, in the Hugging Face ``commonsense_qa`` layout (``id``, ``question``,
``choices: {label, text}``, ``answerKey``). The prompt lists the five lettered choices, asks for the letter,
and prefills the assistant turn with "The answer is"; ``extract`` reads the chosen letter back.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from ..prompts import render_prompt

PREFILL = "The answer is"


def load_questions(path: str | Path, limit: int | None = None, seed: int = 0) -> list[dict]:
    """The questions of ``path``, shuffled with ``seed``, the first ``limit`` of them."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    return rows[:limit] if limit else rows


def user_message(q: dict) -> str:
    choices = "\n".join(f"{lab}) {txt}" for lab, txt in zip(q["choices"]["label"], q["choices"]["text"]))
    return f"Question: {q['question']}\nChoices:\n{choices}\nAnswer with the letter of the correct choice."


def prompt_text(lm, q: dict) -> str:
    """The prompt rendered with the local model's chat template, the answer prefilled."""
    return render_prompt(lm, [{"role": "user", "content": user_message(q)}])[0] + PREFILL


def extract(answer: str, q: dict) -> str | None:
    """The first standalone letter A-E, else the label of a choice text the answer contains, else None."""
    m = re.search(r"\b([A-E])\b", answer)
    if m:
        return m.group(1)
    low = answer.lower()
    for lab, txt in zip(q["choices"]["label"], q["choices"]["text"]):
        if txt.lower() in low:
            return lab
    return None


def is_correct(answer: str, q: dict) -> bool:
    return extract(answer, q) == q.get("answerKey")
