"""A learned router (CITER-style): a small MLP on the local model's last hidden state and confidence signals.

It predicts "this position needs the cloud" (the cloud model would have written a different next token) and
plugs into the router interface as a scorer: ``ThresholdRouter(scorer=...)`` or ``BudgetRouter(scorer=...)``
(``make_router("learned:PATH")`` builds the former). Training is plain MLX, no torch.

A router file is a folder: ``weights.safetensors`` (the MLP) and ``router.json`` (format version, feature
layout, the fingerprint of the local model it was trained for, training metrics). Loading it for another
local model raises ``RouterLoadError``.

Trace collection (``collab router collect``) and the shipped router for the default pair are not in yet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CollabError
from .router import TokenSignal

FORMAT_VERSION = 1


class RouterLoadError(CollabError):
    """The router file is missing, malformed, or was trained for another local model."""


def features(sig: TokenSignal, log_vocab: float) -> np.ndarray:
    """Feature vector: the hidden state (RMS-normalised) followed by max_prob, normalised entropy, margin."""
    h = np.asarray(sig.hidden, dtype=np.float32).reshape(-1)
    h = h / (np.sqrt(np.mean(h * h)) + 1e-6)
    c = sig.confidence
    return np.concatenate([h, np.array([c.max_prob, min(1.0, c.entropy / log_vocab), c.margin], np.float32)])


def _mlp(in_dim: int, hidden: int):
    import mlx.nn as nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


@dataclass
class TrainResult:
    precision: float
    recall: float
    accuracy: float
    positives: float  # share of "needs the cloud" labels in the held-out split
    held_out: int


def train(x: np.ndarray, y: np.ndarray, *, hidden: int = 64, epochs: int = 60, lr: float = 1e-3,
          held_out: float = 0.2, seed: int = 0, batch: int = 256):
    """Fit the MLP on features ``x`` (n, d) and labels ``y`` (n,) in {0, 1}; returns (model, TrainResult)."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim

    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    n_val = max(1, int(len(x) * held_out))
    val, tr = idx[:n_val], idx[n_val:]
    mx.random.seed(seed)
    model = _mlp(x.shape[1], hidden)
    opt = optim.Adam(learning_rate=lr)
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
    p = np.array(mx.sigmoid(model(mx.array(x[val])).squeeze(-1)))
    pred, gold = p >= 0.5, y[val].astype(bool)
    tp = float((pred & gold).sum())
    result = TrainResult(precision=tp / max(1.0, float(pred.sum())), recall=tp / max(1.0, float(gold.sum())),
                         accuracy=float((pred == gold).mean()), positives=float(gold.mean()), held_out=n_val)
    return model, result


def save(model, path: str | Path, *, model_fingerprint: str, in_dim: int, hidden: int,
         metrics: dict[str, Any] | None = None) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "weights.safetensors"), dict(tree_flatten(model.parameters())))
    (out / "router.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "model_fingerprint": model_fingerprint, "in_dim": in_dim,
        "hidden": hidden, "features": "rmsnorm(hidden_state) + [max_prob, entropy/ln(V), margin]",
        "metrics": metrics or {}}, indent=2))
    return out


class LearnedScorer:
    """Scores a position with a trained router MLP: P(needs the cloud). Needs the hidden state."""

    needs_hidden = True

    def __init__(self, path: str | Path):
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        self.path = Path(path)
        meta_file = self.path / "router.json"
        if not meta_file.exists():
            raise RouterLoadError(f"no router at {self.path} (router.json missing)")
        try:
            self.meta = json.loads(meta_file.read_text())
            if self.meta.get("format_version") != FORMAT_VERSION:
                raise RouterLoadError(f"router format {self.meta.get('format_version')} is not supported")
            self.model = _mlp(int(self.meta["in_dim"]), int(self.meta["hidden"]))
            weights = mx.load(str(self.path / "weights.safetensors"))
            self.model.update(tree_unflatten(list(weights.items())))
        except RouterLoadError:
            raise
        except Exception as exc:
            raise RouterLoadError(f"router at {self.path} is unreadable: {exc}") from exc
        self._log_vocab = 1.0

    def bind(self, lm) -> None:
        want = self.meta["model_fingerprint"]
        if lm.fingerprint != want:
            raise RouterLoadError(
                f"router {self.path} was trained for local model {want}, not {lm.fingerprint}: retrain it "
                "for this model")
        hidden_size = lm.config.get("hidden_size")
        if hidden_size and int(hidden_size) + 3 != int(self.meta["in_dim"]):
            raise RouterLoadError(f"router expects hidden size {int(self.meta['in_dim']) - 3}, model has {hidden_size}")
        self._log_vocab = math.log(max(2, lm.config.get("vocab_size") or 32000))

    def __call__(self, sig: TokenSignal) -> float:
        import mlx.core as mx

        if sig.hidden is None:
            raise RouterLoadError("the learned router needs the hidden state (the engine passes it when asked)")
        x = mx.array(features(sig, self._log_vocab))[None]
        return float(mx.sigmoid(self.model(x)).item())
