"""Training a router on value labels (``values.py``): it ranks positions by what a cloud token there is worth.

Inputs per position (``scoring.value_features``): the hidden state, the sampled token's input embedding, the top-k
log-probabilities and the confidence summary. Labels: ``value`` in {-1, 0, +1} (the answer goes right -> wrong,
stays, or goes wrong -> right when the cloud writes that one token); positions where the two models agree are 0 by
construction, sampled-out disagreements are unknown and left out; the sampled ones are weighted by the inverse of
their sampling rate.

Three losses, chosen by cross-validation over questions (``LOSSES``):

* ``weighted`` -- binary cross-entropy on ``value > 0``, positives balanced, harmful positions (-1) weighted
  ``harm`` times as negatives;
* ``regression`` -- squared error on the value itself (the score estimates the expected gain);
* ``ranking`` -- pairwise (RankNet): every pair in a batch whose values differ, the higher value scored higher.

The selection metric is what routing would do (``routed_gain``): a global threshold routes a ``share`` of all
positions; per question the first routed position decides (its value, 0 if unknown). The loss with the best
cross-validated gain at the smallest budget wins; the router is then trained on every question and saved with
its score quantiles, so that a ``BudgetRouter`` starts calibrated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import RouterLoadError, TraceError
from ..scoring import FEATURE_SETS, log_vocab, router_mlp, value_features
from .train import save, split_groups

LOSSES = ("weighted", "regression", "ranking")
BUDGETS = (0.02, 0.07)


@dataclass
class ValueTraces:
    hidden: np.ndarray  # (n, H) float16
    top: np.ndarray  # (n, k) top-k log-probabilities
    conf: np.ndarray  # (n, 3) max_prob, entropy, margin
    token: np.ndarray
    value: np.ndarray  # NaN where unknown
    weight: np.ndarray  # inverse sampling rate of the rolled-out position (1 elsewhere)
    disagree: np.ndarray
    position: np.ndarray  # index in the answer
    length: np.ndarray  # the answer's length, per position
    local_ok: np.ndarray  # per position
    group: np.ndarray
    ids: list[str]
    texts: list[str]
    model: str


def load_value_traces(folder: str | Path, span: int | None = None) -> ValueTraces:
    """Every value trace in ``folder``. ``span`` picks the label: the value of a ``span``-token cloud span
    (version 3 traces hold one per span length up to the collector's ``span``); by default the collector's own."""
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise TraceError(f"no value traces in {folder}: run `collab router collect --values` first")
    cols: dict[str, list] = {k: [] for k in ("hidden", "top", "conf", "token", "value", "weight", "disagree",
                                             "position", "length", "local_ok", "group")}
    ids, texts, models = [], [], set()
    for g, f in enumerate(files):
        d = np.load(f)
        meta = json.loads(str(d["meta"]))
        if meta.get("version") not in (2, 3):
            raise TraceError(f"{f} is not a value trace (version {meta.get('version')})")
        value = d["value"]
        if span is not None and span != meta.get("span", 1):
            if "value_by_span" not in d or span > d["value_by_span"].shape[1] or span < 1:
                raise TraceError(f"{f} holds no value for {span}-token spans (collected with span "
                                 f"{meta.get('span', 1)})")
            value = d["value_by_span"][:, span - 1]
        models.add(meta["model"])
        n = len(d["token"])
        rolled, dis = d["rolled"], d["disagree"] == 1
        weight = np.ones(n, np.float32)
        rest = dis & (np.arange(n) < n - meta["near"])  # the sampled stretch
        sampled = rest & rolled
        if sampled.any():
            weight[sampled] = rest.sum() / sampled.sum()
        for k, v in (("hidden", d["hidden"]), ("top", d["top_logprobs"]), ("conf", d["conf"]),
                     ("token", d["token"]), ("value", value), ("weight", weight), ("disagree", dis),
                     ("position", np.arange(n)), ("length", np.full(n, n)),
                     ("local_ok", np.full(n, float(d["local_ok"]), np.float32)), ("group", np.full(n, g))):
            cols[k].append(v)
        ids.append(meta["id"])
        texts.append(meta["local_text"])
    if len(models) > 1:
        raise TraceError(f"traces in {folder} come from several local models: {sorted(models)}")
    return ValueTraces(**{k: np.concatenate(v) for k, v in cols.items()}, ids=ids, texts=texts, model=models.pop())


def feature_matrix(lm, t: ValueTraces) -> np.ndarray:
    """``scoring.value_features`` for every position at once (the input embeddings looked up in blocks)."""
    import mlx.core as mx

    emb = np.concatenate([np.array(lm.model.model.embed_tokens(mx.array(t.token[i:i + 4096], dtype=mx.uint32))
                                   .astype(mx.float32)) for i in range(0, len(t.token), 4096)])
    return value_features(t.hidden, emb, t.top, t.conf, log_vocab(lm))


def routed_gain(score: np.ndarray, t: ValueTraces, share: float) -> dict:
    """Route the top ``share`` of all positions (one global threshold); per question, the first routed position
    decides: net answers gained (+1 / -1 / 0), and how many questions' first routed position had no label."""
    k = max(1, int(round(share * len(score))))
    routed = np.zeros(len(score), bool)
    routed[np.argsort(-score, kind="stable")[:k]] = True
    up = down = unknown = 0
    for g in np.unique(t.group):
        idx = np.flatnonzero((t.group == g) & routed)
        if not len(idx):
            continue
        v = t.value[idx[0]]
        if np.isnan(v):
            unknown += 1
        up, down = up + (v > 0), down + (v < 0)
    n = len(np.unique(t.group))
    return {"share": share, "up": int(up), "down": int(down), "unknown_first": unknown,
            "net_per_100": round(100.0 * (up - down) / n, 2)}


def _fit(x, v, w, loss: str, *, hidden=64, epochs=20, lr=1e-3, harm=2.0, seed=0, batch=512):
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    rng = np.random.default_rng(seed)
    mx.random.seed(seed)
    model = router_mlp(x.shape[1], hidden)
    opt = optim.AdamW(learning_rate=lr, weight_decay=1e-2)
    pos = v > 0
    pos_w = float((~pos).sum() / max(1, pos.sum()))

    def loss_fn(m, xb, vb, wb):
        s = m(xb).squeeze(-1)
        if loss == "weighted":
            y = (vb > 0).astype(mx.float32)
            ww = wb * mx.where(vb > 0, pos_w, mx.where(vb < 0, harm, 1.0))
            return (ww * nn.losses.binary_cross_entropy(s, y, with_logits=True, reduction="none")).mean()
        if loss == "regression":
            return (wb * mx.where(vb != 0, pos_w, 1.0) * (mx.tanh(s) - vb) ** 2).mean()
        diff = vb[:, None] - vb[None, :]  # ranking: pairs (i, j) with v_i > v_j want s_i > s_j
        pair = (diff > 0).astype(mx.float32) * (wb[:, None] * wb[None, :])
        return (pair * nn.softplus(s[None, :] - s[:, None])).sum() / mx.maximum(pair.sum(), 1.0)

    step = nn.value_and_grad(model, loss_fn)
    xs, vs, ws = mx.array(x), mx.array(v.astype(np.float32)), mx.array(w.astype(np.float32))
    pidx, nidx = np.flatnonzero(v != 0), np.flatnonzero(v == 0)
    for _ in range(epochs):
        if loss == "ranking":  # batches enriched with the rare non-zero values, so most carry pairs
            order = np.concatenate([rng.permutation(pidx), rng.permutation(nidx)[: 8 * max(1, len(pidx))]])
            order = rng.permutation(order)
        else:
            order = rng.permutation(len(x))
        for i in range(0, len(order), batch):
            b = mx.array(order[i:i + batch])
            _, grads = step(model, xs[b], vs[b], ws[b])
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state)
    return model


def _score(model, x) -> np.ndarray:
    import mlx.core as mx

    return np.array(mx.sigmoid(model(mx.array(x)).squeeze(-1)))


@dataclass
class ValueReport:
    questions: int
    positions: int
    labels: dict
    where: dict
    local_accuracy: float
    oracle_accuracy: float
    cv: dict = field(default_factory=dict)  # loss -> [routed_gain per budget]
    confidence: list = field(default_factory=list)
    chosen: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> str:
        lines = [f"{self.questions} questions, {self.positions} positions; local accuracy {self.local_accuracy:.3f}, "
                 f"oracle (best single cloud token per answer, from the rollouts) {self.oracle_accuracy:.3f}",
                 "labels: " + ", ".join(f"{k}={v}" for k, v in self.labels.items()),
                 "where (+1 / -1 / 0 rolled): " + "; ".join(f"{k}: {v}" for k, v in self.where.items()),
                 "cross-validated net answers gained per 100 questions (first routed position decides):"]
        for name, rows in [*self.cv.items(), ("confidence", self.confidence)]:
            lines.append(f"  {name:>10}: " + "  ".join(f"{r['share']:.0%}: {r['net_per_100']:+.2f} "
                                                     f"(+{r['up']}/-{r['down']}, {r['unknown_first']} unknown)"
                                                     for r in rows))
        lines.append(f"chosen loss: {self.chosen}")
        return "\n".join(lines)


def label_places(lm, t: ValueTraces, places) -> dict:
    """For the report only: where the rolled-out labels fall. ``places(pieces)`` names the place of each token's
    text in an answer (``csqa.piece_places``: a report may know the task; the router never does)."""
    out: dict[str, dict[str, int]] = {}
    for g in np.unique(t.group):
        idx = np.flatnonzero(t.group == g)
        toks = t.token[idx].tolist()
        prefixes = [""] + [lm.tokenizer.decode(toks[: i + 1]) for i in range(len(toks))]
        kinds = places([prefixes[i + 1][len(prefixes[i]):] for i in range(len(toks))])
        for kind, j in zip(kinds, idx):
            v = t.value[j]
            if np.isnan(v) or not t.disagree[j]:
                continue
            row = out.setdefault(kind, {"+1": 0, "-1": 0, "0": 0})
            row["+1" if v > 0 else "-1" if v < 0 else "0"] += 1
    return out


def train_value_router(lm, traces: str | Path, out: str | Path, *, losses=LOSSES, folds: int = 5, hidden: int = 64,
                       epochs: int = 20, seed: int = 0, places=None, span: int | None = None,
                       log=print) -> ValueReport:
    t = load_value_traces(traces, span)
    if t.model != lm.fingerprint:
        raise RouterLoadError(f"traces in {traces} were collected with local model {t.model}, not {lm.fingerprint}")
    x = feature_matrix(lm, t)
    known = ~np.isnan(t.value)
    groups = np.unique(t.group)
    ok = np.array([t.local_ok[t.group == g][0] for g in groups])
    best = np.array([np.nanmax(np.where(known[t.group == g], t.value[t.group == g], 0)) for g in groups])
    rep = ValueReport(len(groups), len(x), {
        "+1 (wrong->right)": int((t.value > 0).sum()), "-1 (right->wrong)": int((t.value < 0).sum()),
        "0 rolled out": int((known & t.disagree & (t.value == 0)).sum()), "0 agree": int((~t.disagree).sum()),
        "unknown (not rolled out)": int((~known).sum())},
        label_places(lm, t, places) if places else {}, float(ok.mean()), float((ok + (best > 0)).mean()))
    conf_score = 1.0 - t.conf[:, 0]
    rep.confidence = [routed_gain(conf_score, t, b) for b in BUDGETS]
    for loss in losses:
        oof = np.zeros(len(x), np.float32)
        for f in range(folds):
            tr, val = split_groups(t.group, folds, f, seed)
            tr = tr[known[tr]]
            model = _fit(x[tr], t.value[tr], t.weight[tr], loss, hidden=hidden, epochs=epochs, seed=seed)
            oof[val] = _score(model, x[val])
        rep.cv[loss] = [routed_gain(oof, t, b) for b in BUDGETS]
        log(f"{loss}: " + ", ".join(f"{r['share']:.0%} {r['net_per_100']:+.2f}" for r in rep.cv[loss]))
    rep.chosen = max(rep.cv, key=lambda k: tuple(r["net_per_100"] for r in rep.cv[k]))
    model = _fit(x[known], t.value[known], t.weight[known], rep.chosen, hidden=hidden, epochs=epochs, seed=seed)
    quantiles = np.quantile(_score(model, x), np.linspace(0, 1, 1001))
    save(model, out, model_fingerprint=lm.fingerprint, model_name=lm.name, in_dim=x.shape[1], hidden=hidden,
         metrics={"kind": "value", **rep.as_dict(), "trained": {"epochs": epochs, "seed": seed, "loss": rep.chosen}},
         score_quantiles=[round(float(q), 6) for q in quantiles], feature_set=FEATURE_SETS[1])
    return rep
