"""Routers: small, swappable policies that decide which tokens go to the cloud.

Every router turns a ``TokenSignal`` (the local model's confidence at a position, the proposed token, the
position, and -- for routers that ask -- the last hidden state) into a score (higher = more in need of
the cloud) and decides on it.

* ``ThresholdRouter`` -- route when the score reaches a fixed threshold;
* ``BudgetRouter`` -- hold the routed share of tokens at or under a target (e.g. 7%) by calibrating its
  threshold as a quantile of recent scores (from a calibration set and/or online), with a hard guard;
* ``NeverRouter`` (local only), ``ScheduledRouter`` (fixed positions; tests and debugging);
* any object with the same interface plugs in.

Scores come from ``scoring`` (``ConfidenceScorer`` by default, ``LearnedScorer`` for ``learned``); a router
only decides on them. Calibrating a budget router on the local model's own answers to sample prompts is
offline work: ``collab_core.training.calibrate_on``.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from collections.abc import Iterable

import numpy as np

from .errors import ConfigError
from .scoring import ConfidenceScorer, LearnedScorer, TokenSignal
from .settings import check_unit


class Router:
    """Base class. Subclasses implement ``score``; ``should_route`` compares it to ``threshold``."""

    name = "router"
    needs_hidden = False
    threshold = math.inf

    def bind(self, lm) -> None:
        """Called once with the local model before the first decision."""

    def score(self, sig: TokenSignal) -> float:
        raise NotImplementedError

    def should_route(self, score: float, sig: TokenSignal) -> bool:
        return score >= self.threshold

    def observe(self, score: float, sig: TokenSignal | None = None) -> None:
        """Every scored position (for online calibration), with its signal where the caller has it."""

    def account(self, tokens: int, cloud_tokens: int, calls: int, runs: int | None = None) -> None:
        """Tokens committed to answers since the last call, how many came from the cloud, in how many calls,
        and how many cloud runs (stretches of consecutive cloud tokens) began among them."""

    def describe(self) -> str:
        return self.name

    def clone(self) -> Router:
        """An independent copy in this router's current state, sharing its scorer (a scorer holds no
        per-request state once bound). A server routes each request with a clone of one template, so that
        no answer depends on what the requests before it routed."""
        return copy.copy(self)


class NeverRouter(Router):
    name = "never"

    def score(self, sig: TokenSignal) -> float:
        return 0.0

    def should_route(self, score: float, sig: TokenSignal) -> bool:
        return False


class ScheduledRouter(Router):
    """Routes at fixed answer positions (deterministic; for tests, debugging and demos)."""

    name = "scheduled"

    def __init__(self, positions: Iterable[int]):
        self.positions = set(positions)

    def score(self, sig: TokenSignal) -> float:
        return 1.0 if sig.position in self.positions else 0.0

    def should_route(self, score: float, sig: TokenSignal) -> bool:
        return sig.position in self.positions


class ThresholdRouter(Router):
    name = "threshold"

    def __init__(self, threshold: float = 0.5, signal: str = "max_prob", importance: bool = True,
                 scorer=None):
        check_unit("threshold", threshold)
        self.threshold = threshold
        self.scorer = scorer or ConfidenceScorer(signal, importance)
        self.needs_hidden = getattr(self.scorer, "needs_hidden", False)

    def bind(self, lm) -> None:
        self.scorer.bind(lm)

    def score(self, sig: TokenSignal) -> float:
        return self.scorer(sig)

    def describe(self) -> str:
        return f"threshold:{self.threshold:g}"


class BudgetRouter(Router):
    """Keeps the routed share of tokens at or under ``budget``, spent where the scores are highest.

    The threshold is the ``1 - budget / span`` quantile of recent scores (``span`` = cloud tokens per call,
    tracked online), seeded by ``calibrate(scores)`` (a learned scorer brings its training quantiles) or learned
    online from the first ``min_observations`` positions: that is what spends the budget, on the positions that
    score highest, wherever they fall.

    A hard guard keeps the share honest: a span is sent only while the cloud tokens, counting it, stay within
    ``budget`` of the tokens written **plus ``burst`` tokens**. The burst is what lets a 2% budget go to one
    position of a 60-token answer -- its answer slot, say -- even at the answer's start, instead of being
    spread evenly (without it, nothing could be routed before the 50th token). It is 2 tokens by default: a
    routed token and, when the router asked again right after it wants the next one too, that one (the value
    labels show the pair is what pays where the cloud's first token only opens a parenthesis before its
    letter). Over many answers the share converges to the budget; the burst bounds how far ahead of it the
    router may run.

    Runs: where the router, asked again right after a cloud token (``TokenSignal.after_cloud``), routes that
    position too, one start costs a *run* of tokens. The threshold is therefore the ``1 - budget / run``
    quantile (``run`` = cloud tokens per run, measured as the engine accounts for them) of the scores at
    positions that could start a run (those right after a cloud token are not observed: their tokens are priced
    in the run), and a run's start must leave room within the guard for the whole run, so that the guard does not
    cut a run that it let start.

    Whose budget: the ledger (tokens written, cloud tokens) is this router object's. An ``Engine`` routes
    every generation with its one router, so the budget is **per engine**: the share over everything it has
    written. ``collab serve`` routes each request with a clone of a template router, so there the budget is
    **per request** (no answer depends on the requests before it).
    """

    name = "budget"

    def __init__(self, budget: float = 0.07, signal: str = "max_prob", importance: bool = True, scorer=None,
                 window: int = 4096, min_observations: int = 64, initial_threshold: float = 0.6,
                 span_estimate: float = 2.0, burst: float = 2.0):
        check_unit("budget", budget)
        if budget == 0:
            raise ConfigError("a BudgetRouter needs a budget above 0 (budget=0 is NeverRouter, as make_router gives)")
        if burst < 0:
            raise ConfigError(f"burst must be >= 0 cloud tokens, not {burst!r}")
        self.burst = burst
        self.budget = budget
        self.scorer = scorer or ConfidenceScorer(signal, importance)
        self.needs_hidden = getattr(self.scorer, "needs_hidden", False)
        self.scores: deque[float] = deque(maxlen=window)
        self.min_observations = min_observations
        self.threshold = initial_threshold
        self.span_estimate = span_estimate
        self.total_tokens = 0
        self.cloud_tokens = 0
        self.calls = 0
        self.runs = 0
        self._since_update = 0
        self.calibrated = False

    def bind(self, lm) -> None:
        self.scorer.bind(lm)
        prior = getattr(self.scorer, "calibration_scores", None)  # a trained scorer brings its score distribution
        if prior is not None and not self.calibrated:
            self.calibrate(prior)

    def score(self, sig: TokenSignal) -> float:
        return self.scorer(sig)

    def calibrate(self, scores: Iterable[float]) -> float:
        self.scores.extend(float(s) for s in scores)
        self.calibrated = True
        self._update_threshold()
        return self.threshold

    def expect_span(self, tokens: int) -> None:
        """The cloud's span length as configured (an engine says so when it binds): the estimate starts there until
        spans are measured, so a one-token span is not priced as two."""
        if not self.calls and tokens >= 1:
            self.span_estimate = float(tokens)
            self._update_threshold()

    @property
    def run_estimate(self) -> float:
        """Cloud tokens per run: measured once runs are accounted for, the span estimate until then."""
        return self.cloud_tokens / self.runs if self.runs else self.span_estimate

    def _update_threshold(self) -> None:
        if not self.scores:
            return
        q = 1.0 - min(1.0, self.budget / max(1.0, self.run_estimate))
        self.threshold = float(np.quantile(np.fromiter(self.scores, dtype=np.float64), q))
        self._since_update = 0

    def observe(self, score: float, sig: TokenSignal | None = None) -> None:
        if sig is not None and sig.after_cloud:  # a run's next token, not a start: its cost is in the run's
            return
        self.scores.append(score)
        self._since_update += 1
        if (self.calibrated or len(self.scores) >= self.min_observations) and self._since_update >= 16:
            self._update_threshold()

    def should_route(self, score: float, sig: TokenSignal) -> bool:
        if score < self.threshold or score <= 0.0:
            return False
        # after this span (a run's start: after the whole run) the share would still be within budget, give or
        # take the burst (spans longer than estimated overshoot)
        need = self.span_estimate if sig.after_cloud else max(self.span_estimate, min(self.run_estimate, self.burst))
        return self.cloud_tokens + need <= self.budget * (self.total_tokens + need) + self.burst

    def account(self, tokens: int, cloud_tokens: int, calls: int, runs: int | None = None) -> None:
        self.total_tokens += tokens
        self.cloud_tokens += cloud_tokens
        self.runs += (calls if cloud_tokens else 0) if runs is None else runs
        if calls and cloud_tokens:
            self.calls += calls
            self.span_estimate = 0.8 * self.span_estimate + 0.2 * (cloud_tokens / calls)

    @property
    def routed_share(self) -> float:
        return self.cloud_tokens / self.total_tokens if self.total_tokens else 0.0

    def describe(self) -> str:
        return f"budget:{self.budget:g} (threshold {self.threshold:.3f})"

    def clone(self) -> BudgetRouter:
        twin = copy.copy(self)
        twin.scores = deque(self.scores, maxlen=self.scores.maxlen)  # calibration kept, never shared
        return twin


#: The budget of the default router where the local model ships a value-trained router.
DEFAULT_VALUE_BUDGET = 0.02


def default_router(fingerprint: str | None) -> Router:
    """The router an engine uses when none is named (no router, threshold or budget): where the router shipped
    for the local model with this ``fingerprint`` is meant as its default (``default_budget``), that router holding
    that budget; elsewhere the confidence threshold router at 0.5."""
    from .scoring import shipped_router

    found = shipped_router(fingerprint) if fingerprint else None
    budget = default_budget(found) if found is not None else None
    if budget is not None:
        return BudgetRouter(budget, scorer=LearnedScorer(found))
    return ThresholdRouter(0.5)


def default_budget(folder) -> float | None:
    """The budget a shipped router is meant to hold by default: its ``router.json``'s ``default_budget``, else
    ``DEFAULT_VALUE_BUDGET`` for a router trained on value labels; None: not a default router."""
    import json
    from pathlib import Path

    try:
        meta = json.loads((Path(folder) / "router.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("default_budget") is not None:
        return float(meta["default_budget"])
    return DEFAULT_VALUE_BUDGET if meta.get("metrics", {}).get("kind") == "value" else None


def make_router(spec: str | Router | None, *, threshold: float | None = None, budget: float | None = None) -> Router:
    """A router from an object, a spec string (``never``, ``threshold:0.5``, ``budget:0.07``,
    ``learned:PATH``, ``learned`` for the shipped one -- with ``budget=`` it holds that budget on the learned
    score) or the
    ``threshold``/``budget`` shortcuts. A threshold or budget outside [0, 1] is a ``ConfigError``; a budget
    of 0 never routes."""
    check_unit("threshold", threshold)
    check_unit("budget", budget)
    if isinstance(spec, Router):
        return spec
    name, _, arg = str(spec).partition(":") if spec is not None else ("", "", "")
    if name in ("threshold", "budget") and arg:
        try:
            value = float(arg)
        except ValueError:
            raise ConfigError(f"router {spec!r}: {arg!r} is not a number") from None
        check_unit(name, value)
    if budget == 0 or (name == "budget" and arg and float(arg) == 0):
        return NeverRouter()
    if spec is None:
        if budget is not None:
            return BudgetRouter(budget)
        return ThresholdRouter(0.5 if threshold is None else threshold)
    if name == "never":
        return NeverRouter()
    if name == "threshold":
        return ThresholdRouter(float(arg) if arg else (threshold if threshold is not None else 0.5))
    if name == "budget":
        return BudgetRouter(float(arg) if arg else (budget if budget is not None else 0.07))
    if name == "learned":
        scorer = LearnedScorer(arg or None)  # no path: the router shipped for the local model
        if budget is not None:
            return BudgetRouter(budget, scorer=scorer)
        return ThresholdRouter(0.5 if threshold is None else threshold, scorer=scorer)
    raise ConfigError(f"unknown router {spec!r}: use never, threshold:T, budget:B, learned or learned:PATH")
