"""The learned router: MLX training, the router file, the model-fingerprint check, use in the engine."""

import numpy as np
import pytest

from collab_core import Engine
from collab_core import learned as L
from collab_core.decoder import StepDecoder, encode_prompt
from collab_core.router import BudgetRouter, ThresholdRouter, TokenSignal, make_router
from collab_core.testing import FakeCloud


def test_training_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(np.float32)  # a minority class, as "needs the cloud" is
    _, res = L.train(x, y, epochs=40)
    assert res.accuracy > 0.9 and res.recall > 0.8 and res.precision > 0.6
    assert 0.1 < res.positives < 0.4 and res.held_out == 400


def _traces(lm, prompts, n=24):
    """(signals, features) of the tiny model's own greedy steps."""
    import math

    log_v = math.log(lm.config["vocab_size"])
    sigs = []
    for p in prompts:
        dec = StepDecoder(lm, want_hidden=True)
        step = dec.prefill(encode_prompt(lm, p))
        for i in range(n):
            sigs.append(TokenSignal(step.confidence, i, step.token_id, step.hidden))
            step = dec.step(step.token_id)
    return sigs, np.stack([L.features(s, log_v) for s in sigs])


@pytest.fixture(scope="module")
def router_dir(tiny_lm, tmp_path_factory):
    sigs, x = _traces(tiny_lm, ["What is the capital of France?", "Name a fruit.", "Why is the sky blue?",
                                "Count to ten.", "Describe rain."])
    y = np.array([s.confidence.max_prob < 0.3 for s in sigs], dtype=np.float32)  # stand-in label
    model, res = L.train(x, y, epochs=80, hidden=32)
    path = L.save(model, tmp_path_factory.mktemp("router") / "r", model_fingerprint=tiny_lm.fingerprint,
                  in_dim=x.shape[1], hidden=32, metrics=res.__dict__)
    return path, sigs, y, res


def test_router_file_round_trip_and_scores(tiny_lm, router_dir):
    path, sigs, y, res = router_dir
    scorer = L.LearnedScorer(path)
    scorer.bind(tiny_lm)
    scores = np.array([scorer(s) for s in sigs])
    assert ((scores >= 0.5) == y.astype(bool)).mean() > 0.8  # it learned the label on its own traces
    assert res.accuracy > 0.7


def test_router_refused_for_another_model(tiny_dir, router_dir, tmp_path):
    from collab_core.loading import LocalModel

    path = router_dir[0]
    scorer = L.LearnedScorer(path)
    other = LocalModel(model=None, tokenizer=None, spec="some/other-model", path=None,
                       config={"hidden_size": 64, "vocab_size": 384})
    with pytest.raises(L.RouterLoadError, match="trained for local model"):
        scorer.bind(other)
    with pytest.raises(L.RouterLoadError, match="no router"):
        L.LearnedScorer(tmp_path / "missing")


def test_learned_router_drives_the_engine(tiny_lm, router_dir):
    path = router_dir[0]
    assert isinstance(make_router(f"learned:{path}"), ThresholdRouter)
    budget = make_router(f"learned:{path}", budget=0.2)
    assert isinstance(budget, BudgetRouter) and budget.needs_hidden
    with FakeCloud(reply=" Paris") as fc:
        eng = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, router=f"learned:{path}",
                     pipeline="sync", cache=False)
        gen = eng.generate("What is the capital of France?", max_tokens=24)
        never = Engine(tiny_lm, cloud="text-completion-openai/fake", api_base=fc.url, pipeline="sync", cache=False,
                       router=make_router(f"learned:{path}", threshold=1.01))  # a probability never reaches it
        quiet = never.generate("What is the capital of France?", max_tokens=24)
    assert gen.stats.cloud_calls > 0 and gen.stats.cloud_failures == 0
    assert quiet.stats.cloud_calls == 0
    scores = [e.score for e in gen.events if e.score is not None]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)  # the MLP's probabilities, per local token
