"""How stable is a value router trained on a few hundred questions? Two networks from two seeds, and two ensembles
from two sets of seeds, all trained on the first ``--train`` questions of a value-trace folder (in the order the
collector wrote them), then scored on the questions it wrote after ``--held-from``: questions no router saw.

Reports, on the held-out positions: how many of the top 2% / 7% positions two single networks share (Jaccard),
the same for two ensembles, the rank correlation of their scores, and what routing by each would gain
(``routed_gain``: net answers per 100 questions, the first routed position deciding). ``--router PATH`` adds a
saved router's gain on the same positions (e.g. the shipped one, trained on the first 128).

    python benchmarks/router_stability.py --traces /work/traces/values-qwen05-explain-s2 \\
        --data ../shared/data/commonsenseqa_train_2049.jsonl --train 128 --held-from 256 \\
        --router collab_core/routers/qwen2.5-coder-0.5b-instruct

The last line is the headline: ``single_top2_jaccard=... ensemble_top2_jaccard=...``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from collab_core.training.traces import _safe  # noqa: E402
from collab_core.training.value_traces import load_value_traces, routed_gain  # noqa: E402

SHARES = (0.02, 0.07)


def collection_order(folder: Path, data: Path, seed: int) -> list[Path]:
    """The trace files of ``folder`` in the order the collector wrote them (its tasks are the data's rows shuffled
    with ``seed``, and it writes them in that order)."""
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(rows)
    files = [folder / f"{_safe(str(r['id']))}.npz" for r in rows]
    return [f for f in files if f.exists()]


def _linked(files: list[Path], into: Path, span: int = 1):
    into.mkdir()
    for f in files:
        (into / f.name).symlink_to(f.resolve())
    return load_value_traces(into, span)


def _logits(model, x) -> np.ndarray:
    import mlx.core as mx

    return np.array(model(mx.array(x)).squeeze(-1))


def _top(score: np.ndarray, share: float) -> set[int]:
    return set(np.argsort(-score)[: max(1, int(round(share * len(score))))].tolist())


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", required=True, type=Path)
    ap.add_argument("--data", required=True, type=Path, help="the JSONL the traces were collected from")
    ap.add_argument("--seed", type=int, default=7, help="the collector's shuffle seed (default 7)")
    ap.add_argument("--train", type=int, default=128, help="train on the first N questions written")
    ap.add_argument("--held-from", type=int, default=None, help="score the questions written after the Nth "
                                                                 "(default: --train)")
    ap.add_argument("--ensemble", type=int, default=5)
    ap.add_argument("--span", type=int, default=1, help="the label: the value of SPAN-token cloud spans (default 1, "
                                                         "with the chained after rows: what `collab router train` "
                                                         "learns)")
    ap.add_argument("--local-model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--router", action="append", default=[], help="a saved router to score too (repeatable)")
    args = ap.parse_args()

    from collab_core.local.loading import load_local_model
    from collab_core.scoring import LearnedScorer
    from collab_core.training.value_router import _fit, feature_matrix, fit_ensemble

    files = collection_order(args.traces, args.data, args.seed)
    held_from = args.train if args.held_from is None else args.held_from
    if len(files) <= held_from or len(files) < args.train:
        raise SystemExit(f"{len(files)} traces: need more than {max(held_from, args.train)}")
    lm = load_local_model(args.local_model)
    with tempfile.TemporaryDirectory() as tmp:
        t = _linked(files[: args.train], Path(tmp) / "train", args.span)
        h = _linked(files[held_from:], Path(tmp) / "held", args.span)
    x, xh = feature_matrix(lm, t), feature_matrix(lm, h)
    known = ~np.isnan(t.value)
    traj = ~h.after
    print(f"trained on {args.train} questions; scored on {len(h.ids)} held-out questions ({traj.sum()} positions)")

    def single(seed):
        return _fit(x[known], t.value[known], t.weight[known], "weighted", seed=seed)

    def ensemble(seed):
        return fit_ensemble(x[known], t.value[known], t.weight[known], "weighted", ensemble=args.ensemble, seed=seed)

    scores = {"single seed 0": _logits(single(0), xh), "single seed 1": _logits(single(1), xh),
              f"ensemble seeds 0-{args.ensemble - 1}": _logits(ensemble(0), xh),
              f"ensemble seeds {args.ensemble}-{2 * args.ensemble - 1}": _logits(ensemble(args.ensemble), xh)}
    for path in args.router:
        scorer = LearnedScorer(path)
        scorer.bind(lm)
        scores[f"router {path}"] = _logits(scorer.model, xh)
    for name, s in scores.items():
        gains = [routed_gain(s, h, share) for share in SHARES]
        print(f"{name:>40}: " + "  ".join(f"{g['share']:.0%} {g['net_per_100']:+.2f} per 100 (+{g['up']}/-{g['down']}, "
                                         f"{g['unknown_first']} unknown)" for g in gains))
    names = list(scores)
    head = {}
    for kind, (a, b) in {"single": names[0:2], "ensemble": names[2:4]}.items():
        sa, sb = scores[a][traj], scores[b][traj]
        corr = float(np.corrcoef(np.argsort(np.argsort(sa)), np.argsort(np.argsort(sb)))[0, 1])
        jac = {share: _jaccard(_top(sa, share), _top(sb, share)) for share in SHARES}
        print(f"{kind}: top 2% shared {jac[0.02]:.2f}, top 7% shared {jac[0.07]:.2f}, rank correlation {corr:.3f}")
        head[f"{kind}_top2_jaccard"] = jac[0.02]
        head[f"{kind}_top7_jaccard"] = jac[0.07]
        head[f"{kind}_rank_corr"] = corr
    print(" ".join(f"{k}={v:.3f}" for k, v in head.items()))


if __name__ == "__main__":
    main()
