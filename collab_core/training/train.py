"""Training a learned router (CITER-style) from traces: cross-validated report, then a router folder.

``train_router`` reads a trace folder (``collab router collect``, ``traces.py``), fits the MLP of
``scoring.router_mlp`` on the hidden state + confidence features by ``folds``-fold cross-validation over
prompts, reports precision/recall, AUC and, at equal routed share, what the learned score, the confidence
score and an oracle catch, then trains on every prompt and ``save``s the router folder that
``scoring.LearnedScorer`` serves. Training is plain MLX, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RouterLoadError
from ..scoring import FEATURE_SETS, ROUTER_FORMAT_VERSION, router_mlp

FEATURE_DOCS = {
    FEATURE_SETS[0]: "rmsnorm(hidden_state) + [max_prob, entropy/ln(V), margin]",
    FEATURE_SETS[1]: "rmsnorm(hidden_state) + rmsnorm(embedding(token)) + top5_logprobs/10 + [max_prob, "
                     "entropy/ln(V), margin]",
}


@dataclass
class TrainResult:
    precision: float
    recall: float
    accuracy: float
    positives: float  # share of "needs the cloud" labels in the held-out split
    held_out: int


def split_groups(groups: np.ndarray, folds: int = 5, fold: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) position indices for ``fold`` of ``folds``; whole prompts go to one side, so
    held-out prompts are unseen, and each prompt is held out in exactly one fold."""
    uniq = np.random.default_rng(seed).permutation(np.unique(groups))
    val_groups = set(uniq[fold::folds].tolist())
    is_val = np.array([g in val_groups for g in groups])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def train(x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None, fold: int = 0, folds: int = 5,
          hidden: int = 64, epochs: int = 60, lr: float = 1e-3, weight_decay: float = 1e-2, seed: int = 0,
          batch: int = 256, holdout: bool = True):
    """Fit the MLP on features ``x`` (n, d) and labels ``y`` (n,) in {0, 1}.

    Held out: ``fold`` of ``folds``, split by ``groups`` (the prompt of each position) when given, else by
    position; ``holdout=False`` trains on everything. Returns (model, TrainResult, held-out indices)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(len(x))
    tr, val = split_groups(groups, folds, fold, seed)
    if not holdout:
        tr, val = np.arange(len(x)), np.arange(0)
    mx.random.seed(seed)
    model = router_mlp(x.shape[1], hidden)
    opt = optim.AdamW(learning_rate=lr, weight_decay=weight_decay)
    pos_weight = float((1 - y[tr].mean()) / max(y[tr].mean(), 1e-6))  # balance rare positives

    def loss_fn(m, xb, yb):
        logits = m(xb).squeeze(-1)
        w = 1 + (pos_weight - 1) * yb
        return (w * nn.losses.binary_cross_entropy(logits, yb, with_logits=True, reduction="none")).mean()

    step = nn.value_and_grad(model, loss_fn)
    xs, ys = mx.array(x[tr]), mx.array(y[tr].astype(np.float32))
    for _ in range(epochs):
        order = mx.array(rng.permutation(len(tr)))
        for i in range(0, len(tr), batch):
            b = order[i:i + batch]
            _, grads = step(model, xs[b], ys[b])
            opt.update(model, grads)
            mx.eval(model.parameters(), opt.state)
    return model, classification(predict(model, x[val]), y[val]), val


def classification(p: np.ndarray, y: np.ndarray) -> TrainResult:
    """Precision / recall / accuracy of ``p >= 0.5`` against labels ``y``."""
    pred, gold = p >= 0.5, y.astype(bool)
    tp = float((pred & gold).sum())
    return TrainResult(precision=tp / max(1.0, float(pred.sum())), recall=tp / max(1.0, float(gold.sum())),
                       accuracy=float((pred == gold).mean()) if len(y) else float("nan"),
                       positives=float(gold.mean()) if len(y) else float("nan"), held_out=len(y))


def predict(model, x: np.ndarray) -> np.ndarray:
    import mlx.core as mx

    return np.array(mx.sigmoid(model(mx.array(x)).squeeze(-1)))


def auc(scores: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when one class is missing."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return float("nan")
    _, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inv]  # average rank of each tied group, 1-based
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


SHARES = (0.02, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5)


def share_curve(scores: dict[str, np.ndarray], y: np.ndarray, *, group: np.ndarray, disagree: np.ndarray,
                alt_ok: np.ndarray, local_ok: np.ndarray, shares=SHARES) -> list[dict]:
    """Each score routes its top ``share`` of positions. Per share and score: ``caught`` (share of label-1
    positions routed) and, where gold outcomes are known, ``accuracy``: the simulated answer accuracy when
    the first routed position where the cloud disagrees takes the cloud's token (as in the traces' ``alt_ok``),
    others keep the local answer; a question whose first routed disagreement has no outcome label (sampled
    continuations) is left out of that accuracy. Ties are broken by position order, so both scores route exactly k."""
    rows = []
    have_gold = not np.isnan(local_ok).any()
    groups = np.unique(group)
    for share in shares:
        k = max(1, int(round(share * len(y))))
        row: dict = {"routed_share": share}
        for name, s in scores.items():
            routed = np.zeros(len(y), bool)
            routed[np.argsort(-s, kind="stable")[:k]] = True
            row[f"caught_{name}"] = round(float(y[routed].sum() / max(1.0, y.sum())), 4)
            if have_gold:
                right = decided = 0
                for g in groups:
                    idx = np.flatnonzero(group == g)
                    hit = [i for i in idx if routed[i] and disagree[i] == 1]
                    if hit and np.isnan(alt_ok[hit[0]]):
                        continue  # sampled outcome labels: this continuation was not run, the outcome is unknown
                    decided += 1
                    right += bool(alt_ok[hit[0]]) if hit else bool(local_ok[idx[0]])
                row[f"accuracy_{name}"] = round(right / max(1, decided), 4)
        rows.append(row)
    return rows


@dataclass
class TrainReport:
    label: str
    result: TrainResult  # pooled over the folds' held-out prompts (out-of-fold predictions)
    positions: int
    prompts: int
    folds: int
    curve: list[dict]
    local_accuracy: float | None
    auc: dict[str, float]

    def as_dict(self) -> dict:
        return {"label": self.label, **self.result.__dict__, "positions": self.positions, "prompts": self.prompts,
                "folds": self.folds, "local_accuracy": self.local_accuracy, "auc": self.auc, "curve": self.curve}

    def table(self) -> str:
        r = self.result
        lines = [f"label={self.label} prompts={self.prompts} positions={self.positions} ({r.positives:.1%} positive); "
                 f"{self.folds}-fold cross-validation by prompt: every figure below is on prompts the scoring "
                 "model did not see",
                 f"at p>=0.5: precision={r.precision:.3f} recall={r.recall:.3f} accuracy={r.accuracy:.3f}",
                 "AUC: " + " / ".join(f"{k} {v:.3f}" for k, v in self.auc.items())]
        if self.local_accuracy is not None:
            lines.append(f"local-only answer accuracy={self.local_accuracy:.3f}")
        acc = "accuracy_learned" in self.curve[0]
        names = [n for n in ("learned", "confidence", "oracle") if f"caught_{n}" in self.curve[0]]
        lines.append(f"routed share | caught: {' / '.join(names)}" + (f" | accuracy: {' / '.join(names)}" if acc else ""))
        for c in self.curve:
            line = f"{c['routed_share']:>12.0%} | " + " / ".join(f"{c['caught_' + n]:.3f}" for n in names)
            if acc:
                line += " | " + " / ".join(f"{c['accuracy_' + n]:.3f}" for n in names)
            lines.append(line)
        return "\n".join(lines)


def train_router(lm, traces: str | Path, out: str | Path, *, label: str = "outcome", hidden: int = 64,
                 epochs: int = 60, folds: int = 5, seed: int = 0) -> TrainReport:
    """Train on a trace folder (``collab router collect``) and save the router to ``out``.

    Evaluation is ``folds``-fold cross-validation by prompt: each fold's model scores its held-out prompts, and
    the pooled out-of-fold scores are compared with the confidence score at equal routed share. The saved
    router is then trained on every prompt (the cross-validated figures estimate how it does on new ones)."""
    from .traces import known_only, load_traces

    t = known_only(load_traces(traces), label)  # sampled outcome labels: the unknown ones are left out
    if t.model != lm.fingerprint:
        raise RouterLoadError(f"traces in {traces} were collected with local model {t.model}, not {lm.fingerprint}")
    y = t.labels(label)
    oof = np.zeros(len(y), np.float32)
    for f in range(folds):
        model, _, val = train(t.x, y, groups=t.group, fold=f, folds=folds, hidden=hidden, epochs=epochs, seed=seed)
        oof[val] = predict(model, t.x[val])
    oracle = y + 1e-3 * t.conf_score  # routes the labelled positions first: the headroom any score could reach
    curve = share_curve({"learned": oof, "confidence": t.conf_score, "oracle": oracle}, y, group=t.group,
                        disagree=t.disagree, alt_ok=t.alt_ok, local_ok=t.local_ok)
    gold = not np.isnan(t.local_ok).any()
    local = float(np.mean([t.local_ok[t.group == g][0] for g in np.unique(t.group)])) if gold else None
    report = TrainReport(label, classification(oof, y), len(y), len(t.ids), folds, curve, local,
                         {"learned": auc(oof, y), "confidence": auc(t.conf_score, y)})
    model, _, _ = train(t.x, y, hidden=hidden, epochs=epochs, seed=seed, holdout=False)
    quantiles = np.quantile(predict(model, t.x), np.linspace(0, 1, 201))
    save(model, out, model_fingerprint=lm.fingerprint, model_name=lm.name, in_dim=t.x.shape[1], hidden=hidden,
         metrics={**report.as_dict(), "cloud": t.clouds, "trained": {"epochs": epochs, "seed": seed}},
         score_quantiles=[round(float(q), 6) for q in quantiles])
    return report


def save(model, path: str | Path, *, model_fingerprint: str, in_dim: int, hidden: int,
         metrics: dict[str, Any] | None = None, model_name: str = "",
         score_quantiles: list[float] | None = None, feature_set: str = FEATURE_SETS[0]) -> Path:
    """Write a router folder. ``score_quantiles`` (the score distribution on training positions) lets a budget
    router start calibrated."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "weights.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "router.json").write_text(json.dumps({
        "format_version": ROUTER_FORMAT_VERSION, "model_fingerprint": model_fingerprint, "model_name": model_name,
        "in_dim": in_dim,
        "hidden": hidden, "feature_set": feature_set, "features": FEATURE_DOCS[feature_set],
        "score_quantiles": score_quantiles or [], "metrics": metrics or {}}, indent=2))
    return out
