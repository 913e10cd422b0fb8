"""``mlx_lm.server`` with one fix, for the stand-in cloud: ``python -m collab_core.devtools.standin_server ARGS``.

mlx-lm 0.32's server kills its generation thread on a request whose whole prompt is already in its prompt cache
(an exact hit leaves nothing to prefill: ``ValueError: Sequence N has an empty prompt``), and then answers
every later request with HTTP 404 "generation thread died". Token-level routing makes exactly such requests:
after a one-token span the next call's prompt is the previous prompt plus the token the server just generated,
which it has cached. Here an exact hit gives back the cache one token shorter and that token to prefill.
"""

from __future__ import annotations

import collab_core  # noqa: F401  (first: OpenBLAS before mlx, as in our own process)


def patch_prompt_cache() -> None:
    from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

    original = LRUPromptCache.fetch_nearest_cache
    if getattr(original, "_collab_patched", False):
        return

    def fetch_nearest_cache(self, model, tokens):
        cache, rest = original(self, model, tokens)
        if cache is None or rest or not tokens:
            return cache, rest
        if can_trim_prompt_cache(cache):  # an exact hit (a copy): leave the last token to prefill
            trim_prompt_cache(cache, 1)
            return cache, tokens[-1:]
        return None, tokens

    fetch_nearest_cache._collab_patched = True
    LRUPromptCache.fetch_nearest_cache = fetch_nearest_cache


def main() -> None:
    patch_prompt_cache()
    from mlx_lm.server import main as server_main

    server_main()


if __name__ == "__main__":
    main()
