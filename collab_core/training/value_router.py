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

The labels are few (tens of positives per hundred questions), and one training run is not a stable thing: two
seeds can rank the top 2% of positions differently. So every fit, in cross-validation and for the router that
ships, is an ensemble of ``ensemble`` networks trained from different seeds, and its score is their mean logit.
The members are saved as one wider network (``merge_members``: hidden layers side by side, output layer
averaged), so a router file and the scorer that reads it do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, RouterLoadError
from ..scoring import FEATURE_SETS, log_vocab, router_mlp, value_features
from .train import save, split_groups
from .value_traces import ValueTraces, load_value_traces, routed_gain

LOSSES = ("weighted", "regression", "ranking")
BUDGETS = (0.02, 0.07)


def feature_matrix(lm, t: ValueTraces) -> np.ndarray:
    """``scoring.value_features`` for every position at once (the input embeddings looked up in blocks)."""
    import mlx.core as mx

    emb = np.concatenate([np.array(lm.model.model.embed_tokens(mx.array(t.token[i:i + 4096], dtype=mx.uint32))
                                   .astype(mx.float32)) for i in range(0, len(t.token), 4096)])
    return value_features(t.hidden, emb, t.top, t.conf, log_vocab(lm))


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


def merge_members(members: list):
    """One router network whose logit is the mean of ``members``' logits (each ``router_mlp``: one hidden
    layer, so the merge is exact): their hidden units side by side, their output weights averaged."""
    import mlx.core as mx

    first, last = [m.layers[0] for m in members], [m.layers[-1] for m in members]
    merged = router_mlp(first[0].weight.shape[1], sum(f.weight.shape[0] for f in first))
    merged.layers[0].weight = mx.concatenate([f.weight for f in first], axis=0)
    merged.layers[0].bias = mx.concatenate([f.bias for f in first])
    merged.layers[-1].weight = mx.concatenate([o.weight for o in last], axis=1) / len(members)
    merged.layers[-1].bias = mx.mean(mx.stack([o.bias for o in last]), axis=0)
    mx.eval(merged.parameters())
    return merged


def fit_ensemble(x, v, w, loss: str, *, ensemble: int = 5, seed: int = 0, **kw):
    """``ensemble`` networks trained from seeds ``seed``, ``seed + 1``, ..., merged into one."""
    return merge_members([_fit(x, v, w, loss, seed=seed + i, **kw) for i in range(ensemble)])


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
    after: dict = field(default_factory=dict)  # label counts on the after rows (one-token spans, chained)
    oracle_chained: float | None = None  # the best answer per question with up to two chained cloud tokens

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def table(self) -> str:
        lines = [f"{self.questions} questions, {self.positions} positions; local accuracy {self.local_accuracy:.3f}, "
                 f"oracle (best single cloud token per answer, from the rollouts) {self.oracle_accuracy:.3f}",
                 "labels: " + ", ".join(f"{k}={v}" for k, v in self.labels.items())]
        if self.after:
            lines += ["after a cloud token (asked again): " + ", ".join(f"{k}={v}" for k, v in self.after.items()),
                      f"oracle with a second, chained cloud token: {self.oracle_chained:.3f}"]
        lines += ["where (+1 / -1 / 0 rolled): " + "; ".join(f"{k}: {v}" for k, v in self.where.items()),
                  "cross-validated net answers gained per 100 questions (first routed position decides):"]
        for name, rows in [*self.cv.items(), ("confidence", self.confidence)]:
            lines.append(f"  {name:>10}: " + "  ".join(f"{r['share']:.0%}: {r['net_per_100']:+.2f} "
                                                     f"(+{r['up']}/-{r['down']}, {r['unknown_first']} unknown, "
                                                     f"{r.get('tokens_share', 0):.1%} spent first)"
                                                     for r in rows))
        lines.append(f"chosen loss: {self.chosen}")
        return "\n".join(lines)


def label_counts(t: ValueTraces, rows: np.ndarray) -> dict:
    v = t.own_value[rows]  # a row's own token (a chained label counts once)
    known = ~np.isnan(v)
    return {"+1 (wrong->right)": int((v > 0).sum()), "-1 (right->wrong)": int((v < 0).sum()),
            "0 rolled out": int((known & t.disagree[rows] & (v == 0)).sum()),
            "0 agree": int((~t.disagree[rows]).sum()), "unknown (not rolled out)": int((~known).sum())}


def best_value(t: ValueTraces, *, chain: bool) -> np.ndarray:
    """Per question, the best known value of one cloud position (``chain``: or of one position and, right after
    it, the next one too)."""
    alone = t.own_value
    v = np.where(np.isnan(alone) | t.after, 0.0, alone)
    if chain:
        for i in np.flatnonzero(t.after & ~np.isnan(t.value)):
            p = t.parent[i]
            if not np.isnan(alone[p]):
                v[i] = alone[p] + t.value[i]
    return np.array([v[t.group == g].max(initial=0.0) for g in np.unique(t.group)])


def label_places(lm, t: ValueTraces, places) -> dict:
    """For the report only: where the rolled-out labels fall. ``places(pieces)`` names the place of each token's
    text in an answer (``csqa.piece_places``: a report may know the task; the router never does)."""
    out: dict[str, dict[str, int]] = {}
    own = t.own_value
    for g in np.unique(t.group):
        idx = np.flatnonzero((t.group == g) & ~t.after)
        toks = t.token[idx].tolist()
        prefixes = [""] + [lm.tokenizer.decode(toks[: i + 1]) for i in range(len(toks))]
        kinds = places([prefixes[i + 1][len(prefixes[i]):] for i in range(len(toks))])
        for kind, j in zip(kinds, idx):
            v = own[j]
            if np.isnan(v) or not t.disagree[j]:
                continue
            row = out.setdefault(kind, {"+1": 0, "-1": 0, "0": 0})
            row["+1" if v > 0 else "-1" if v < 0 else "0"] += 1
    return out


def train_value_router(lm, traces: str | Path, out: str | Path, *, losses=LOSSES, folds: int = 5, hidden: int = 64,
                       epochs: int = 20, seed: int = 0, places=None, span: int | None = None, ensemble: int = 5,
                       log=print) -> ValueReport:
    if ensemble < 1:
        raise ConfigError(f"ensemble must be >= 1 network, not {ensemble!r}")
    t = load_value_traces(traces, span)
    if t.model != lm.fingerprint:
        raise RouterLoadError(f"traces in {traces} were collected with local model {t.model}, not {lm.fingerprint}")
    x = feature_matrix(lm, t)
    known = ~np.isnan(t.value)
    groups = np.unique(t.group)
    ok = np.array([t.local_ok[t.group == g][0] for g in groups])
    rep = ValueReport(len(groups), int((~t.after).sum()), label_counts(t, ~t.after),
                      label_places(lm, t, places) if places else {}, float(ok.mean()),
                      float((ok + (best_value(t, chain=False) > 0)).mean()))
    if t.after.any():
        rep.after = label_counts(t, t.after)
        rep.oracle_chained = float((ok + (best_value(t, chain=True) > 0)).mean())
    conf_score = 1.0 - t.conf[:, 0]
    rep.confidence = [routed_gain(conf_score, t, b) for b in BUDGETS]
    for loss in losses:
        oof = np.zeros(len(x), np.float32)
        for f in range(folds):
            tr, val = split_groups(t.group, folds, f, seed)
            tr = tr[known[tr]]
            model = fit_ensemble(x[tr], t.value[tr], t.weight[tr], loss, ensemble=ensemble, hidden=hidden,
                                 epochs=epochs, seed=seed)
            oof[val] = _score(model, x[val])
        rep.cv[loss] = [routed_gain(oof, t, b) for b in BUDGETS]
        log(f"{loss}: " + ", ".join(f"{r['share']:.0%} {r['net_per_100']:+.2f}" for r in rep.cv[loss]))
    rep.chosen = max(rep.cv, key=lambda k: tuple(r["net_per_100"] for r in rep.cv[k]))
    model = fit_ensemble(x[known], t.value[known], t.weight[known], rep.chosen, ensemble=ensemble, hidden=hidden,
                         epochs=epochs, seed=seed)
    quantiles = np.quantile(_score(model, x[~t.after]), np.linspace(0, 1, 1001))  # what a router meets
    save(model, out, model_fingerprint=lm.fingerprint, model_name=lm.name, in_dim=x.shape[1],
         hidden=hidden * ensemble,
         metrics={"kind": "value", **rep.as_dict(), "trained": {"epochs": epochs, "seed": seed, "loss": rep.chosen,
                                                             "label_span": span, "ensemble": ensemble,
                                                             "member_hidden": hidden}},
         score_quantiles=[round(float(q), 6) for q in quantiles], feature_set=FEATURE_SETS[1])
    return rep
