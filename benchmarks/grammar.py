"""Per-token cost of constrained decoding: llguidance and outlines-core side by side, against unconstrained decoding.

    python benchmarks/grammar.py [--local-model SPEC] [--rounds 5] [--docs 3]

On the same local model, tokenizer and JSON schema (a tool call with nested arguments), each variant decodes the
same answer token by token (teacher-forced, so every variant runs the same forward passes on the same tokens):

* ``none``: ``StepDecoder`` as the engine drives it (forward pass, sample, read the token);
* ``llguidance``: the same, plus the grammar's mask for the next token (``GrammarState.allowed``, the code the
  engine runs), the masked resampling (``StepDecoder.constrain``) and consuming the token;
* ``outlines_core``: the same, with outlines-core's ``Guide`` computing the mask (``write_mask_into``) and
  ``advance``; the mask is applied the same way.

Also the grammar work alone (mask + consume, no model) in microseconds per token, and the cost of building
the grammar for a new schema (llguidance: the matcher; outlines-core: the regex index over the vocabulary).
The variants are interleaved per round in one process; medians over rounds.

Prints one JSON object, then ``grammar_overhead_ratio=<llguidance per-token time / unconstrained>`` last.
xgrammar is not measured: its Python package needs torch, triton and transformers (see local/grammar.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import collab_core  # noqa: F401  (first: loads OpenBLAS before mlx when available)
from collab_core import load_local_model
from collab_core.local.decoder import StepDecoder
from collab_core.local.grammar import GrammarState, json_constraint
from collab_core.prompts import encode_prompt

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"const": "book_flight"},
        "arguments": {
            "type": "object",
            "properties": {
                "origin": {"type": "string"}, "destination": {"type": "string"},
                "date": {"type": "string"}, "passengers": {"type": "integer", "minimum": 1},
                "cabin": {"enum": ["economy", "business", "first"]},
                "stops": {"type": "array", "items": {"type": "string"}},
                "max_price": {"type": "number"},
            },
            "required": ["origin", "destination", "date", "passengers"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
DOCS = [
    {"name": "book_flight", "arguments": {"origin": "Lisbon", "destination": "Reykjavik", "date": "2026-03-14",
                                          "passengers": 2, "cabin": "economy", "stops": ["London"],
                                          "max_price": 480.5}},
    {"name": "book_flight", "arguments": {"origin": "San Francisco", "destination": "Tokyo", "date": "2026-11-02",
                                          "passengers": 1, "cabin": "business", "stops": [], "max_price": 3200}},
    {"name": "book_flight", "arguments": {"origin": "Nairobi", "destination": "Cape Town", "date": "2027-01-20",
                                          "passengers": 4, "stops": ["Johannesburg", "Lusaka"]}},
]
PROMPT = "Book a flight as a JSON tool call."


class OutlinesGuide:
    """outlines-core's guide for SCHEMA over the local tokenizer (byte-level BPE tokens mapped to bytes)."""

    def __init__(self, lm, schema: dict):
        import numpy as np
        import outlines_core as oc
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        u2b = {v: k for k, v in bytes_to_unicode().items()}
        eos = lm.tokenizer.eos_token_id
        vocab: dict[bytes, list[int]] = {}
        for tok, i in lm.tokenizer._tokenizer.get_vocab().items():
            if i == eos:
                continue
            try:
                b = bytes(u2b[c] for c in tok)
            except KeyError:
                b = tok.encode()
            vocab.setdefault(b, []).append(i)
        t = time.perf_counter()
        regex = oc.json_schema.build_regex_from_schema(json.dumps(schema), whitespace_pattern=" ?")
        self.index = oc.Index(regex, oc.Vocabulary(eos, vocab))
        self.compile_s = time.perf_counter() - t
        self.vocab = int(lm.config.get("vocab_size") or len(vocab) + 1)
        self.np, self.oc = np, oc
        self.reset()

    def reset(self):
        self.guide = self.oc.Guide(self.index)

    def allowed_numpy(self):
        np = self.np
        words = np.zeros((self.vocab + 31) // 32, dtype=np.int32)
        self.guide.write_mask_into(words.ctypes.data, words.size, 4)
        return np.unpackbits(words.view(np.uint8), bitorder="little")[: self.vocab].astype(bool)

    def allowed(self):
        import mlx.core as mx

        return mx.array(self.allowed_numpy())

    def consume(self, tid: int):
        self.guide.advance(int(tid))


def decode(dec: StepDecoder, prompt: list[int], answer: list[int], grammar=None) -> float:
    """Seconds per answer token, teacher-forced on ``answer`` (prefill excluded)."""
    step = dec.prefill(prompt)
    _ = step.token_id
    t = time.perf_counter()
    for tid in answer:
        if grammar is not None:
            step = dec.constrain(step, grammar.allowed())
        _ = step.token_id  # the sampled token is read, as the engine does
        if grammar is not None:
            grammar.consume(tid)
        step = dec.step(tid)
    _ = step.token_id
    return (time.perf_counter() - t) / len(answer)


def grammar_only(grammar, answer: list[int]) -> float:
    t = time.perf_counter()
    for tid in answer:
        grammar.allowed_numpy()
        grammar.consume(tid)
    return (time.perf_counter() - t) / len(answer)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--docs", type=int, default=len(DOCS))
    args = ap.parse_args(argv)

    lm = load_local_model(args.local_model)
    prompt = encode_prompt(lm, PROMPT)
    answers = [list(lm.tokenizer.encode(json.dumps(d), add_special_tokens=False)) for d in DOCS[: args.docs]]
    constraint = json_constraint(SCHEMA)
    t = time.perf_counter()
    GrammarState(lm, constraint)  # builds llguidance's tokenizer once per model (cached)
    tokenizer_s = time.perf_counter() - t
    t = time.perf_counter()
    GrammarState(lm, constraint)
    llg_compile_s = time.perf_counter() - t
    og = OutlinesGuide(lm, SCHEMA)
    for a in answers:  # every variant accepts every answer
        g = GrammarState(lm, constraint)
        assert g.valid_prefix(a) == len(a), "llguidance refuses a benchmark answer"
        og.reset()
        for tid in a:
            assert og.allowed_numpy()[tid], "outlines-core refuses a benchmark answer"
            og.consume(tid)

    dec = StepDecoder(lm)
    decode(dec, prompt, answers[0])  # warm-up
    rows = []
    for r in range(args.rounds):
        res = {"none": [], "llguidance": [], "outlines_core": []}
        for a in answers:
            order = ["none", "llguidance", "outlines_core"]
            if r % 2:
                order.reverse()
            for name in order:
                if name == "none":
                    res[name].append(decode(dec, prompt, a))
                elif name == "llguidance":
                    res[name].append(decode(dec, prompt, a, GrammarState(lm, constraint)))
                else:
                    og.reset()
                    res[name].append(decode(dec, prompt, a, og))
        ms = {k: 1000 * statistics.mean(v) for k, v in res.items()}
        rows.append({"ms_per_token": {k: round(v, 3) for k, v in ms.items()},
                     "llguidance_ratio": round(ms["llguidance"] / ms["none"], 4),
                     "outlines_core_ratio": round(ms["outlines_core"] / ms["none"], 4)})
    llg_us = [1e6 * grammar_only(GrammarState(lm, constraint), a) for a in answers]
    oc_us = []
    for a in answers:
        og.reset()
        oc_us.append(1e6 * grammar_only(og, a))
    med = {k: statistics.median(r[k] for r in rows) for k in ("llguidance_ratio", "outlines_core_ratio")}
    out = {
        "benchmark": "grammar",
        "model": lm.name,
        "machine": f"{platform.system()} {platform.machine()}",
        "vocab": int(lm.config.get("vocab_size") or 0),
        "answer_tokens": [len(a) for a in answers],
        "rounds": rows,
        "median_ms_per_token": {k: round(statistics.median(r["ms_per_token"][k] for r in rows), 3)
                                for k in ("none", "llguidance", "outlines_core")},
        "median_ratio_vs_unconstrained": {k.removesuffix("_ratio"): round(v, 4) for k, v in med.items()},
        "grammar_only_us_per_token": {"llguidance": round(statistics.mean(llg_us), 1),
                                      "outlines_core": round(statistics.mean(oc_us), 1)},
        "compile_s": {"llguidance_tokenizer_once_per_model": round(tokenizer_s, 4),
                      "llguidance_per_schema": round(llg_compile_s, 4),
                      "outlines_core_per_schema": round(og.compile_s, 4)},
        "xgrammar": "not measured: needs torch + triton + transformers",
    }
    print(json.dumps(out, indent=2))
    print(f"grammar_overhead_ratio={med['llguidance_ratio']:.4f}")


if __name__ == "__main__":
    main()
