"""Value labels (training/values.py) and the router trained on them (training/value_router.py)."""

from __future__ import annotations

import numpy as np
import pytest

from collab_core.errors import ConfigError, TraceError
from collab_core.local.decoder import StepDecoder
from collab_core.local.loop import drive, lane_greedy_answer
from collab_core.scoring import log_vocab, value_features
from collab_core.training.traces import TraceTask
from collab_core.training.value_router import (
    feature_matrix,
    fit_ensemble,
    load_value_traces,
    merge_members,
    routed_gain,
    train_value_router,
)
from collab_core.training.values import ValueCollector, pick_rollouts


class _Teacher:
    """A 'cloud model' that writes the local model's own next token everywhere except at answer positions
    ``differ`` (where it writes ``token``): token-exact disagreements we choose. Its model is causal and keeps a
    KV cache (the local model's, run alongside), as the collector's teacher decoder needs."""

    def __init__(self, lm, prompt_len, differ, token):
        self.vocab_fingerprint, self.name = lm.vocab_fingerprint, "fake-teacher"
        self.prompt_len, self.differ, self.token, self.real = prompt_len, set(differ), token, lm.model
        self.layers = lm.model.layers  # the cache is made per layer

    @property
    def model(self):
        return self

    def __call__(self, x, cache=None):
        import mlx.core as mx

        start = cache[0].offset if cache else 0
        logits = self.real(x, cache=cache)
        rows = [start + i + 1 - self.prompt_len for i in range(x.shape[1])]  # the answer position each row predicts
        force = mx.array([k in self.differ for k in rows])[None, :, None]
        hot = mx.zeros((logits.shape[-1],)).at[self.token].add(1e4)
        return mx.where(force, hot, logits)


def test_pick_rollouts_keeps_the_tail_and_samples_the_rest():
    d = np.zeros(40, np.float32)
    d[[2, 5, 9, 20, 31, 35, 39]] = 1
    picked = pick_rollouts(d, "q1", near=10, sample=2)
    assert {31, 35, 39} <= set(picked) and len(picked) == 5 and picked == sorted(picked, reverse=True)
    assert picked == pick_rollouts(d, "q1", near=10, sample=2)  # seeded by the id
    assert pick_rollouts(d, "q1", near=10, sample=0) == [39, 35, 31]


def _local_answer(lm, prompt, n):
    dec = StepDecoder(lm)
    ids = list(lm.tokenizer.encode(prompt, add_special_tokens=False))
    return ids, [t for t, _ in drive(lane_greedy_answer(dec, ids, max_tokens=n))]


def test_value_labels_by_rollout(tiny_lm, tmp_path):
    prompt = "What is the capital of France?"
    ids, answer = _local_answer(tiny_lm, prompt, 12)
    assert len(answer) == 12
    other = next(t for t in range(50, 200) if t not in answer and t not in tiny_lm.eos_token_ids)
    piece = tiny_lm.tokenizer.decode([other])
    teacher = _Teacher(tiny_lm, len(ids), differ=[3, 10], token=other)
    # the "gold" answer is any answer containing the cloud's token: the local answer is wrong, and taking the
    # cloud's token at either disagreement turns it right (if the local model's greedy text lacks it)
    assert piece not in tiny_lm.tokenizer.decode(answer)
    task = TraceTask("q-1", prompt, check=lambda text: piece in text)
    col = ValueCollector(tiny_lm, teacher, tmp_path, max_tokens=12, near=4, sample=0, max_batch=2, chunk=2)
    assert col.run([task], progress=False) == 1
    d = np.load(tmp_path / "q-1.npz")
    assert d["disagree"].tolist() == [float(k in (3, 10)) for k in range(12)]
    assert d["rolled"].tolist() == [k == 10 for k in range(12)]  # in the last 4; position 3 is not sampled
    assert d["value"][10] == 1.0 and np.isnan(d["value"][3])  # wrong -> right; unknown (not rolled out)
    assert np.all(d["value"][d["disagree"] == 0] == 0)  # agreeing positions change nothing
    assert d["hidden"].shape == (12, tiny_lm.config["hidden_size"]) and d["top_logprobs"].shape == (12, 5)
    assert col.run([task], progress=False) == 0  # resumes: nothing left to do
    with pytest.raises(TraceError):
        ValueCollector(tiny_lm, type("T", (), {"vocab_fingerprint": "x", "name": "t"})(), tmp_path)


def test_feature_matrix_matches_the_scorer(tiny_lm, tmp_path):
    """Training features (vectorised) and serving features (one position at a time) are the same numbers."""
    prompt = "Name a fruit."
    ids, answer = _local_answer(tiny_lm, prompt, 6)
    teacher = _Teacher(tiny_lm, len(ids), differ=[4], token=answer[0])
    col = ValueCollector(tiny_lm, teacher, tmp_path, max_tokens=6, near=3, sample=0)
    col.run([TraceTask("f", prompt, check=lambda t: False)], progress=False)
    t = load_value_traces(tmp_path)
    x = feature_matrix(tiny_lm, t)
    emb = tiny_lm.model.model.embed_tokens

    import mlx.core as mx

    for k in (0, 4):
        e = np.array(emb(mx.array([int(t.token[k])], dtype=mx.uint32))[0].astype(mx.float32))
        one = value_features(t.hidden[k].astype(np.float32), e, t.top[k], tuple(t.conf[k]), log_vocab(tiny_lm))
        assert x[k] == pytest.approx(one, abs=2e-3)


def _synthetic(tmp_path, lm, n_q=30):
    """Value traces where a cloud token pays only where the local token is one marked token (value +1)."""
    import json

    rng = np.random.default_rng(0)
    mark = 7
    for q in range(n_q):
        n = 20
        token = rng.integers(20, 60, n)
        token[rng.integers(0, n)] = mark
        hidden = rng.normal(size=(n, lm.config["hidden_size"])).astype(np.float16)
        value = np.where(token == mark, 1.0, 0.0).astype(np.float32)
        disagree = np.where(token == mark, 1.0, rng.random(n) < 0.2).astype(np.float32)
        np.savez(tmp_path / f"q{q}.npz", hidden=hidden, top_logprobs=np.full((n, 5), -1.0, np.float32),
                 conf=np.tile([0.5, 1.0, 0.1], (n, 1)).astype(np.float32), token=token, cloud_token=token,
                 disagree=disagree, alt_ok=value, value=value, rolled=disagree == 1,
                 local_ok=np.float32(0.0),
                 meta=json.dumps({"version": 2, "id": f"q{q}", "model": lm.fingerprint, "local_text": "x",
                                  "near": 5, "sample": 3}))


def test_value_router_learns_where_a_token_pays(tiny_lm, tmp_path):
    (tmp_path / "t").mkdir()
    _synthetic(tmp_path / "t", lm=tiny_lm)
    rep = train_value_router(tiny_lm, tmp_path / "t", tmp_path / "r", losses=("weighted", "ranking"), folds=3,
                             epochs=30, ensemble=3, log=lambda *_: None)
    # one paying position in 20: at a 7% budget the learned score routes it in (nearly) every question
    best = max(rows[1]["net_per_100"] for rows in rep.cv.values())
    assert best >= 80 and rep.chosen in ("weighted", "ranking")
    assert rep.labels["+1 (wrong->right)"] == 30 and rep.oracle_accuracy == 1.0 and rep.local_accuracy == 0.0
    from collab_core.scoring import LearnedScorer

    scorer = LearnedScorer(tmp_path / "r")
    scorer.bind(tiny_lm)
    assert scorer.feature_set == "hidden+embed+topk+conf"
    # three networks from three seeds, saved as one of three times the width
    assert scorer.meta["hidden"] == 3 * 64 and scorer.meta["metrics"]["trained"]["ensemble"] == 3
    with pytest.raises(ConfigError, match="ensemble"):
        train_value_router(tiny_lm, tmp_path / "t", tmp_path / "r0", ensemble=0, log=lambda *_: None)


def test_an_ensemble_scores_the_mean_logit_of_its_members():
    import mlx.core as mx

    from collab_core.scoring import router_mlp

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype(np.float32)
    v = np.where(x[:, 0] > 1.0, 1.0, 0.0)
    members = []
    for seed in range(3):
        mx.random.seed(seed)
        members.append(router_mlp(10, 8))
    merged = merge_members(members)
    want = np.mean([np.array(m(mx.array(x))) for m in members], axis=0)
    assert merged.layers[0].weight.shape == (24, 10)
    assert np.allclose(np.array(merged(mx.array(x))), want, atol=1e-5)
    # members from different seeds differ, and fit_ensemble merges as many as it is asked for
    assert not np.allclose(np.array(members[0](mx.array(x))), np.array(members[1](mx.array(x))))
    fitted = fit_ensemble(x, v, np.ones(len(x)), "weighted", ensemble=2, hidden=8, epochs=2)
    assert fitted.layers[0].weight.shape == (16, 10)


def test_routed_gain_counts_the_first_routed_position():
    from collab_core.training.value_router import ValueTraces

    z = np.zeros(4)
    t = ValueTraces(hidden=z, top=z, conf=z, token=z, value=np.array([0.0, 1.0, -1.0, np.nan]), weight=z + 1,
                    disagree=np.ones(4, bool), position=np.arange(4), length=z + 2, local_ok=z,
                    group=np.array([0, 0, 1, 1]), ids=["a", "b"], texts=["", ""], model="m")
    assert routed_gain(np.array([0.1, 0.9, 0.8, 0.0]), t, 0.5) == {
        "share": 0.5, "up": 1, "down": 1, "unknown_first": 0, "tokens_share": 0.5, "net_per_100": 0.0}
    assert routed_gain(np.array([0.1, 0.9, 0.0, 0.8]), t, 0.5)["unknown_first"] == 1


def test_two_token_spans_label_what_the_clouds_next_token_does(tiny_lm, tmp_path):
    """With span=2 the cloud writes its token and its next one (the teacher's own, after its first) before the local
    model finishes: a value that needs the second token (a letter after the cloud's "(", say) is labelled."""
    prompt = "What is the capital of France?"
    ids, answer = _local_answer(tiny_lm, prompt, 12)
    first, second = [t for t in range(50, 400) if t not in answer and t not in tiny_lm.eos_token_ids][:2]
    piece = tiny_lm.tokenizer.decode([second])
    assert piece not in tiny_lm.tokenizer.decode(answer)

    class TwoTokens(ValueCollector):
        seen = []

        def teacher_step(self, ids_so_far):
            self.seen.append(ids_so_far[-1])
            return second

    teacher = _Teacher(tiny_lm, len(ids), differ=[10], token=first)
    task = TraceTask("q-2", prompt, check=lambda text: piece in text)
    one = ValueCollector(tiny_lm, teacher, tmp_path / "one", max_tokens=12, near=4, sample=0)
    two = TwoTokens(tiny_lm, teacher, tmp_path / "two", max_tokens=12, near=4, sample=0, span=2)
    one.run([task], progress=False)
    two.run([task], progress=False)
    assert TwoTokens.seen == [first]  # asked once, after the cloud's first token
    v1, v2 = (np.load(tmp_path / n / "q-2.npz")["value"][10] for n in ("one", "two"))
    assert (v1, v2) == (0.0, 1.0)  # only the 2-token span pays
    d = np.load(tmp_path / "two" / "q-2.npz")
    assert d["value_by_span"][10].tolist() == [0.0, 1.0]  # both span lengths, from one collection
    assert d["cloud_span"][10].tolist() == [first, second]
    assert d["local_next"][10, 0] != second  # the local model would not write the cloud's second token itself
    assert np.isnan(d["value_by_span"][~d["rolled"] & (d["disagree"] == 1)]).all()
    assert 10 in d["after_pos"].tolist()  # the features where a router is asked again, after the cloud's token
    assert d["after_hidden"].shape == (len(d["after_pos"]), d["hidden"].shape[1])
    assert d["after_top"].shape == (len(d["after_pos"]), d["top_logprobs"].shape[1])
    assert load_value_traces(tmp_path / "two", span=1).alone[10] == 0.0  # the 1-token label, picked at load
    assert load_value_traces(tmp_path / "two").value[10] == 1.0  # the collector's own span by default
    with pytest.raises(TraceError):
        load_value_traces(tmp_path / "two", span=3)
    with pytest.raises(TraceError):
        ValueCollector(tiny_lm, teacher, tmp_path / "x", span=0)


def test_routed_gain_chains_a_second_token_where_the_router_is_asked_again():
    """A one-token span that buys nothing alone (an opening parenthesis, say) pays when the router, asked again
    right after the cloud's token, routes that position too: the after row (parent 1) holds what it adds."""
    from collab_core.training.value_router import ValueTraces

    z = np.zeros(5)
    t = ValueTraces(hidden=z, top=z, conf=z, token=z, value=np.array([0.0, 0.0, 0.0, 0.0, 1.0]), weight=z + 1,
                    disagree=np.array([0, 1, 0, 0, 1], bool), position=np.array([0, 1, 2, 3, 2]), length=z + 4,
                    local_ok=z, group=np.zeros(5, int), ids=["a"], texts=[""], model="m",
                    parent=np.array([-1, -1, -1, -1, 1]))
    asked_again = routed_gain(np.array([0.1, 0.9, 0.0, 0.0, 0.95]), t, 0.25)
    assert (asked_again["up"], asked_again["tokens_share"]) == (1, 0.5)  # two cloud tokens in four
    alone = routed_gain(np.array([0.1, 0.9, 0.0, 0.0, 0.05]), t, 0.25)
    assert (alone["up"], alone["tokens_share"]) == (0, 0.25)


def test_after_rows_load_with_one_token_labels_and_train(tiny_lm, tmp_path):
    """Version 3 traces: trained on one-token spans, a trace's after rows join the trajectory rows, labelled by
    the 2-token value over the 1-token one; trained on 2-token spans, they are left out."""
    import json

    rng = np.random.default_rng(1)
    mark, h = 7, tiny_lm.config["hidden_size"]
    for q in range(24):
        n = 12
        token = rng.integers(20, 60, n)
        k = int(rng.integers(0, n))
        token[k] = mark  # the cloud writes "(" here: nothing alone, the letter after it pays
        disagree = (token == mark).astype(np.float32)
        by_span = np.zeros((n, 2), np.float32)
        by_span[k] = [0.0, 1.0]
        np.savez(tmp_path / f"q{q}.npz", hidden=rng.normal(size=(n, h)).astype(np.float16),
                 top_logprobs=np.full((n, 5), -1.0, np.float32), conf=np.tile([0.5, 1.0, 0.1], (n, 1)).astype(
                     np.float32), token=token, cloud_token=token, disagree=disagree, alt_ok=by_span[:, 1],
                 value=by_span[:, 1], value_by_span=by_span, rolled=disagree == 1, local_ok=np.float32(0.0),
                 cloud_span=np.where(disagree[:, None] == 1, [[3, 9]], -1), local_next=np.where(
                     disagree[:, None] == 1, [[8, -1]], -1), after_pos=np.array([k]),
                 after_hidden=rng.normal(size=(1, h)).astype(np.float16) + 3.0,
                 after_top=np.full((1, 5), -1.0, np.float32), after_conf=np.array([[0.5, 1.0, 0.1]], np.float32),
                 meta=json.dumps({"version": 3, "id": f"q{q}", "model": tiny_lm.fingerprint, "local_text": "x",
                                  "near": 5, "sample": 1, "span": 2}))
    one = load_value_traces(tmp_path, span=1)
    assert one.after.sum() == 24 and (one.value[one.after] == 1.0).all() and (one.token[one.after] == 8).all()
    assert (one.alone[~one.after & one.disagree] == 0.0).all()
    assert (one.parent[one.after] >= 0).all() and (one.token[one.parent[one.after]] == mark).all()
    two = load_value_traces(tmp_path)
    assert not two.after.any() and (two.value[two.disagree] == 1.0).all()
    rep = train_value_router(tiny_lm, tmp_path, tmp_path / "r", losses=("weighted",), folds=3, epochs=30, span=1,
                             log=lambda *_: None)
    assert rep.oracle_accuracy == 0.0 and rep.oracle_chained == 1.0
    assert rep.after["+1 (wrong->right)"] == 24 and rep.positions == 24 * 12
    assert rep.labels["+1 (wrong->right)"] == 0  # the "(" alone gains nothing ...
    assert (one.value[one.parent[one.after]] == 1.0).all()  # ... but is worth routing when the letter follows
    assert rep.cv["weighted"][1]["net_per_100"] >= 80  # learned: route the "(", then the letter after it
