"""The engine: token-level collaborative generation.

The local model decodes; at each position a router scores the local model's confidence and decides
whether the cloud model writes the next short span instead. This is the one generation loop of the
library -- the CLI and the LangChain / LlamaIndex adapters all stream from ``Engine.stream`` /
``Engine.astream``.

Pipelines:

* ``sync``  -- at a routed position, wait for the cloud span, splice it in, go on;
* ``async`` -- send the request and keep drafting locally while it is in flight; when the span arrives
  the draft is kept where it agrees and rolled back (KV trim) where it does not.

The cloud never ends a generation: a failed, late or garbled call falls back to the local token and is
counted in the stats.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cache import SpanCache
from .cloud import CloudClient, CloudConfig, CloudSpan, SpanRequest, messages_for
from .decoder import Step, StepDecoder, greedy, render_prompt
from .errors import CloudConfigError, CloudError, ContextOverflowError
from .loading import LocalModel, load_local_model
from .router import Router, TokenSignal, make_router
from .scoring import Confidence
from .stats import GenerationStats
from .text import TextStream, common_prefix_len, splice
from .threads import ParkedThreads

PIPELINES = ("sync", "async")
_DECODE_THREADS = ParkedThreads("collab-decode")  # async API: decoding threads that never exit (see there)


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

    @classmethod
    def from_events(cls, events: list[TokenEvent], model_name: str) -> Generation:
        last = events[-1]
        return cls(text="".join(e.text for e in events), events=events, finish_reason=last.finish_reason or "stop",
                   stats=last.stats or GenerationStats(), model_name=model_name)

    def as_dict(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "model": self.model_name,
            "tokens": [e.as_dict() for e in self.events if e.token >= 0],
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
    local_only: bool = False  # never call the cloud for this request
    max_cloud_calls: int | None = None  # cap per request
    deadline_s: float | None = None  # per request: no cloud waiting past this many seconds from the start

    def replace(self, **overrides: Any) -> GenerationConfig:
        unknown = set(overrides) - set(self.__dict__)
        if unknown:
            raise TypeError(f"unknown generation option(s): {', '.join(sorted(unknown))}")
        vals = {**self.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
        return GenerationConfig(**vals)


def make_sampler(cfg: GenerationConfig):
    if cfg.temperature <= 0:
        return greedy
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    return mlx_make_sampler(temp=cfg.temperature, top_p=cfg.top_p)


class Engine:
    """Token-level routing between a local MLX model and a cloud model reached through LiteLLM.

    ``cloud`` is a LiteLLM model string or a ``CloudConfig`` (``None``: local only). ``router`` is a
    ``Router`` or a spec (``threshold:0.5``, ``budget:0.07``, ``never``); ``threshold``/``budget`` are
    shortcuts. Unknown cloud models and missing keys raise ``CloudConfigError`` here, before any work.
    """

    def __init__(self, local_model: LocalModel | str | None = None, *, cloud: CloudConfig | str | None = None,
                 api_base: str | None = None, api_key: str | None = None, router: Router | str | None = None,
                 threshold: float | None = None, budget: float | None = None, pipeline: str = "async",
                 max_draft: int = 8, cache: SpanCache | bool = True, config: GenerationConfig | None = None,
                 want_hidden: bool = False):
        if pipeline not in PIPELINES:
            raise ValueError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
        self._local_spec = local_model
        self._lm = local_model if isinstance(local_model, LocalModel) else None
        self.config = config or GenerationConfig()
        if isinstance(cloud, str):
            cloud = CloudConfig(model=cloud, api_base=api_base, api_key=api_key)
        self.cloud: CloudClient | None = CloudClient(cloud) if cloud is not None else None
        if self.cloud is not None:
            self.cloud.validate()
        self.router = make_router(router, threshold=threshold, budget=budget)
        self.pipeline = pipeline
        self.max_draft = max_draft if pipeline == "async" else 0
        self.cache = cache if isinstance(cache, SpanCache) else (SpanCache() if cache else None)
        self.want_hidden = want_hidden
        self._decoder: StepDecoder | None = None
        self._bound = False
        self._executor: cf.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # one sequence at a time on this engine's KV cache

    @property
    def local_model(self) -> LocalModel:
        if self._lm is None:
            self._lm = load_local_model(self._local_spec)
        return self._lm

    @property
    def loaded(self) -> bool:
        """Whether the local model is loaded (reading ``local_model`` loads it)."""
        return self._lm is not None

    @property
    def model_name(self) -> str:
        name = self.local_model.name
        return f"{name}+{self.cloud.config.model}" if self.cloud is not None else name

    def encode(self, prompt, cfg: GenerationConfig | None = None) -> list[int]:
        cfg = cfg or self.config
        return render_prompt(self.local_model, prompt, chat=cfg.chat, system=cfg.system)[1]

    def _decoder_for(self, cfg: GenerationConfig) -> StepDecoder:
        lm = self.local_model
        if not self._bound:
            self.router.bind(lm)
            self._bound = True
        hidden = self.want_hidden or self.router.needs_hidden
        if self._decoder is None or self._decoder.want_hidden != hidden:
            self._decoder = StepDecoder(lm, want_hidden=hidden)
        self._decoder.sampler = make_sampler(cfg)
        return self._decoder

    def _submit(self, fn, *args) -> cf.Future:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(max_workers=2, thread_name_prefix="collab-cloud")
        return self._executor.submit(fn, *args)

    # -- sync ----------------------------------------------------------------------------------------
    def stream(self, prompt, **overrides: Any) -> Iterator[TokenEvent]:
        """Yield one ``TokenEvent`` per generated token; the last one carries finish_reason and stats."""
        cfg = self.config.replace(**overrides)
        with self._lock:
            yield from _Run(self, prompt, cfg).events()

    def generate(self, prompt, **overrides: Any) -> Generation:
        return Generation.from_events(list(self.stream(prompt, **overrides)), self.model_name)

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
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        _DECODE_THREADS.submit(worker)
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
        return Generation.from_events([ev async for ev in self.astream(prompt, **overrides)], self.model_name)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


@dataclass
class _Inflight:
    future: cf.Future | None  # None when answered from the cache
    span: CloudSpan | None
    key: str | None
    answer_len: int  # answer tokens when the request was made
    submitted: float


class _Run:
    """The state of one generation. ``events()`` is the loop."""

    MAX_CONSECUTIVE_FAILURES = 3

    def __init__(self, engine: Engine, prompt, cfg: GenerationConfig):
        self.e = engine
        self.cfg = cfg
        self.t0 = time.perf_counter()
        self.lm = engine.local_model
        self.prompt_text, self.ids = render_prompt(self.lm, prompt, chat=cfg.chat, system=cfg.system)
        window = self.lm.context_window
        if len(self.ids) >= window:
            raise ContextOverflowError(f"prompt has {len(self.ids)} tokens; the local model's context is {window}")
        self.max_tokens = min(cfg.max_tokens, window - len(self.ids))
        self.dec = engine._decoder_for(cfg)
        self.router = engine.router
        self.cloud = None if cfg.local_only else engine.cloud
        self.stats = GenerationStats(prompt_tokens=len(self.ids))
        self.text = TextStream(self.lm.tokenizer, cfg.stop)
        self.eos = self.lm.eos_token_ids
        self.answer: list[int] = []  # committed tokens
        self.sources: list[str] = []
        self.draft: list[tuple[int, Confidence, float | None]] = []
        self.inflight: _Inflight | None = None
        self.deadline = self.t0 + cfg.deadline_s if cfg.deadline_s else None
        self.failures_in_row = 0
        self.cloud_off_reason: str | None = None
        self.finish = "length"
        self._accounted = (0, 0, 0)
        token_ids_given = isinstance(prompt, (list, tuple)) and bool(prompt) and isinstance(prompt[0], int)
        self.messages = [] if self.cloud is None or token_ids_given else messages_for(prompt, cfg.system)

    # -- helpers -------------------------------------------------------------------------------------
    def _cloud_usable(self) -> bool:
        if self.cloud is None or self.cloud_off_reason:
            return False
        if self.cfg.max_cloud_calls is not None and self.stats.cloud_calls + self.stats.cloud_cache_hits >= \
                self.cfg.max_cloud_calls:
            return False
        return self.deadline is None or time.perf_counter() < self.deadline

    def _emit(self, tid: int, source: str, conf: Confidence | None, score: float | None) -> TokenEvent:
        """Commit one token to the answer; the event to hand to the caller."""
        piece = self.text.add(tid)
        self.answer.append(tid)
        self.sources.append(source)
        if self.stats.time_to_first_token_s is None:
            self.stats.time_to_first_token_s = time.perf_counter() - self.t0
        return TokenEvent(token=tid, text=piece, source=source, confidence=conf, score=score)

    def _account(self) -> None:
        total, cloud = len(self.answer), self.sources.count("cloud")
        calls = self.stats.cloud_calls + self.stats.cloud_cache_hits
        t0, c0, k0 = self._accounted
        self.router.account(total - t0, cloud - c0, calls - k0)
        self._accounted = (total, cloud, calls)

    def _sync_cache(self, target: list[int], end: Step) -> Step:
        """Make the KV cache hold exactly prompt + ``target``; return the Step at its end."""
        full = self.ids + target
        cur = self.dec.tokens
        c = common_prefix_len(cur, full)
        if c == len(cur) == len(full):
            return end
        if c < len(cur):
            end = self.dec.rollback(len(cur) - c)
        if c < len(full):
            end = self.dec.feed(full[c:])
        return end

    # -- the cloud leg -------------------------------------------------------------------------------
    def _request(self, word_start: bool | None) -> SpanRequest:
        partial = self.lm.tokenizer.decode(self.answer) if self.answer else ""
        return SpanRequest(messages=self.messages, prompt_text=self.prompt_text, partial=partial,
                           word_start=word_start)

    def _call(self, req: SpanRequest) -> CloudSpan:
        return self.cloud.continue_span(req, deadline=self.deadline)

    def _start_cloud(self, word_start: bool | None) -> None:
        req = self._request(word_start)
        key = self.cloud.cache_key(req)
        cached = self.e.cache.get(key) if self.e.cache is not None else None
        if cached is not None:
            self.stats.cloud_cache_hits += 1
            self.inflight = _Inflight(None, cached, None, len(self.answer), time.perf_counter())
            return
        self.stats.cloud_calls += 1
        fut = self.e._submit(self._call, req)
        self.inflight = _Inflight(fut, None, key, len(self.answer), time.perf_counter())

    def _wait(self) -> CloudSpan | None:
        """Block for the in-flight span; None on failure (counted)."""
        inf = self.inflight
        if inf.span is not None:
            return inf.span
        t = time.perf_counter()
        timeout = None if self.deadline is None else max(0.0, self.deadline - t)
        try:
            span = inf.future.result(timeout=timeout)
        except cf.TimeoutError:
            self._failed("deadline", "the request deadline passed while waiting for the cloud")
            span = None
        except CloudError as exc:
            self._failed(exc.kind, str(exc), retryable=exc.retryable)
            span = None
        except Exception as exc:  # noqa: BLE001 - any other failure of the call: local token is used
            self._failed(type(exc).__name__, str(exc))
            span = None
        waited = time.perf_counter() - t
        self.stats.time_cloud_wait_s += waited
        if span is not None:
            self.stats.time_cloud_hidden_s += max(0.0, span.latency_s - waited)
            self.stats.cloud_input_tokens += span.input_tokens
            self.stats.cloud_output_tokens += span.output_tokens
            self.stats.cost_usd += span.cost_usd
            self.failures_in_row = 0
            if self.e.cache is not None and inf.key is not None:
                self.e.cache.put(inf.key, span)
        return span

    def _failed(self, kind: str, message: str, retryable: bool = True) -> None:
        self.stats.cloud_failures += 1
        self.stats.cloud_errors.append(f"{kind}: {message}"[:300])
        self.failures_in_row += 1
        if not retryable and kind in ("AuthenticationError", "PermissionDeniedError", "NotFoundError"):
            self.cloud_off_reason = kind
        elif kind == "deadline":
            self.cloud_off_reason = "deadline"
        elif self.failures_in_row >= self.MAX_CONSECUTIVE_FAILURES:
            self.cloud_off_reason = f"{self.failures_in_row} failures in a row"

    def _resolve(self) -> tuple[list[int], list[TokenEvent]]:
        """Settle the in-flight request against the draft: (tokens the KV cache must hold after the prompt,
        events to emit). The caller emits first and feeds the cache after, so the span's text goes out
        one forward pass earlier (feeding costs one pass for all its tokens, less than decoding them)."""
        started = self.inflight.submitted
        target, events = self._settle()
        self.stats.time_spans_s += time.perf_counter() - started
        return target, events

    def _settle(self) -> tuple[list[int], list[TokenEvent]]:
        span = self._wait()
        inf, self.inflight = self.inflight, None
        draft, self.draft = self.draft, []
        events: list[TokenEvent] = []

        def local_draft():
            for tid, conf, score in draft:
                if len(self.answer) >= self.max_tokens or self.text.stopped:
                    break
                events.append(self._emit(tid, "local", conf, score))

        if span is None or (not span.text and not span.ends_answer):
            if span is not None:
                self._failed("EmptySpan", "the cloud returned no text")
            local_draft()
            return list(self.answer), events
        assert inf.answer_len == len(self.answer)
        if not span.text:  # the cloud model ended the answer here
            self.finish = "stop"
            self.stats.rollbacks += len(draft)
            return list(self.answer), events
        n_back, new_ids = splice(self.lm.tokenizer, self.answer, span.text)
        base = self.answer[: len(self.answer) - n_back]
        room = self.max_tokens - len(base)
        new_ids = [t for t in new_ids if t not in self.eos][:room]
        target = base + new_ids
        drafted = self.answer + [t for t, _, _ in draft]
        keep_draft: list[tuple[int, Confidence, float | None]] = []
        if not span.ends_answer and drafted[: len(target)] == target:
            keep_draft = draft[max(0, len(target) - len(self.answer)):]  # the draft goes on after the span
        else:
            self.stats.rollbacks += len(drafted) - common_prefix_len(drafted, target)
        # Emit: the word fragment replaced, the cloud's tokens, then the draft beyond them where it agreed.
        if n_back:
            self.text.rewind(n_back)
            del self.answer[len(self.answer) - n_back:]
            del self.sources[len(self.sources) - n_back:]
        for tid in new_ids:
            events.append(self._emit(tid, "cloud", None, None))
            if self.text.stopped:
                break
        for tid, conf, score in keep_draft:
            if len(self.answer) >= self.max_tokens or self.text.stopped:
                break
            events.append(self._emit(tid, "local", conf, score))
        if span.ends_answer:
            self.finish = "stop"
        return target + [t for t, _, _ in keep_draft], events

    # -- the loop ------------------------------------------------------------------------------------
    def events(self) -> Iterator[TokenEvent]:
        import mlx.core as mx

        cfg, dec = self.cfg, self.dec
        if cfg.seed is not None:
            mx.random.seed(cfg.seed)
        step = dec.prefill(self.ids)
        first = True
        draft_closed = False  # the draft hit EOS or the token limit: wait for the cloud
        while True:
            if self.finish == "stop" or self.text.stopped:
                break
            if self.inflight is not None:
                inf = self.inflight
                ready = inf.span is not None or inf.future.done()
                if ready or draft_closed or len(self.draft) >= self.e.max_draft or \
                        len(self.answer) + len(self.draft) >= self.max_tokens:
                    target, evs = self._resolve()
                    yield from evs
                    step = self._sync_cache(target, step)  # the loop goes on from the end of the cache
                    self._account()
                    draft_closed = False
                    continue
            elif len(self.answer) >= self.max_tokens:
                break
            n_total = len(self.answer) + len(self.draft)
            # Queue the next forward pass before reading this one (pipelined, as in mlx-lm).
            spec = dec.step(step.token) if n_total + 1 < self.max_tokens else None
            tid = step.token_id
            conf = step.confidence
            if first:
                self.stats.time_prefill_s = time.perf_counter() - self.t0
                first = False
            if self.inflight is not None:  # drafting while the cloud works; nothing is emitted yet
                if tid in self.eos:
                    draft_closed = True
                else:
                    self.draft.append((tid, conf, None))
                if spec is None:
                    draft_closed = True
                else:
                    step = spec
                continue
            if tid in self.eos:  # the cache keeps the EOS: a next turn's template usually repeats it
                self.finish = "stop"
                break
            score = None
            if self._cloud_usable():
                sig = TokenSignal(conf, len(self.answer), tid, step.hidden)
                score = self.router.score(sig)
                self.router.observe(score)
                if self.router.should_route(score, sig):
                    piece = self.lm.tokenizer.decode([tid])
                    self._start_cloud(word_start=piece[:1].isspace())
                    self.draft.append((tid, conf, score))
                    if spec is not None:
                        step = spec
                    else:
                        draft_closed = True
                    continue
            yield self._emit(tid, "local", conf, score)
            if len(self.answer) % 16 == 0:
                self._account()
            if spec is None:
                break
            step = spec
        yield self._finish()

    def _finish(self) -> TokenEvent:
        """The closing event: no token, any held-back text, finish_reason and the stats."""
        if self.inflight is not None and self.inflight.future is not None:
            self.inflight.future.cancel()
        tail = self.text.finish()
        self._account()
        s = self.stats
        s.total_tokens = len(self.answer)
        s.cloud_tokens = self.sources.count("cloud")
        s.time_total_s = time.perf_counter() - self.t0
        s.time_local_s = max(0.0, s.time_total_s - s.time_cloud_wait_s)
        s.cloud_disabled_reason = self.cloud_off_reason
        if self.text.stopped:
            self.finish = "stop"
        return TokenEvent(token=-1, text=tail, finish_reason=self.finish, stats=s)


__all__ = ["PIPELINES", "CloudConfigError", "Engine", "Generation", "GenerationConfig", "TokenEvent"]
