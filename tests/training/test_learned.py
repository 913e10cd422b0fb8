"""The learned router: MLX training, the router file, the model-fingerprint check, use in the engine."""

import json

import numpy as np
import pytest

from collab_core import Engine
from collab_core import scoring as S
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import RouterLoadError
from collab_core.local.decoder import StepDecoder
from collab_core.prompts import encode_prompt
from collab_core.router import BudgetRouter, ThresholdRouter, make_router
from collab_core.scoring import TokenSignal
from collab_core.training import calibrate_on
from collab_core.training import train as T


def test_training_learns_a_separable_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0.8).astype(np.float32)  # a minority class, as "needs the cloud" is
    _, res, val = T.train(x, y, epochs=40)
    assert res.accuracy > 0.9 and res.recall > 0.8 and res.precision > 0.6
    assert 0.1 < res.positives < 0.4 and res.held_out == 400 == len(val)


def test_auc_counts_ties_half_and_matches_pairwise_definition():
    rng = np.random.default_rng(2)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    y = rng.random(300) < 0.3
    pairwise = ((s[y][:, None] > s[~y][None]).mean() + 0.5 * (s[y][:, None] == s[~y][None]).mean())
    assert T.auc(s, y) == pytest.approx(pairwise)
    assert T.auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0 and np.isnan(T.auc(s, np.zeros(300)))


def test_held_out_split_keeps_prompts_whole():
    groups = np.repeat(np.arange(50), 4)
    tr, val = T.split_groups(groups, folds=5, fold=1, seed=3)
    assert len(val) == 40 and not set(groups[tr]) & set(groups[val])
    assert sorted(np.concatenate([tr, val]).tolist()) == list(range(200))
    held = [set(groups[T.split_groups(groups, folds=5, fold=f, seed=3)[1]]) for f in range(5)]
    assert set().union(*held) == set(range(50)) and sum(map(len, held)) == 50  # each prompt held out once


def test_share_curve_routes_equal_counts_and_simulates_outcomes():
    # two prompts of 3 positions; prompt 0 is wrong locally, right if position 1 takes the cloud's token
    y = np.array([0, 1, 0, 0, 0, 0], np.float32)
    group = np.array([0, 0, 0, 1, 1, 1])
    disagree = np.array([0, 1, 0, 1, 0, 0], np.float32)
    alt_ok = np.array([np.nan, 1, np.nan, 0, np.nan, np.nan], np.float32)
    local_ok = np.array([0, 0, 0, 1, 1, 1], np.float32)
    good = np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.0])
    bad = np.array([0.1, 0.2, 0.3, 0.9, 0.0, 0.0])  # routes prompt 1's disagreement: right answer -> wrong
    rows = T.share_curve({"good": good, "bad": bad}, y, group=group, disagree=disagree, alt_ok=alt_ok,
                         local_ok=local_ok, shares=(1 / 6, 0.5))
    assert rows[0]["caught_good"] == 1.0 and rows[0]["caught_bad"] == 0.0
    assert rows[0]["accuracy_good"] == 1.0 and rows[0]["accuracy_bad"] == 0.0
    assert rows[1]["accuracy_bad"] == 0.5  # 3 routed: both disagreements, each prompt takes its first

    # a sampled trace: prompt 0's disagreement has no outcome label, so a score routing it decides nothing there
    unknown = alt_ok.copy()
    unknown[1] = np.nan
    rows = T.share_curve({"good": good}, y, group=group, disagree=disagree, alt_ok=unknown,
                         local_ok=np.zeros(6, np.float32), shares=(1 / 6,))
    assert rows[0]["accuracy_good"] == 0.0  # prompt 1 alone (its wrong local answer), not "1 of 2 right"


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
    return sigs, np.stack([S.features(s, log_v) for s in sigs])


@pytest.fixture(scope="module")
def router_dir(tiny_lm, tmp_path_factory):
    sigs, x = _traces(tiny_lm, ["What is the capital of France?", "Name a fruit.", "Why is the sky blue?",
                                "Count to ten.", "Describe rain."])
    y = np.array([s.confidence.max_prob < 0.3 for s in sigs], dtype=np.float32)  # stand-in label
    model, res, _ = T.train(x, y, epochs=80, hidden=32)
    quantiles = np.quantile(T.predict(model, x), np.linspace(0, 1, 201)).tolist()
    path = T.save(model, tmp_path_factory.mktemp("router") / "r", model_fingerprint=tiny_lm.fingerprint,
                  in_dim=x.shape[1], hidden=32, metrics=res.__dict__, score_quantiles=quantiles)
    return path, sigs, y, res


def test_router_file_round_trip_and_scores(tiny_lm, router_dir):
    path, sigs, y, res = router_dir
    scorer = S.LearnedScorer(path)
    scorer.bind(tiny_lm)
    scores = np.array([scorer(s) for s in sigs])
    assert ((scores >= 0.5) == y.astype(bool)).mean() > 0.8  # it learned the label on its own traces
    assert res.accuracy > 0.7


def test_router_refused_for_another_model(tiny_dir, router_dir, tmp_path):
    from collab_core.local.loading import LocalModel

    path = router_dir[0]
    scorer = S.LearnedScorer(path)
    other = LocalModel(model=None, tokenizer=None, spec="some/other-model", path=None,
                       config={"hidden_size": 64, "vocab_size": 384})
    with pytest.raises(RouterLoadError, match="trained for local model"):
        scorer.bind(other)
    with pytest.raises(RouterLoadError, match="no router"):
        S.LearnedScorer(tmp_path / "missing")


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
                       router=make_router(f"learned:{path}", threshold=1.0))  # the top of [0, 1]: no score here reaches it
        quiet = never.generate("What is the capital of France?", max_tokens=24)
    assert gen.stats.cloud_calls > 0 and gen.stats.cloud_failures == 0
    assert quiet.stats.cloud_calls == 0
    scores = [e.score for e in gen.events if e.score is not None]
    assert scores and all(0.0 <= s <= 1.0 for s in scores)  # the MLP's probabilities, per local token


# -- traces: labels from a scripted cloud on loopback ------------------------------------------------------
def test_collect_labels_disagreements_and_outcomes(tiny_lm, tmp_path):
    from collab_core.cloud.client import CloudClient, CloudConfig
    from collab_core.prompts import render_prompt
    from collab_core.training.traces import TraceCollector, TraceTask, load_traces

    prompt = render_prompt(tiny_lm, "Tell me a story.")[0]  # 4 whole-character tokens (no byte pieces)
    ids = tiny_lm.tokenizer.encode(prompt, add_special_tokens=False)
    dec = StepDecoder(tiny_lm)
    step, local = dec.prefill(ids), []
    for _ in range(4):
        local.append(step.token_id)
        step = dec.step(step.token_id)
    text = tiny_lm.tokenizer.decode(local)
    cut = len(tiny_lm.tokenizer.decode(local[:2]))
    assert tiny_lm.eos_token_ids.isdisjoint(local) and text[cut:cut + 1] != "Q"

    cloud_answer = text[:cut] + "QQ" + text[cut:]  # the cloud writes QQ where the local third token goes

    def reply(body):  # the cloud's answer where the partial answer agrees with it, else the local one's rest
        partial = body["prompt"][len(prompt):]
        return cloud_answer[len(partial):] if cloud_answer.startswith(partial) else text[len(partial):]

    def check(answer):  # "right" means: the cloud's Q replaced the local third token
        return answer[cut:].startswith("Q")

    with FakeCloud(reply=reply, finish_reason="stop") as fc:
        client = CloudClient(CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=6))
        col = TraceCollector(tiny_lm, client, tmp_path / "tr", max_tokens=4, stop="")
        rec = col.collect_one(TraceTask("q1", prompt, check))
        calls = len(fc.requests)
        # collecting again into the same folder answers from its span cache: no new call
        again = TraceCollector(tiny_lm, client, tmp_path / "tr", max_tokens=4, stop="")
        assert again.collect_one(TraceTask("q1", prompt, check))["disagree"].tolist() == rec["disagree"].tolist()
        assert len(fc.requests) == calls and again.calls == 0
    assert rec["disagree"].tolist() == [0, 0, 1, 0]
    assert calls == 2  # one call labels positions 0-2, the next one position 3
    assert json.loads(str(np.load(tmp_path / "tr" / "q1.npz")["meta"]))["cloud_next"][2].startswith("QQ")

    # the second call fails (401 is not retried): no file, and the next run resumes from the cached first span
    with FakeCloud(reply=reply, finish_reason="stop") as fc:
        fc.faults.extend(["none", "401"])
        client = CloudClient(CloudConfig(model="text-completion-openai/fake", api_base=fc.url, span_tokens=6))
        col = TraceCollector(tiny_lm, client, tmp_path / "tr3", max_tokens=4, stop="")
        assert col.run([TraceTask("q1", prompt, check)], progress=False) == 0
        assert not (tmp_path / "tr3" / "q1.npz").exists() and len(fc.requests) == 2
        assert col.run([TraceTask("q1", prompt, check)], progress=False) == 1
        assert len(fc.requests) == 3  # only the failed call was repeated
    assert rec["local_ok"] == 0 and rec["alt_ok"][2] == 1 and np.isnan(rec["alt_ok"][[0, 1, 3]]).all()
    assert rec["x"].shape == (4, tiny_lm.config["hidden_size"] + 3) and rec["conf_score"].shape == (4,)
    t = load_traces(tmp_path / "tr")
    assert t.labels("outcome").tolist() == [0, 0, 1, 0] and t.ids == ["q1"]
    assert t.labels("disagree").sum() == 1


def test_budget_calibration_on_the_learned_score(tiny_lm, router_dir):
    path, sigs, _, _ = router_dir
    prompts = ["Tell me a story.", "Count to ten."]
    router = BudgetRouter(0.1, scorer=S.LearnedScorer(path))
    threshold = calibrate_on(router, tiny_lm, prompts, max_tokens=10)
    scores = np.fromiter(router.scores, float)
    assert len(scores) == 20 and router.calibrated  # one learned score per greedy position
    assert threshold == pytest.approx(np.quantile(scores, 1 - 0.1 / 2.0))


def test_budget_router_starts_from_the_router_files_score_distribution(tiny_lm, router_dir):
    path = router_dir[0]
    router = make_router(f"learned:{path}", budget=0.1)
    assert not router.calibrated
    router.bind(tiny_lm)
    prior = router.scorer.meta["score_quantiles"]
    assert router.calibrated and len(prior) == 201
    assert router.threshold == pytest.approx(np.quantile(prior, 1 - 0.1 / 2.0))


def test_no_shipped_router_for_an_unknown_model(tiny_lm):
    router = make_router("learned", budget=0.07)
    with pytest.raises(RouterLoadError, match="no router ships for local model"):
        router.bind(tiny_lm)


@pytest.mark.smollm
def test_shipped_router_for_the_default_model(smollm):
    path = S.shipped_router(smollm.fingerprint)
    assert path is not None and (path / "weights.safetensors").stat().st_size < 1_000_000
    meta = json.loads((path / "router.json").read_text())
    assert meta["metrics"]["label"] in ("outcome", "disagree") and meta["metrics"]["prompts"] >= 200
    assert meta["metrics"]["folds"] == 5 and len(meta["score_quantiles"]) == 201
    router = make_router("learned", budget=0.07)
    router.bind(smollm)
    dec = StepDecoder(smollm, want_hidden=True)
    step = dec.prefill(encode_prompt(smollm, "Where do you keep plates? Answer with a letter."))
    p = router.score(TokenSignal(step.confidence, 0, step.token_id, step.hidden))
    assert 0.0 <= p <= 1.0


def test_a_router_ships_for_the_seed_like_local_model():
    from collab_core.local.weights import QWEN25_CODER_05B

    path = S.shipped_router("sha256:" + QWEN25_CODER_05B.sha256)  # the fingerprint of the named model's GGUF
    assert path is not None and path.name == "qwen2.5-coder-0.5b-instruct"
    text = (path / "router.json").read_text()
    meta = json.loads(text)
    # a value router: hidden state + token embedding (896 each), top-5 log-probs, confidence summary
    assert meta["in_dim"] == 896 + 896 + 5 + 3 and meta["feature_set"] == "hidden+embed+topk+conf"
    m = meta["metrics"]
    assert m["kind"] == "value" and m["questions"] >= 100 and m["chosen"] in m["cv"]
    assert m["trained"]["label_span"] == 1 and m["after"]  # one-token spans, chained where a second pays
    assert len(meta["score_quantiles"]) == 1001
    assert "/root" not in text and "/work" not in text and "/home" not in text  # no local paths in a shipped file


def test_train_router_cross_validates_and_writes_a_loadable_router(tiny_lm, tmp_path):
    """Synthetic traces where the label hides in the hidden state and the confidence score is noise: the
    cross-validated learned curve must beat confidence, and the saved router must load and bind."""
    from collab_core.training.traces import TRACE_VERSION

    rng = np.random.default_rng(1)
    d = tiny_lm.config["hidden_size"] + 3
    for i in range(60):
        n = 4
        x = rng.normal(size=(n, d)).astype(np.float32)
        x[:, 0] *= 3.0  # a strong direction
        disagree = (x[:, 0] > 2.0).astype(np.float32)
        np.savez(tmp_path / f"q{i}.npz", x=x, conf=np.zeros((n, 3), np.float32),
                 conf_score=rng.random(n).astype(np.float32), token=np.zeros(n, np.int64), disagree=disagree,
                 alt_ok=np.where(disagree == 1, 1.0, np.nan).astype(np.float32), local_ok=np.float32(0),
                 meta=json.dumps({"version": TRACE_VERSION, "id": f"q{i}", "model": tiny_lm.fingerprint}))
    report = T.train_router(tiny_lm, tmp_path, tmp_path / "router", label="outcome", epochs=40)
    assert report.prompts == 60 and report.positions == 240 and report.folds == 5
    at20 = next(c for c in report.curve if c["routed_share"] == 0.2)
    assert at20["caught_learned"] > at20["caught_confidence"] + 0.2
    assert at20["accuracy_learned"] > at20["accuracy_confidence"]
    assert "5-fold" in report.table() and report.auc["learned"] > report.auc["confidence"] + 0.2
    scorer = S.LearnedScorer(tmp_path / "router")
    scorer.bind(tiny_lm)
    assert scorer.meta["metrics"]["curve"] == report.curve and len(scorer.calibration_scores) == 201
    assert scorer.meta["metrics"]["cloud"] == ["?"]  # these synthetic traces name no cloud


def test_cli_router_train_without_traces_is_a_clear_error(tiny_dir, tmp_path, capsys):
    from collab_core import cli

    assert cli.main(["router", "train", "--local-model", str(tiny_dir), "--traces", str(tmp_path / "none")]) == 2
    assert "no traces in" in capsys.readouterr().err


# -- token-exact traces from the cloud model's weights (one teacher-forced pass per answer) ----------------------
def test_teacher_forced_traces_label_every_position_in_one_pass(tiny_lm, tmp_path):
    import mlx.core as mx

    from collab_core.errors import TraceError
    from collab_core.prompts import render_prompt
    from collab_core.training.traces import TeacherForcedCollector, TraceTask, known_only, load_traces

    prompt = render_prompt(tiny_lm, "Tell me a story.")[0]
    ids = tiny_lm.tokenizer.encode(prompt, add_special_tokens=False)
    dec = StepDecoder(tiny_lm)
    step, local = dec.prefill(ids), []
    for _ in range(4):
        local.append(step.token_id)
        step = dec.step(step.token_id)
    q = tiny_lm.tokenizer.encode("Q", add_special_tokens=False)[-1]
    cut = len(tiny_lm.tokenizer.decode(local[:2]))
    assert q != local[2] and tiny_lm.eos_token_ids.isdisjoint(local)

    class Teacher:  # the local model's own weights, except that it wants "Q" as the third answer token
        name, vocab_fingerprint, lengths = "teacher", tiny_lm.vocab_fingerprint, []

        def model(self, x):
            self.lengths.append(x.shape[1])
            logits = tiny_lm.model(x)
            return logits + mx.zeros(logits.shape).at[0, len(ids) + 1, q].add(1e4)

    def check(answer):  # "right" means: the teacher's Q took the third position
        return answer[cut:].startswith("Q")

    teacher = Teacher()
    col = TeacherForcedCollector(tiny_lm, teacher, tmp_path / "tf", max_tokens=4, stop="", continuations=3)
    rec = col.collect_one(TraceTask("q1", prompt, check))
    assert rec["disagree"].tolist() == [0, 0, 1, 0]
    assert teacher.lengths == [len(ids) + 4] and col.calls == 1  # one pass over prompt + answer labels it all
    assert rec["local_ok"] == 0 and rec["alt_ok"][2] == 1 and np.isnan(rec["alt_ok"][[0, 1, 3]]).all()
    meta = json.loads(str(rec["meta"]))
    assert meta["cloud"] == "teacher:teacher" and meta["cloud_next"] == ["", "", "Q", ""]
    assert load_traces(tmp_path / "tf").labels("outcome").tolist() == [0, 0, 1, 0]

    # no continuation run: the wrong answer's disagreement has no outcome label, and training leaves it out
    TeacherForcedCollector(tiny_lm, teacher, tmp_path / "tf0", max_tokens=4, stop="", continuations=0).collect_one(
        TraceTask("q1", prompt, check))
    t = load_traces(tmp_path / "tf0")
    assert np.isnan(t.alt_ok[2]) and len(known_only(t, "outcome").disagree) == 3
    assert len(known_only(t, "disagree").disagree) == 4 and len(known_only(load_traces(tmp_path / "tf")).x) == 4

    Teacher.vocab_fingerprint = "vocab:another"
    with pytest.raises(TraceError, match="different vocabularies"):
        TeacherForcedCollector(tiny_lm, Teacher(), tmp_path / "tf2")
