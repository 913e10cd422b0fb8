"""The stand-in's server fix: an exact prompt-cache hit leaves one token to prefill (mlx-lm 0.32 would kill its
generation thread on the empty prompt)."""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

from collab_core.devtools.standin_server import patch_prompt_cache


def _filled_cache(lm, tokens):
    cache = make_prompt_cache(lm.model)
    lm.model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def test_an_exact_hit_leaves_the_last_token_to_prefill(tiny_lm):
    tokens = tiny_lm.tokenizer.encode("The capital of France is", add_special_tokens=False)
    store = LRUPromptCache()
    store.insert_cache("m", tokens, _filled_cache(tiny_lm, tokens))
    cache, rest = store.fetch_nearest_cache("m", tokens)
    assert rest == []  # mlx-lm as shipped: nothing left to prefill
    patch_prompt_cache()
    patch_prompt_cache()  # idempotent
    cache, rest = store.fetch_nearest_cache("m", tokens)
    assert rest == tokens[-1:] and cache[0].offset == len(tokens) - 1
    # a longer prompt is untouched: the cached prefix, then the new tokens
    longer = tokens + tiny_lm.tokenizer.encode(" Paris", add_special_tokens=False)
    cache, rest = store.fetch_nearest_cache("m", longer)
    assert rest == longer[len(tokens):] and cache[0].offset == len(tokens)
