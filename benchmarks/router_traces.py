"""Collect traces for the learned router and train it (CITER-style labels from the cloud model).

    python benchmarks/router_traces.py collect [--limit 150] [--out traces/]   # starts the stand-in cloud
    python benchmarks/router_traces.py train [--traces traces/] [--router routers/default]

collect: the local model answers CommonsenseQA *training* questions (never the evaluation ones) greedily, in the
benchmark's prompt format; at every position the hidden state and confidence signals are recorded, and the cloud
model is asked for its next token given the same prefix (one-token span through the same LiteLLM leg). Label 1
("needs the cloud") when the cloud's text does not agree with the local token's text. One .npz per question;
re-running resumes.

train: fits the MLP (collab_core.learned), reports precision/recall on a held-out split, and -- at equal routed
share on held-out positions -- how many "needs the cloud" positions the learned score catches against the
confidence score.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

import collab_core  # noqa: F401
from collab_core import learned as L
from collab_core import load_local_model
from collab_core.cloud import CloudClient, CloudConfig, SpanRequest
from collab_core.decoder import StepDecoder
from collab_core.errors import CloudError
from collab_core.router import TokenSignal

sys.path.insert(0, str(Path(__file__).parent))
from csqa import TRAIN_DATA, load_questions, prompt_text  # noqa: E402


def agrees(local_piece: str, cloud_text: str) -> bool:
    a, b = local_piece.strip(), cloud_text.strip()
    if not a or not b:
        return a == b
    return a.startswith(b) or b.startswith(a)


def collect(args) -> None:
    from tqdm import tqdm

    from collab_core.standin import StandinCloud

    lm = load_local_model(None)
    log_v = math.log(lm.config["vocab_size"])
    args.out.mkdir(parents=True, exist_ok=True)
    questions = [q for q in load_questions(TRAIN_DATA, args.limit, seed=7) if not (args.out / f"{q['id']}.npz").exists()]
    with StandinCloud() as cloud:
        client = CloudClient(CloudConfig(model=cloud.model, api_base=cloud.api_base, span_tokens=2, timeout_s=60))  # max_tokens=1 kills mlx_lm.server (seen)
        for q in tqdm(questions, desc="collect", file=sys.stderr):
            text = prompt_text(lm, q)
            dec = StepDecoder(lm, want_hidden=True)
            step = dec.prefill(lm.tokenizer.encode(text, add_special_tokens=False))
            answer, xs, ys, conf = [], [], [], []
            for i in range(args.max_tokens):
                tid = step.token_id
                if tid in lm.eos_token_ids:
                    break
                sig = TokenSignal(step.confidence, i, tid, step.hidden)
                partial = lm.tokenizer.decode(answer)
                piece = lm.tokenizer.decode(answer + [tid])[len(partial):]
                req = SpanRequest(messages=[], prompt_text=text, partial=partial)
                try:
                    span = client.continue_span(req)
                except CloudError:
                    if cloud.healthy():
                        break
                    cloud.restart()  # mlx_lm.server's generation thread died (see csqa.py): restart, retry once
                    try:
                        span = client.continue_span(req)
                    except CloudError:
                        break
                xs.append(L.features(sig, log_v))
                ys.append(0.0 if agrees(piece, span.text) else 1.0)
                conf.append([sig.confidence.max_prob, sig.confidence.entropy, sig.confidence.margin])
                answer.append(tid)
                if "\n" in piece:
                    break
                step = dec.step(tid)
            if xs:
                np.savez(args.out / f"{q['id']}.npz", x=np.stack(xs), y=np.array(ys, np.float32),
                         conf=np.array(conf, np.float32))


def train(args) -> None:
    files = sorted(args.traces.glob("*.npz"))
    if not files:
        sys.exit(f"no traces in {args.traces}")
    data = [np.load(f) for f in files]
    x = np.concatenate([d["x"] for d in data])
    y = np.concatenate([d["y"] for d in data])
    lm = load_local_model(None)
    model, res = L.train(x, y, epochs=args.epochs, hidden=args.hidden)
    # equal-share comparison on the held-out positions (same split as L.train: permutation with seed 0)
    idx = np.random.default_rng(0).permutation(len(x))[: res.held_out]
    import mlx.core as mx

    learned = np.array(mx.sigmoid(model(mx.array(x[idx])).squeeze(-1)))
    confidence = 1.0 - x[idx, -3]  # 1 - max_prob, the confidence router's uncertainty
    curve = []
    for share in (0.05, 0.1, 0.2, 0.3, 0.5):
        k = max(1, int(round(share * len(idx))))
        caught = {name: float(y[idx][np.argsort(-s)[:k]].sum() / max(1.0, y[idx].sum()))
                  for name, s in (("learned", learned), ("confidence", confidence))}
        curve.append({"routed_share": share, **{f"recall_{n}": round(v, 4) for n, v in caught.items()}})
    metrics = {**res.__dict__, "positions": int(len(x)), "questions": len(files), "curve": curve}
    L.save(model, args.router, model_fingerprint=lm.fingerprint, in_dim=x.shape[1], hidden=args.hidden,
           metrics=metrics)
    print(json.dumps(metrics, indent=2))
    print(f"precision={res.precision:.4f} recall={res.recall:.4f} positives={res.positives:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--limit", type=int, default=150)
    c.add_argument("--max-tokens", type=int, default=6)
    c.add_argument("--out", type=Path, default=Path("benchmarks/results/traces"))
    t = sub.add_parser("train")
    t.add_argument("--traces", type=Path, default=Path("benchmarks/results/traces"))
    t.add_argument("--router", type=Path, default=Path("benchmarks/results/router"))
    t.add_argument("--epochs", type=int, default=60)
    t.add_argument("--hidden", type=int, default=64)
    args = ap.parse_args()
    collect(args) if args.cmd == "collect" else train(args)


if __name__ == "__main__":
    main()
