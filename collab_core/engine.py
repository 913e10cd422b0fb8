"""The engine: drives the step decoder over a prompt and yields one ``TokenEvent`` per token.

This is the one generation loop of the library; the LangChain and LlamaIndex adapters and the CLI
all stream from ``Engine.stream`` / ``Engine.astream``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .decoder import StepDecoder, encode_prompt, greedy
from .errors import ContextOverflowError
from .loading import LocalModel, load_local_model
from .scoring import Confidence
from .stats import GenerationStats
from .text import TextStream


@dataclass
class TokenEvent:
    """One generated token (like mlx-lm's ``GenerationResponse``, one per step)."""

    token: int
    text: str  # text released to the caller with this token ("" while held back for a stop string)
    source: str = "local"  # "local" or "cloud"
    confidence: Confidence | None = None
    score: float | None = None  # routing score (higher = more in need of the cloud)
    finish_reason: str | None = None  # set on the last event: "stop" or "length"
    stats: GenerationStats | None = None  # set on the last event

    def as_dict(self) -> dict:
        d = {"token": self.token, "text": self.text, "source": self.source}
        if self.confidence is not None:
            d["confidence"] = round(self.confidence.max_prob, 6)
            d["entropy"] = round(self.confidence.entropy, 6)
            d["margin"] = round(self.confidence.margin, 6)
        if self.score is not None:
            d["score"] = round(self.score, 6)
        return d


@dataclass
class Generation:
    text: str
    events: list[TokenEvent]
    finish_reason: str
    stats: GenerationStats
    model_name: str = ""
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "model": self.model_name,
            "tokens": [e.as_dict() for e in self.events],
            "stats": self.stats.as_dict(),
        }


@dataclass
class GenerationConfig:
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()
    chat: bool | None = None  # None: use the chat template when the model has one
    system: str | None = None

    def replace(self, **overrides: Any) -> GenerationConfig:
        vals = {**self.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        return GenerationConfig(**vals)


def make_sampler(cfg: GenerationConfig):
    if cfg.temperature <= 0:
        return None  # greedy
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    return mlx_make_sampler(temp=cfg.temperature, top_p=cfg.top_p)


class Engine:
    """Token-level collaborative generation: local decoding (routing arrives with the router)."""

    def __init__(self, local_model: LocalModel | str | None = None, *, config: GenerationConfig | None = None,
                 want_hidden: bool = False):
        self._local_spec = local_model
        self._lm = local_model if isinstance(local_model, LocalModel) else None
        self.config = config or GenerationConfig()
        self.want_hidden = want_hidden
        self._decoder: StepDecoder | None = None
        self._lock = threading.Lock()  # one sequence at a time on this engine's KV cache

    @property
    def local_model(self) -> LocalModel:
        if self._lm is None:
            self._lm = load_local_model(self._local_spec)
        return self._lm

    def encode(self, prompt, cfg: GenerationConfig | None = None) -> list[int]:
        cfg = cfg or self.config
        return encode_prompt(self.local_model, prompt, chat=cfg.chat, system=cfg.system)

    def _decoder_for(self, cfg: GenerationConfig) -> StepDecoder:
        if self._decoder is None:
            self._decoder = StepDecoder(self.local_model, want_hidden=self.want_hidden)
        self._decoder.sampler = make_sampler(cfg) or greedy
        return self._decoder

    # -- sync ----------------------------------------------------------------------------------------
    def stream(self, prompt, **overrides: Any) -> Iterator[TokenEvent]:
        """Yield one ``TokenEvent`` per generated token; the last one carries finish_reason and stats."""
        cfg = self.config.replace(**overrides)
        with self._lock:
            yield from self._run(prompt, cfg)

    def generate(self, prompt, **overrides: Any) -> Generation:
        events = list(self.stream(prompt, **overrides))
        last = events[-1]
        return Generation(text="".join(e.text for e in events), events=events,
                          finish_reason=last.finish_reason or "stop", stats=last.stats or GenerationStats(),
                          model_name=self.local_model.name)

    # -- async: decoding runs in a worker thread, the event loop is never blocked ------------------
    async def astream(self, prompt, **overrides: Any) -> AsyncIterator[TokenEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        cancelled = threading.Event()

        def worker():
            try:
                for ev in self.stream(prompt, **overrides):
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, ev)
            except BaseException as exc:  # re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        thread = threading.Thread(target=worker, name="collab-decode", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancelled.set()

    async def agenerate(self, prompt, **overrides: Any) -> Generation:
        events = [ev async for ev in self.astream(prompt, **overrides)]
        last = events[-1]
        return Generation(text="".join(e.text for e in events), events=events,
                          finish_reason=last.finish_reason or "stop", stats=last.stats or GenerationStats(),
                          model_name=self.local_model.name)

    # -- the loop ------------------------------------------------------------------------------------
    def _run(self, prompt, cfg: GenerationConfig) -> Iterator[TokenEvent]:
        import mlx.core as mx

        t0 = time.perf_counter()
        lm = self.local_model
        ids = self.encode(prompt, cfg)
        window = lm.context_window
        if len(ids) >= window:
            raise ContextOverflowError(f"prompt has {len(ids)} tokens; the local model's context is {window}")
        max_tokens = min(cfg.max_tokens, window - len(ids))
        if cfg.seed is not None:
            mx.random.seed(cfg.seed)
        dec = self._decoder_for(cfg)
        stats = GenerationStats(prompt_tokens=len(ids))
        text = TextStream(lm.tokenizer, cfg.stop)
        eos = lm.eos_token_ids

        step = dec.prefill(ids)
        pending: TokenEvent | None = None  # hold one event back so the last one can carry the stats
        finish = "length"
        n = 0
        while n < max_tokens:
            # Queue the next forward pass before reading this one (pipelined, as in mlx-lm).
            nxt = dec.step(step.token) if n + 1 < max_tokens else None
            tid = step.token_id
            if n == 0:
                stats.time_prefill_s = time.perf_counter() - t0
            if tid in eos:  # the cache keeps the EOS: a next turn's template usually repeats it
                finish = "stop"
                break
            piece = text.add(tid)
            n += 1
            if pending is not None:
                yield pending
            pending = TokenEvent(token=tid, text=piece, confidence=step.confidence)
            if stats.time_to_first_token_s is None:
                stats.time_to_first_token_s = time.perf_counter() - t0
            if text.stopped:
                finish = "stop"
                break
            if nxt is None:
                break
            step = nxt
        tail = text.finish()
        stats.total_tokens = n
        stats.time_total_s = time.perf_counter() - t0
        stats.time_local_s = stats.time_total_s
        if pending is None:
            pending = TokenEvent(token=-1, text=tail)
        else:
            pending.text += tail
        pending.finish_reason = finish
        pending.stats = stats
        yield pending
