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
    # at or under the target, up to one span's misestimate over the whole run
    assert share <= budget + 2 / total, (share, budget)
    assert router.routed_share == pytest.approx(share)


def test_never_router_is_local_only(tiny_lm):
    with FakeCloud() as fc:
        g = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, router="never").generate(
            PROMPTS[0], max_tokens=20)
        assert g.stats.cloud_calls == 0 and not fc.requests
