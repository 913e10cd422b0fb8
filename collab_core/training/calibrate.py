"""Calibrating a budget router on the local model's own answers to sample prompts (offline)."""

from __future__ import annotations

from collections.abc import Iterable

from ..local.loop import lane_greedy_answer, run_lanes
from ..router import BudgetRouter
from ..scoring import TokenSignal


def calibrate_on(router: BudgetRouter, lm, prompts: Iterable[str], *, max_tokens: int = 64,
                 stop: str | None = None, batch: int = 1) -> float:
    """Calibrate ``router`` on its scores of the local model's greedy answers to ``prompts`` (rendered prompt
    strings, fed as is); returns the new threshold. These scores replace any prior the scorer brought. Use
    prompts like the ones to be served, never the evaluation ones. ``batch`` answers that many prompts at once
    (batched decoding); the scores are taken in prompt order either way."""
    router.bind(lm)
    router.scores.clear()

    def answer(prompt):
        def job(dec):
            ids = lm.tokenizer.encode(prompt, add_special_tokens=False)
            steps = yield from lane_greedy_answer(dec, ids, max_tokens=max_tokens, stop=stop)
            return [TokenSignal(step.confidence, i, tid, step.hidden) for i, (tid, step) in enumerate(steps)]
        return job

    signals = run_lanes(lm, [answer(p) for p in prompts], max_batch=batch, want_hidden=router.needs_hidden)
    return router.calibrate([router.score(sig) for answer_signals in signals for sig in answer_signals])
