"""Scoring and routers."""

import math

import pytest

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.router import (
    BudgetRouter,
    NeverRouter,
    ScheduledRouter,
    ThresholdRouter,
    make_router,
)
from collab_core.scoring import Confidence, ConfidenceScorer, ImportanceWeights, TokenSignal

PROMPTS = ["What is the capital of France?", "Name a fruit.", "Why is the sky blue?", "Count to five.",
           "What do cats eat?", "Describe rain.", "Who wrote Hamlet?", "What is 2+2?"]


def _conf(p1, p2, ids=(0, 1)):
    rest = max(1e-9, 1 - p1 - p2)  # spread over 100 other tokens
    entropy = -(p1 * math.log(p1) + p2 * math.log(p2) + rest * math.log(rest / 100))
    return Confidence(max_prob=p1, entropy=entropy, margin=p1 - p2, top_ids=ids, top_probs=(p1, p2))


def test_importance_weights_punctuation_less_than_words(tiny_lm):
    w = ImportanceWeights(tiny_lm.tokenizer)
    vocab = tiny_lm.tokenizer.get_vocab()
    assert w.weights[vocab["Paris"]] == 1.0
    assert w.weights[vocab["."]] == w.low and w.weights[vocab[","]] == w.low
    assert w.weights[vocab["<|im_end|>"]] == w.low
    content = _conf(0.4, 0.3, (vocab["Paris"], vocab["The"]))
    punct = _conf(0.4, 0.3, (vocab["."], vocab[","]))
    assert w(content) == pytest.approx(1.0) and w(punct) == pytest.approx(w.low)


def test_threshold_router_scores_uncertainty_times_importance(tiny_lm):
    r = ThresholdRouter(0.5)
    r.bind(tiny_lm)
    vocab = tiny_lm.tokenizer.get_vocab()
    unsure_word = TokenSignal(_conf(0.3, 0.2, (vocab["Paris"], vocab["The"])), 0, vocab["Paris"])
    unsure_punct = TokenSignal(_conf(0.3, 0.2, (vocab["."], vocab[","])), 0, vocab["."])
    sure_word = TokenSignal(_conf(0.9, 0.05, (vocab["Paris"], vocab["The"])), 0, vocab["Paris"])
    assert r.score(unsure_word) == pytest.approx(0.7)
    assert r.should_route(r.score(unsure_word), unsure_word)
    assert not r.should_route(r.score(unsure_punct), unsure_punct)
    assert not r.should_route(r.score(sure_word), sure_word)


@pytest.mark.parametrize("signal", ["max_prob", "entropy", "margin"])
def test_scorer_signals_are_in_unit_range(tiny_lm, signal):
    s = ConfidenceScorer(signal, importance=False)
    s.bind(tiny_lm)
    for p1, p2 in [(0.99, 0.01), (0.5, 0.4), (0.1, 0.09)]:
        assert 0.0 <= s(TokenSignal(_conf(p1, p2), 0, 0)) <= 1.0
    assert s(TokenSignal(_conf(0.1, 0.09), 0, 0)) > s(TokenSignal(_conf(0.99, 0.01), 0, 0))


def test_make_router_specs():
    assert isinstance(make_router("never"), NeverRouter)
    assert make_router("threshold:0.3").threshold == 0.3
    assert make_router(None, budget=0.05).budget == 0.05
    assert isinstance(make_router(None), ThresholdRouter)
    r = ScheduledRouter([1])
    assert make_router(r) is r
    with pytest.raises(ValueError):
        make_router("magic:1")
    with pytest.raises(ValueError):
        BudgetRouter(0)


def test_budget_router_calibration_sets_the_quantile():
    r = BudgetRouter(0.1, span_estimate=1.0)
    thr = r.calibrate([i / 100 for i in range(100)])
    assert thr == pytest.approx(0.891, abs=0.01)


@pytest.mark.parametrize("budget", [0.07, 0.2])
def test_budget_router_holds_the_routed_share(tiny_lm, budget):
    router = BudgetRouter(budget, min_observations=32)
    with FakeCloud(reply=" the cat") as fc:
        eng = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, router=router,
                     pipeline="sync", cache=False)
        cloud = total = 0
        for p in PROMPTS * 2:
            g = eng.generate(p, max_tokens=30)
            cloud += g.stats.cloud_tokens
            total += g.stats.total_tokens
    share = cloud / total
    assert cloud > 0, "a budget router must use its budget"
    # at or under the target, up to one span's misestimate and the burst (1 token) over the whole run
    assert share <= budget + (2 + router.burst) / total, (share, budget)
    assert router.routed_share == pytest.approx(share)


def test_never_router_is_local_only(tiny_lm):
    with FakeCloud() as fc:
        g = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, router="never").generate(
            PROMPTS[0], max_tokens=20)
        assert g.stats.cloud_calls == 0 and not fc.requests


class _AtPosition:
    """A scorer that wants the cloud at one answer position only (a value router's answer slot, say)."""

    needs_hidden = False

    def __init__(self, position):
        self.position = position

    def bind(self, lm):
        pass

    def __call__(self, sig):
        return 1.0 if sig.position == self.position else 0.0


def _sig(position):
    return TokenSignal(_conf(0.9, 0.05), position, 0)


@pytest.mark.parametrize("position", [0, 3, 30])
def test_a_two_percent_budget_goes_to_one_position_anywhere(position):
    """The burst lets a 2% budget be spent on the position that scores highest, even the first, instead of
    forcing the spend to wait until 2% of the answer is written (50 tokens); with burst=0 it could not."""
    router = BudgetRouter(0.02, scorer=_AtPosition(position), span_estimate=1.0)
    router.calibrate([0.0] * 99 + [1.0])
    spent = []
    for k in range(60):
        s = router.score(_sig(k))
        if router.should_route(s, _sig(k)):
            spent.append(k)
            router.account(1, 1, 1)
        else:
            router.account(1, 0, 0)
    assert spent == [position]
    strict = BudgetRouter(0.02, scorer=_AtPosition(position), span_estimate=1.0, burst=0.0)
    strict.calibrate([0.0] * 99 + [1.0])
    strict.account(position, 0, 0)
    assert not strict.should_route(1.0, _sig(position))  # 1 cloud token > 2% of the first 31 tokens


@pytest.mark.parametrize("position", [0, 30])
def test_a_two_percent_budget_chains_a_pair_anywhere_by_default(position):
    """By default the burst is 2 tokens: a routed token and the one right after it (the router asked again
    there), anywhere in the first answer; a third in a row waits for the budget."""
    router = BudgetRouter(0.02, scorer=_AtPosition(-1), span_estimate=1.0)
    router.calibrate([0.0] * 99 + [1.0])
    router.account(position, 0, 0)
    spent = []
    for k in range(position, position + 3):
        if router.should_route(1.0, _sig(k)):
            spent.append(k)
            router.account(1, 1, 1)
        else:
            router.account(1, 0, 0)
    assert spent == [position, position + 1]


def test_the_burst_bounds_how_far_ahead_a_budget_runs():
    router = BudgetRouter(0.02, scorer=_AtPosition(-1), span_estimate=1.0, burst=1.0)
    router.calibrate([0.0, 1.0])
    routed = 0
    for _ in range(100):  # a scorer that always wants the cloud
        if router.should_route(1.0, _sig(0)):
            routed += 1
            router.account(1, 1, 1)
        else:
            router.account(1, 0, 0)
    assert routed <= 0.02 * 100 + 1.0
    with pytest.raises(ValueError):
        BudgetRouter(0.02, burst=-1)


def test_the_budget_is_per_engine_and_per_request_when_served(tiny_lm):
    """An Engine's one router keeps one ledger over every answer; a server's requests each route with their
    own clone of the template, so each has its own ledger (and its own burst)."""
    from collab_core.cloud.client import CloudConfig
    from collab_core.server.routing import request_router

    router = BudgetRouter(0.02, scorer=_AtPosition(2), span_estimate=1.0, burst=1.0)
    router.calibrate([0.0] * 99 + [1.0])
    template = router.clone()
    with FakeCloud(reply=" the cat") as fc:
        cfg = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=1)
        eng = Engine(tiny_lm, cloud=cfg, router=router, pipeline="sync", cache=False)
        first = eng.generate(PROMPTS[0], max_tokens=8)
        assert first.stats.cloud_tokens == 1  # its one token, at position 2 (the burst)
        second = eng.generate(PROMPTS[1], max_tokens=8)
        assert second.stats.cloud_tokens == 0  # 2 cloud tokens would be over 2% of 16 tokens + the burst
        assert (router.cloud_tokens, router.total_tokens) == (1, first.stats.total_tokens + second.stats.total_tokens)
        served = [eng.generate(p, max_tokens=8, router=request_router(template)) for p in PROMPTS[:2]]
        assert [g.stats.cloud_calls for g in served] == [1, 1]  # per request: each spends its own burst


def test_the_default_router_follows_what_ships_for_the_model():
    """Qwen2.5-Coder-0.5B ships a router meant as its default (``default_budget``): an Engine given no router,
    threshold or budget holds that budget on the learned score; SmolLM2's shipped router is not a default, and a
    model without one routes by confidence."""
    from collab_core.local.loading import model_fingerprint
    from collab_core.router import default_router

    qwen = default_router(model_fingerprint("qwen2.5-coder-0.5b"))
    assert isinstance(qwen, BudgetRouter) and qwen.budget == 0.02 and qwen.needs_hidden
    assert isinstance(default_router(model_fingerprint("smollm2-135m")), ThresholdRouter)
    assert isinstance(default_router(None), ThresholdRouter) and default_router(None).threshold == 0.5
    eng = Engine("qwen2.5-coder-0.5b")  # nothing loaded: the router is chosen from the name
    assert isinstance(eng.router, BudgetRouter) and not eng.loaded
    assert isinstance(Engine("qwen2.5-coder-0.5b", threshold=0.3).router, ThresholdRouter)


def test_a_budget_prices_spans_at_the_configured_length(tiny_lm):
    r = BudgetRouter(0.02)  # span_estimate 2.0 until told or measured
    r.calibrate([i / 1000 for i in range(1000)])
    two = r.threshold
    r.expect_span(1)
    assert r.span_estimate == 1.0 and r.threshold < two  # the 98th percentile, not the 99th
    r.account(10, 2, 1)
    r.expect_span(4)  # measured spans win over the configuration
    assert r.span_estimate != 4.0
    from collab_core.cloud.client import CloudConfig

    with FakeCloud() as fc:
        eng = Engine(tiny_lm, cloud=CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=1),
                     router=BudgetRouter(0.05), pipeline="sync", cache=False)
        assert eng.router.span_estimate == 2.0
        eng._bind(eng.router)  # what the first generation does
    assert eng.router.span_estimate == 1.0


def test_a_run_is_priced_whole_at_its_start_and_not_cut():
    """Asked again right after a cloud token (``after_cloud``), a router may extend a run; once runs are
    measured (2 tokens each here), the threshold targets runs, not tokens, and a start needs room for the run."""
    router = BudgetRouter(0.02, scorer=_AtPosition(-1), span_estimate=1.0)
    router.calibrate([i / 1000 for i in range(1000)])
    assert router.threshold == pytest.approx(0.98, abs=1e-3)  # 2% of positions, a token each
    router.account(100, 2, 2, runs=1)  # one run of two one-token calls
    assert router.run_estimate == 2.0
    router.calibrate([])
    assert router.threshold == pytest.approx(0.99, abs=1e-3)  # a start now costs two tokens: 1% of positions
    router.account(0, 1, 1, runs=1)  # 3 cloud tokens of 100: room 0.02 * 101 + 2 - 3 = 1.02 for one more token
    start, after = TokenSignal(_conf(0.1, 0.9), 100, 0), TokenSignal(_conf(0.1, 0.9), 100, 0, after_cloud=True)
    assert not router.should_route(1.0, start)  # a new run would not fit whole
    assert router.should_route(1.0, after)  # the run under way may take its next token
    seen = len(router.scores)
    router.observe(0.5, after)  # a run's next position: priced in the run, not a start's candidate
    router.observe(0.5, start)
    assert len(router.scores) == seen + 1


def test_the_engine_says_which_positions_follow_a_cloud_token_and_counts_runs(tiny_lm):
    seen = []

    class _Pair(_AtPosition):
        def __call__(self, sig):
            seen.append((sig.position, sig.after_cloud))
            return 1.0 if sig.position in (2, 3) else 0.0

    from collab_core.cloud.client import CloudConfig

    router = BudgetRouter(0.5, scorer=_Pair(None), span_estimate=1.0)
    router.calibrate([0.0, 1.0])
    with FakeCloud(reply=" the cat") as fc:
        cfg = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=1)
        g = Engine(tiny_lm, cloud=cfg, router=router, pipeline="sync", cache=False).generate(PROMPTS[0],
                                                                                            max_tokens=8)
    assert g.stats.cloud_tokens == 2 and g.stats.cloud_calls == 2  # positions 2 and 3: one run of two calls
    assert (router.runs, router.cloud_tokens, router.run_estimate) == (1, 2, 2.0)
    assert (3, True) in seen and (2, False) in seen and (4, True) in seen
    assert not any(after for pos, after in seen if pos in (0, 1, 2))
