"""Local decoding on MLX, one token at a time, on mlx-lm's KV cache.

``StepDecoder`` holds one sequence in a KV cache. Each call that appends tokens returns a ``Step``:
the distribution over the *next* token, with the sampled token, the confidence summary and optionally
the last hidden state, all built lazily and handed to ``mx.async_eval`` so the caller can queue the
next forward pass before reading the current one (the same pipelining as ``mlx_lm.generate_step``).

It can roll back ``k`` tokens (``trim_prompt_cache``) and append replacement tokens; the state after a
rollback equals a fresh run on the same sequence. A new prompt that shares a prefix with the cached
sequence reuses the cache for that prefix.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ..errors import ConfigError, EmptyPromptError
from ..scoring import Confidence, summary_graph, unpack_summary
from ..text import common_prefix_len
from .loading import LocalModel


class Step:
    """The local model's distribution over the next token (lazy until first read)."""

    __slots__ = ("_conf", "_packed", "_token_id", "_top", "hidden", "logprobs", "token")

    def __init__(self, logprobs, token, packed, top, hidden):
        self.logprobs = logprobs  # (vocab,) float32 log-probabilities
        self.token = token  # sampled token, an MLX scalar (lazy)
        self._packed, self._top = packed, top
        self.hidden = hidden  # (hidden_size,) or None
        self._conf: Confidence | None = None
        self._token_id: int | None = None

    def wait(self) -> Step:
        """Evaluate every field now (e.g. before another thread reads them)."""
        import mlx.core as mx

        mx.eval(*(a for a in (self.logprobs, self.token, self._packed, self._top, self.hidden) if a is not None))
        return self

    @property
    def token_id(self) -> int:
        if self._token_id is None:
            self._token_id = int(self.token.item())
        return self._token_id

    @property
    def confidence(self) -> Confidence:
        if self._conf is None:
            self._conf = unpack_summary(self._packed.tolist(), self._top.tolist())
        return self._conf


def greedy(logprobs):
    import mlx.core as mx

    return mx.argmax(logprobs, axis=-1)


class StepDecoder:
    """Prefill once, then decode one token at a time on a KV cache, with rollback."""

    def __init__(self, lm: LocalModel, *, sampler: Callable | None = None, top_k: int = 5,
                 want_hidden: bool = False, prefill_step_size: int = 2048, history: int = 64):
        from mlx_lm.generate import generation_stream
        from mlx_lm.models.cache import make_prompt_cache

        self.lm = lm
        self.model = lm.model
        self.sampler = sampler or greedy
        self.top_k = top_k
        self.want_hidden = want_hidden
        self.prefill_step_size = prefill_step_size
        self._stream = generation_stream
        self._make_cache = lambda: make_prompt_cache(self.model)
        self.cache = self._make_cache()
        self._tokens: list = []  # every token in the cache: ints, or lazy MLX scalars until read
        self._lazy = False
        self._steps: deque[Step] = deque(maxlen=history)  # Step after each of the last tokens
        self._calls = 0  # forward passes over this decoder's sequence (``passes``)

    # -- forward -----------------------------------------------------------------------------------
    def _head(self):
        inner = self.model
        if getattr(getattr(inner, "args", None), "tie_word_embeddings", False) or not hasattr(inner, "lm_head"):
            return inner.model.embed_tokens.as_linear
        return inner.lm_head

    def _forward(self, ids) -> Step:
        import mlx.core as mx

        with mx.stream(self._stream):
            if self.want_hidden:
                h = self.model.model(ids[None], cache=self.cache)[:, -1, :]
                logits = self._head()(h)
                hidden = h[0]
            else:
                logits = self.model(ids[None], cache=self.cache)[:, -1, :]
                hidden = None
            logprobs = (logits - mx.logsumexp(logits, keepdims=True)).squeeze(0).astype(mx.float32)
            token = self.sampler(logprobs[None]).squeeze()
            packed, top = summary_graph(logprobs, self.top_k)
        outs = [token, packed, top] + ([hidden] if hidden is not None else [])
        mx.async_eval(*outs)
        self._calls += 1
        if self._calls % 256 == 0:
            mx.clear_cache()
        return Step(logprobs, token, packed, top, hidden)

    def _append(self, ids: Sequence[int], prompt: bool = True) -> Step:
        """Feed tokens; return the Step after the last one.

        ``prompt=True`` processes all but the last token first, in evaluated chunks, exactly as
        ``mlx_lm.generate_step`` does (so greedy output matches it bit for bit). ``prompt=False`` (short
        spans) queues one lazy forward pass over all of them, so the caller is not blocked.
        """
        import mlx.core as mx

        ids = list(ids)
        if not ids:
            raise ConfigError("nothing to feed")
        # a prompt: all but its last token read first; a span: whole chunks first, the rest in the lazy pass
        head = len(ids) - 1 if prompt else (len(ids) - 1) // self.prefill_step_size * self.prefill_step_size
        self._read(ids[:head])
        step = self._forward(mx.array(ids[head:], dtype=mx.uint32))
        self._tokens.extend(ids)
        if len(ids) > 1:  # no distribution is kept for the positions inside a multi-token feed
            self._steps.clear()
        self._steps.append(step)
        return step

    def _read(self, ids: Sequence[int]) -> None:
        """Feed ``ids`` into the cache in evaluated chunks of ``prefill_step_size`` (as ``mlx_lm.generate_step``
        reads a prompt), keeping no distribution."""
        import mlx.core as mx

        if not ids:
            return
        arr = mx.array(list(ids), dtype=mx.uint32)
        with mx.stream(self._stream):
            for s in range(0, len(ids), self.prefill_step_size):
                self.model(arr[s:s + self.prefill_step_size][None], cache=self.cache)
                mx.eval([c.state for c in self.cache])

    # -- public API --------------------------------------------------------------------------------
    def prefill(self, ids: Sequence[int]) -> Step:
        """Start a sequence; reuses the cached prefix it shares with the current sequence."""
        return self._append(self._keep_prefix(ids))

    def _keep_prefix(self, ids: Sequence[int]) -> list[int]:
        """Keep the cached prefix shared with ``ids`` (trim the rest, or start afresh); the tokens left to feed."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        ids = list(ids)
        if not ids:
            raise EmptyPromptError("empty prompt")
        # at least one token must be fed to get logits
        common = min(common_prefix_len(self.tokens, ids), len(ids) - 1)
        drop = len(self.tokens) - common
        if common > 0 and (drop == 0 or can_trim_prompt_cache(self.cache)):
            if drop:
                trim_prompt_cache(self.cache, drop)
            del self._tokens[common:]
            self._steps.clear()
            return ids[common:]
        self.reset()
        return ids

    def greedy_along(self, ids: Sequence[int], start: int) -> list[int]:
        """Teacher forcing: read ``ids`` into the cache (after the prefix it already holds) and return the greedy
        next token after each of ``ids[:start]``, ``ids[:start + 1]``, ..., ``ids[:-1]``, from the same pass. The
        cache then holds ``ids``, so a later ``prefill`` of a prefix of them only trims it."""
        import mlx.core as mx

        ids = list(ids)
        if not 0 < start < len(ids):
            raise ConfigError(f"start must be inside the sequence (0 < start < {len(ids)}), not {start!r}")
        rest = self._keep_prefix(ids)
        if len(ids) - len(rest) > start - 1:  # the first prediction needed lies inside the kept prefix
            self.reset()
            rest = ids
        first = len(ids) - len(rest)  # the position of rest[0] in ids
        arr, out = mx.array(rest, dtype=mx.uint32), []
        with mx.stream(self._stream):
            for s in range(0, len(rest), self.prefill_step_size):
                logits = self.model(arr[s:s + self.prefill_step_size][None], cache=self.cache)
                # the logits at position i of ids predict the token after ids[:i + 1]; keep i >= start - 1
                keep = logits[0, max(start - 1 - first - s, 0):]
                if keep.shape[0]:
                    out.append(mx.argmax(keep, axis=-1))
                mx.eval(out[-1:], [c.state for c in self.cache])
        self._tokens.extend(rest)
        self._steps.clear()
        return mx.concatenate(out).tolist()[:len(ids) - start]

    def step(self, token) -> Step:
        """Append one token (an int, or a lazy MLX scalar from the previous Step)."""
        import mlx.core as mx

        if isinstance(token, int):
            arr = mx.array([token], dtype=mx.uint32)
        else:
            arr = token.reshape(1).astype(mx.uint32)
            self._lazy = True
        self._tokens.append(token)
        step = self._forward(arr)
        self._steps.append(step)
        return step

    @property
    def passes(self) -> int:
        """Forward passes run so far over this decoder's sequence (a multi-token feed, a batched round: one)."""
        return self._calls

    def constrain(self, step: Step, allowed) -> Step:
        """``step``'s distribution restricted to the ``allowed`` tokens (an MLX bool mask, e.g. a grammar's)
        and renormalised, with its token sampled from it: a token the mask forbids is never sampled, and a token
        it forces has confidence 1. Lazy, like every Step."""
        import mlx.core as mx

        with mx.stream(self._stream):
            lp = step.logprobs
            n = lp.shape[-1]
            if allowed.shape[-1] < n:  # padded logits beyond the tokenizer's vocabulary are never allowed
                allowed = mx.concatenate([allowed, mx.zeros((n - allowed.shape[-1],), dtype=mx.bool_)])
            lp = mx.where(allowed[:n], lp, -mx.inf)
            lp = lp - mx.logsumexp(lp, keepdims=True)
            token = self.sampler(lp[None]).squeeze()
            packed, top = summary_graph(lp, self.top_k)
        mx.async_eval(token, packed, top)
        return Step(lp, token, packed, top, step.hidden)  # the history keeps the unconstrained Step

    @property
    def tokens(self) -> list[int]:
        """Every token in the cache, as ints (lazily appended tokens are read here)."""
        toks = self._tokens
        if self._lazy:
            for i, t in enumerate(toks):
                if not isinstance(t, int):
                    toks[i] = int(t.item())
            self._lazy = False
        return toks

    def feed(self, ids: Sequence[int]) -> Step:
        """Append several tokens (e.g. a span written by the cloud model)."""
        ids = list(ids)
        if len(ids) == 1:
            return self.step(ids[0])
        return self._append(ids, prompt=False)

    def rollback(self, k: int) -> Step:
        """Drop the last ``k`` tokens; return the Step (next-token distribution) at the new end."""
        from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

        if k < 0 or k >= len(self.tokens):
            raise ConfigError(f"cannot roll back {k} of {len(self.tokens)} tokens")
        if k == 0 and self._steps:
            return self._steps[-1]
        if not can_trim_prompt_cache(self.cache):
            keep = self.tokens[: len(self.tokens) - k]
            self.reset()
            return self._append(keep)
        if len(self._steps) > k:
            trim_prompt_cache(self.cache, k)
            del self._tokens[len(self._tokens) - k:]
            for _ in range(k):
                self._steps.pop()
            return self._steps[-1]
        # Not enough history kept: drop one more token and re-feed it to recompute the distribution.
        trim_prompt_cache(self.cache, k + 1)
        toks = self.tokens
        last = toks[len(toks) - k - 1]
        del toks[len(toks) - k - 1:]
        self._steps.clear()
        return self.step(last)

    # -- branches ------------------------------------------------------------------------------------
    @property
    def can_fork(self) -> bool:
        from mlx_lm.models.cache import KVCache

        return all(type(c) is KVCache for c in self.cache)

    def fork(self, back: int = 0, *, end: Step | None = None) -> StepDecoder:
        """A new decoder on a copy of this one's KV cache, less its last ``back`` tokens: a branch to draft on
        (``can_fork``: plain KV caches only). The copy is lazy slices: nothing is computed again. ``end``: the
        Step at the copy's end (what ``rollback(0)`` gives there), when the caller has it."""
        from mlx_lm.models.cache import KVCache

        if not self.can_fork or not 0 <= back < len(self.tokens):
            raise ConfigError(f"cannot fork {back} tokens back from {len(self.tokens)} here")
        twin = self._twin()
        caches = []
        for c in self.cache:
            kc = KVCache()
            off = c.offset - back
            kc.keys, kc.values, kc.offset = c.keys[..., :off, :], c.values[..., :off, :], off
            caches.append(kc)
        twin.cache = caches
        twin._tokens = list(self.tokens[: len(self.tokens) - back])
        if end is not None:
            twin._steps.append(end)
        return twin

    def _twin(self) -> StepDecoder:
        return StepDecoder(self.lm, sampler=self.sampler, top_k=self.top_k, want_hidden=self.want_hidden,
                           prefill_step_size=self.prefill_step_size, history=self._steps.maxlen)

    def adopt(self, branch: StepDecoder, end: Step) -> Step:
        """Take over ``branch``'s sequence and KV cache (a forked branch the cloud chose); returns ``end``,
        the branch's Step at its cache's end."""
        self.cache, self._tokens, self._lazy = branch.cache, list(branch.tokens), False
        self._steps.clear()
        self._steps.append(end)
        return end

    def close(self) -> None:
        """Done with this decoder (a branch): nothing to release here."""

    def reset(self) -> None:
        self.cache = self._make_cache()
        self._tokens = []
        self._steps.clear()

    @property
    def context_window(self) -> int:
        return self.lm.context_window
