"""Calibrating a budget router on the local model's own answers to sample prompts (offline)."""

from __future__ import annotations

from collections.abc import Iterable

from ..local.decoder import StepDecoder, greedy_answer
from ..router import BudgetRouter
from ..scoring import TokenSignal


def calibrate_on(router: BudgetRouter, lm, prompts: Iterable[str], *, max_tokens: int = 64,
                 stop: str | None = None) -> float:
    """Calibrate ``router`` on its scores of the local model's greedy answers to ``prompts`` (rendered prompt
    strings, fed as is); returns the new threshold. These scores replace any prior the scorer brought. Use
    prompts like the ones to be served, never the evaluation ones."""
    router.bind(lm)
    router.scores.clear()
    dec = StepDecoder(lm, want_hidden=router.needs_hidden)
    scores = []
    for prompt in prompts:
        ids = lm.tokenizer.encode(prompt, add_special_tokens=False)
        for i, (tid, step) in enumerate(greedy_answer(dec, ids, max_tokens=max_tokens, stop=stop)):
            scores.append(router.score(TokenSignal(step.confidence, i, tid, step.hidden)))
    return router.calibrate(scores)
