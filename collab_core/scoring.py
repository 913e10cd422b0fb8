"""Scoring: everything that turns the local model's state at a position into a number.

* ``Confidence`` -- the summary of one next-token distribution (max probability, entropy, top-2 margin,
  top-k), computed inside each decode step's MLX graph (``summary_graph``) and unpacked lazily;
* ``TokenSignal`` -- what a router sees at a position: the confidence, the position, the proposed token
  and, for scorers that ask, the last hidden state;
* ``ConfidenceScorer`` -- uncertainty (from max probability, entropy or margin) x importance
  (``ImportanceWeights``: the probability-weighted share of the top-k candidates that are words or digits);
* ``LearnedScorer`` -- a trained router MLP (CITER-style) on the hidden state and confidence (``features``),
  loaded from a router folder bound to one local model (``shipped_router`` finds the one we ship).

Training such a router lives in ``collab_core.training``; serving only reads router files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, RouterLoadError

#: Router-file format this version writes (2: a ``feature_set`` is named); it reads 1 and 2.
ROUTER_FORMAT_VERSION = 2
READABLE_ROUTER_FORMATS = (1, 2)
#: The feature layouts a router file may name: version 1 files are ``hidden+conf``.
FEATURE_SETS = ("hidden+conf", "hidden+embed+topk+conf")
TOP_K_FEATURES = 5
#: Where the routers shipped with the package live (one folder per local model).
SHIPPED_ROUTERS = Path(__file__).resolve().parent / "routers"
SIGNALS = ("max_prob", "entropy", "margin")


# -- the confidence of one step -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Confidence:
    """Summary of one next-token distribution."""

    max_prob: float
    entropy: float  # nats
    margin: float  # top-1 minus top-2 probability
    top_ids: tuple[int, ...] = field(default=())
    top_probs: tuple[float, ...] = field(default=())

    @property
    def top_logprobs(self) -> list[float]:
        """The top candidates' log-probabilities (a probability under 1e-30 counts as 1e-30): a router's input, the
        same in the trace collector and in serving."""
        return [math.log(max(p, 1e-30)) for p in self.top_probs]


def summary_graph(logprobs, k: int):
    """MLX ops: (packed [entropy, top-k logprobs...], top-k ids) for a (vocab,) log-prob vector -- or, for a
    (batch, vocab) matrix, the same for every row as one graph ((batch, 1 + k), (batch, k))."""
    import mlx.core as mx

    probs = mx.exp(logprobs)
    entropy = -(probs * mx.maximum(logprobs, -1e30)).sum(axis=-1)
    top_ids = mx.argpartition(-logprobs, kth=k - 1, axis=-1)[..., :k]
    packed = mx.concatenate([entropy[..., None], mx.take_along_axis(logprobs, top_ids, axis=-1)], axis=-1)
    return packed, top_ids


def unpack_summary(packed: list[float], ids: list[int]) -> Confidence:
    order = sorted(range(len(ids)), key=lambda i: -packed[1 + i])
    top_ids = tuple(int(ids[i]) for i in order)
    top_probs = tuple(math.exp(packed[1 + i]) for i in order)
    p1 = top_probs[0]
    p2 = top_probs[1] if len(top_probs) > 1 else 0.0
    return Confidence(max_prob=p1, entropy=max(0.0, packed[0]), margin=p1 - p2, top_ids=top_ids,
                      top_probs=top_probs)


def log_vocab(lm) -> float:
    """ln(vocabulary size): the entropy of a uniform distribution, which normalises entropy to [0, 1]."""
    return math.log(max(2, lm.config.get("vocab_size") or 32000))


@dataclass
class TokenSignal:
    """What a router sees at one position of the answer."""

    confidence: Confidence
    position: int  # index of this token in the answer
    token_id: int  # the local model's proposal
    hidden: Any = None  # last hidden state (MLX or numpy array) when the scorer needs it
    after_cloud: bool = False  # the answer's previous token came from the cloud: routing here extends a run


# -- the confidence scorer -----------------------------------------------------------------------------------
class ImportanceWeights:
    """Per-vocabulary weights: 1.0 for tokens with letters or digits, ``low`` for whitespace/punctuation."""

    def __init__(self, tokenizer, low: float = 0.25):
        vocab_size = len(tokenizer.get_vocab()) if hasattr(tokenizer, "get_vocab") else tokenizer.vocab_size
        ids = list(range(vocab_size))
        pieces = tokenizer.convert_ids_to_tokens(ids) if hasattr(tokenizer, "convert_ids_to_tokens") else None
        weights = np.full(vocab_size, low, dtype=np.float32)
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i in ids:
            text = tokenizer.decode([i]) if pieces is None or pieces[i] is None else _piece_text(pieces[i])
            if i not in special and any(ch.isalnum() for ch in text):
                weights[i] = 1.0
        self.weights = weights
        self.low = low

    def __call__(self, conf: Confidence) -> float:
        if not conf.top_ids:
            return 1.0
        w = self.weights
        num = sum(p * (w[i] if i < len(w) else 1.0) for i, p in zip(conf.top_ids, conf.top_probs))
        den = sum(conf.top_probs)
        return float(num / den) if den > 0 else 1.0


def _piece_text(piece: str) -> str:
    # byte-level BPE pieces spell bytes with printable stand-ins; letters/digits survive as themselves
    return piece.replace("Ġ", " ").replace("Ċ", "\n").replace("▁", " ")


_IMPORTANCE_CACHE: dict[int, ImportanceWeights] = {}


def importance_for(lm) -> ImportanceWeights:
    key = id(lm.tokenizer)
    if key not in _IMPORTANCE_CACHE:
        _IMPORTANCE_CACHE[key] = ImportanceWeights(lm.tokenizer)
    return _IMPORTANCE_CACHE[key]


class ConfidenceScorer:
    """uncertainty (from max_prob | entropy | margin) x importance."""

    needs_hidden = False

    def __init__(self, signal: str = "max_prob", importance: bool = True):
        if signal not in SIGNALS:
            raise ConfigError(f"signal must be max_prob, entropy or margin, not {signal!r}")
        self.signal = signal
        self.importance = importance
        self._weights: ImportanceWeights | None = None
        self._log_vocab = 1.0

    def bind(self, lm) -> None:
        if self.importance:
            self._weights = importance_for(lm)
        self._log_vocab = log_vocab(lm)

    def uncertainty(self, c: Confidence) -> float:
        if self.signal == "max_prob":
            return 1.0 - c.max_prob
        if self.signal == "entropy":
            return min(1.0, c.entropy / self._log_vocab)
        return 1.0 - c.margin

    def __call__(self, sig: TokenSignal) -> float:
        u = self.uncertainty(sig.confidence)
        return u * self._weights(sig.confidence) if self._weights is not None else u


# -- the learned scorer --------------------------------------------------------------------------------------
def features(sig: TokenSignal, log_vocab: float) -> np.ndarray:
    """Feature vector: the hidden state (RMS-normalised) followed by max_prob, normalised entropy, margin."""
    h = np.asarray(sig.hidden, dtype=np.float32).reshape(-1)
    h = h / (np.sqrt(np.mean(h * h)) + 1e-6)
    c = sig.confidence
    return np.concatenate([h, np.array([c.max_prob, min(1.0, c.entropy / log_vocab), c.margin], np.float32)])


def _rms(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / (np.sqrt(np.mean(v * v, axis=-1, keepdims=True)) + 1e-6)


def value_features(hidden, embedding, top_logprobs, conf, log_vocab: float, k: int = TOP_K_FEATURES) -> np.ndarray:
    """The ``hidden+embed+topk+conf`` layout (value routers): the hidden state and the sampled token's input
    embedding (each RMS-normalised), the top-``k`` log-probabilities (sorted, floored at -30, divided by 10)
    and [max_prob, entropy/ln(V), margin] -- for one position (1-D inputs) or many (a row each: training)."""
    one = np.ndim(hidden) == 1
    lp = np.atleast_2d(np.asarray(top_logprobs, np.float32))
    top = np.full((len(lp), k), -30.0, np.float32)
    ranked = -np.sort(-lp, axis=1)[:, :k]
    top[:, : ranked.shape[1]] = np.maximum(ranked, -30.0)
    c = np.atleast_2d(np.asarray(conf, np.float32))
    confidence = np.stack([c[:, 0], np.minimum(1.0, c[:, 1] / log_vocab), c[:, 2]], axis=1)
    out = np.concatenate([_rms(np.atleast_2d(hidden)), _rms(np.atleast_2d(embedding)), top / 10.0, confidence],
                         axis=1).astype(np.float32)
    return out[0] if one else out


def router_mlp(in_dim: int, hidden: int):
    """The router network: features -> one logit."""
    import mlx.nn as nn

    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))


def shipped_router(model_fingerprint: str) -> Path | None:
    """The router shipped with the package for this local model, if there is one."""
    for meta in sorted(SHIPPED_ROUTERS.glob("*/router.json")):
        try:
            if json.loads(meta.read_text()).get("model_fingerprint") == model_fingerprint:
                return meta.parent
        except (OSError, ValueError):
            continue
    return None


class LearnedScorer:
    """Scores a position with a trained router MLP: P(needs the cloud). Needs the hidden state.

    A router file is a folder: ``weights.safetensors`` (the MLP) and ``router.json`` (format version, feature
    layout, the fingerprint of the local model it was trained for, the training report, score quantiles for
    budget calibration). ``path=None`` uses the router shipped for the local model (found at ``bind``);
    binding to another local model than the file's raises ``RouterLoadError``."""

    needs_hidden = True

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.model = None
        self.meta: dict = {}
        self.feature_set = FEATURE_SETS[0]
        self._log_vocab = 1.0
        self._embed = None
        if self.path is not None:
            self._load(self.path)

    def _load(self, path: Path) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        meta_file = path / "router.json"
        if not meta_file.exists():
            raise RouterLoadError(f"no router at {path} (router.json missing)")
        try:
            self.meta = json.loads(meta_file.read_text())
            if self.meta.get("format_version") not in READABLE_ROUTER_FORMATS:
                raise RouterLoadError(f"router format {self.meta.get('format_version')} is not supported")
            self.feature_set = self.meta.get("feature_set", FEATURE_SETS[0])
            if self.feature_set not in FEATURE_SETS:
                raise RouterLoadError(f"router features {self.feature_set!r} are not supported: {FEATURE_SETS}")
            self.model = router_mlp(int(self.meta["in_dim"]), int(self.meta["hidden"]))
            weights = mx.load(str(path / "weights.safetensors"))
            self.model.update(tree_unflatten(list(weights.items())))
            # read now: a lazily loaded array can only be evaluated on the thread that loaded it, and the
            # scorer runs on whichever thread decodes (batched lanes, the async API, a server)
            mx.eval(self.model.parameters())
        except RouterLoadError:
            raise
        except Exception as exc:
            raise RouterLoadError(f"router at {path} is unreadable: {exc}") from exc

    def bind(self, lm) -> None:
        if self.path is None:
            found = shipped_router(lm.fingerprint)
            if found is None:
                raise RouterLoadError(
                    f"no router ships for local model {lm.name} ({lm.fingerprint}): train one with "
                    "`collab router collect` then `collab router train`, and pass router=\"learned:PATH\"")
            self.path = found
            self._load(found)
        want = self.meta["model_fingerprint"]
        if lm.fingerprint != want:
            raise RouterLoadError(
                f"router {self.path} was trained for local model {want}, not {lm.fingerprint}: retrain it "
                "for this model")
        hidden_size = int(lm.config.get("hidden_size") or 0)
        want_dim = hidden_size + 3 if self.feature_set == FEATURE_SETS[0] else 2 * hidden_size + TOP_K_FEATURES + 3
        if hidden_size and want_dim != int(self.meta["in_dim"]):
            raise RouterLoadError(f"router {self.path} takes {self.meta['in_dim']} features ({self.feature_set}); "
                                  f"local model {lm.name} gives {want_dim}")
        self._log_vocab = log_vocab(lm)
        self._embed = lm.model.model.embed_tokens if self.feature_set != FEATURE_SETS[0] else None

    def embedding(self, token_id: int) -> np.ndarray:
        """The local model's input embedding of a token (the ``embed`` features)."""
        import mlx.core as mx

        return np.array(self._embed(mx.array([token_id], dtype=mx.uint32))[0].astype(mx.float32))

    def featurize(self, sig: TokenSignal) -> np.ndarray:
        if self._embed is None:
            return features(sig, self._log_vocab)
        c = sig.confidence
        return value_features(sig.hidden, self.embedding(sig.token_id), c.top_logprobs,
                              (c.max_prob, c.entropy, c.margin), self._log_vocab)

    @property
    def calibration_scores(self) -> list[float] | None:
        """Quantiles of this router's scores on its training positions (``BudgetRouter`` starts from them)."""
        return (self.meta.get("score_quantiles") or None) if self.model is not None else None

    def __call__(self, sig: TokenSignal) -> float:
        import mlx.core as mx

        if sig.hidden is None:
            raise RouterLoadError("the learned router needs the hidden state (the engine passes it when asked)")
        if self.model is None:
            raise RouterLoadError("the learned router is not bound to a local model yet (bind(lm) first)")
        x = mx.array(self.featurize(sig))[None]
        return float(mx.sigmoid(self.model(x)).item())
