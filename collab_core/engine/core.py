"""``Engine``: token-level routing between a local MLX model and a cloud model reached through LiteLLM.

The engine owns what outlives one request -- the local model's decoder (and with it the KV cache a next turn
reuses), the router (and with it the budget's running share), the cloud client, the span cache and the
executor cloud calls run on -- and hands them to a ``Run`` per request (``run.py``). Every entry point
streams from ``Engine.stream``; ``generate`` collects, ``astream``/``agenerate`` decode in a worker thread so
the event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import dataclasses
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import Any

from ..cloud.cache import SpanCache
from ..cloud.client import CloudClient, CloudConfig, SpanRequest
from ..cloud.deployments import is_router
from ..cloud.leg import SpendLimit
from ..errors import ConfigError
from ..local.batch import BatchScheduler, LaneDecoder, model_lock
from ..local.decoder import greedy
from ..local.loading import LocalModel, load_local_model, model_fingerprint
from ..prompts import Prompt, render_prompt
from ..router import Router, default_router, make_router
from ..settings import EngineSettings, GenerateOptions, GenerationConfig
from ..text import common_prefix_len
from ..threads import ParkedThreads
from .events import Event, Generation
from .pacing import Pacer
from .run import Run

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - 3.10
    from typing_extensions import Unpack

_D = EngineSettings()  # the settings' defaults, which the signature of Engine takes as its own
#: cloud settings -> the CloudConfig fields they set
_CLOUD_FIELDS = {"cloud_model": "model", "api_base": "api_base", "api_key": "api_key", "strategy": "strategy",
                 "span_tokens": "span_tokens", "spare_tokens": "spare_tokens", "timeout": "timeout_s",
                 "max_retries": "max_retries", "cloud_vocab": "vocab", "deployments": "deployments", "redact": "redact"}
_DECODE_THREADS = ParkedThreads("collab-decode")  # async API: decoding threads that never exit (see there)
_SCHED_GUARD = threading.Lock()


def _one(name: str, given: Any, via_cloud: Any) -> Any:
    """``cloud=`` names the same setting as ``name``: both may be given only alike."""
    if given is not None and given is not via_cloud and given != via_cloud:
        raise ConfigError(f"cloud={via_cloud!r} and {name}={given!r} disagree: give one")
    return via_cloud


def cloud_config_of(s: EngineSettings, base: CloudConfig | None = None) -> CloudConfig | None:
    """The ``CloudConfig`` of ``s``'s cloud group (None: local only). Over ``base``, only the cloud settings
    that ``s`` sets away from their defaults apply."""
    if base is None:
        if not s.cloud_model and s.deployments is None:
            return None
        return CloudConfig(**{cfg: getattr(s, name) for name, cfg in _CLOUD_FIELDS.items()})
    changed = {cfg: getattr(s, name) for name, cfg in _CLOUD_FIELDS.items() if getattr(s, name) != getattr(_D, name)}
    return dataclasses.replace(base, **changed) if changed else base


def make_sampler(cfg: GenerationConfig):
    if cfg.temperature <= 0:
        return greedy
    from mlx_lm.sample_utils import make_sampler as mlx_make_sampler

    return mlx_make_sampler(temp=cfg.temperature, top_p=cfg.top_p)


class Engine:
    """Token-level routing between a local MLX model and a cloud model reached through LiteLLM.

    Every setting of ``EngineSettings`` is a keyword argument here, by its name there (local: ``local_model``;
    cloud: ``cloud_model``, ``api_base``, ``api_key``, ``strategy``, ``span_tokens``, ``spare_tokens``,
    ``timeout``, ``max_retries``, ``cloud_vocab``, ``deployments``, ``max_spend_usd``, ``redact``; routing:
    ``router``, ``threshold``, ``budget``; engine: ``pipeline``, ``max_batch``, ``max_draft``, ``branches``, ``pace``), with
    its default and its help there; ``self.settings`` holds them. Besides them:

    Args:
        local_model: a ``LocalModel`` or a spec (``None``: the bundled default); loaded on first use.
        cloud: the cloud in one argument: a LiteLLM model string (``cloud_model``), a ``litellm.Router``
            (``deployments``) or a ``CloudConfig``, whose fields the cloud settings given here override.
            Unknown model strings and missing keys raise ``CloudConfigError`` here, before any work.
        router: the routing policy: a ``Router`` or a spec (``threshold:0.5``, ``budget:0.07``, ``learned``,
            ``never``); ``threshold``/``budget`` (each in [0, 1]) are shortcuts. A budget holds over every request
            of this engine.
        deployments: a ``litellm.Router`` or a router config file; ``cloud_model`` then names its model group
            (default: the first). LiteLLM retries and falls back; we make one attempt per span.
        cache: a ``SpanCache``, ``True`` for an in-memory one, ``False`` for none.
        config: default per-request options (each call may override them).
        want_hidden: keep the last hidden state on every step (a learned router asks for it anyway).
        cloud_config: deprecated name of ``deployments``.
    """

    def __init__(self, local_model: LocalModel | str | None = None, *, cloud: CloudConfig | str | Any = None,
                 cloud_model: str | None = _D.cloud_model, api_base: str | None = _D.api_base,
                 api_key: str | None = _D.api_key, strategy: str = _D.strategy, span_tokens: int = _D.span_tokens,
                 spare_tokens: int = _D.spare_tokens,
                 timeout: float = _D.timeout, max_retries: int = _D.max_retries,
                 cloud_vocab: str | None = _D.cloud_vocab, deployments: Any = _D.deployments,
                 max_spend_usd: float | None = _D.max_spend_usd, redact: Any = _D.redact,
                 router: Router | str | None = _D.router, threshold: float | None = _D.threshold,
                 budget: float | None = _D.budget, pipeline: str = _D.pipeline, max_batch: int = _D.max_batch,
                 max_draft: int = _D.max_draft, branches: int = _D.branches, pace: bool = _D.pace,
                 cache: SpanCache | bool = True, config: GenerationConfig | None = None, want_hidden: bool = False,
                 cloud_config: Any = None):
        if cloud_config is not None:
            warnings.warn("Engine(cloud_config=...) is now deployments=...", DeprecationWarning, stacklevel=2)
            deployments = cloud_config if deployments is None else deployments
        base = None
        if isinstance(cloud, CloudConfig):
            base = cloud
        elif is_router(cloud):
            deployments = _one("deployments", deployments, cloud)
        elif cloud is not None:
            cloud_model = _one("cloud_model", cloud_model, cloud)
        s = EngineSettings(
            local_model=local_model, cloud_model=cloud_model, api_base=api_base, api_key=api_key,
            strategy=strategy, span_tokens=span_tokens, spare_tokens=spare_tokens, timeout=timeout,
            max_retries=max_retries, cloud_vocab=cloud_vocab, deployments=deployments, max_spend_usd=max_spend_usd, redact=redact,
            router=router, threshold=threshold, budget=budget, pipeline=pipeline, max_batch=max_batch,
            max_draft=max_draft, branches=branches, pace=pace)
        self.settings = s
        self._local_spec = local_model
        self._lm = local_model if isinstance(local_model, LocalModel) else None
        self.config = config or GenerationConfig()
        cloud_cfg = cloud_config_of(s, base)
        self.cloud: CloudClient | None = CloudClient(cloud_cfg) if cloud_cfg is not None else None
        if self.cloud is not None:
            self.cloud.validate()
        if router is None and threshold is None and budget is None:
            self.router = default_router(model_fingerprint(local_model))
        else:
            self.router = make_router(router, threshold=threshold, budget=budget)
        self.pipeline = pipeline
        self.max_draft = max_draft if pipeline == "async" else 0
        self.branches = branches
        self.pacer = Pacer() if pace and pipeline == "async" else None
        self.cache = cache if isinstance(cache, SpanCache) else (SpanCache() if cache else None)
        self.want_hidden = want_hidden
        self.spend = SpendLimit(max_spend_usd)
        self.max_batch = max_batch
        self._lanes: list[LaneDecoder] = []  # idle lanes, least recently used first (their KV caches are kept)
        self._busy: dict[LaneDecoder, int] = {}  # lane -> the thread whose generation holds it
        self._scheduler: BatchScheduler | None = None
        self._bound = False
        self._executor: cf.ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: EngineSettings, *, config: GenerationConfig | None = None,
                      cache: SpanCache | bool = True) -> Engine:
        """The engine ``settings`` describe (the CLI and both adapters build theirs this way): every setting
        reaches the engine, by its name."""
        return cls(**settings.as_kwargs(), config=config, cache=cache)

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
        return f"{name}+{self.cloud.model}" if self.cloud is not None else name

    def encode(self, prompt: Prompt, cfg: GenerationConfig | None = None) -> list[int]:
        cfg = cfg or self.config
        return render_prompt(self.local_model, prompt, chat=cfg.chat, system=cfg.system, tools=cfg.tools,
                             json_schema=cfg.json_schema)[1]

    def _bind(self, router: Router) -> None:
        lm = self.local_model
        if not self._bound:
            self.router.bind(lm)
            if self.cloud is not None:
                self.cloud.bind(lm.vocab_fingerprint)  # the token-exact path, when the tokenizers match
                expect = getattr(self.router, "expect_span", None)  # a budget prices spans at their length
                if expect is not None:
                    expect(self.cloud.config.span_tokens)
            self._bound = True
        if router is not self.router:
            router.bind(lm)  # a router for one call (binding a bound scorer again is cheap)

    def _sched(self) -> BatchScheduler:
        """The scheduler batching this engine's generations (made once, on the local model's lock)."""
        lm = self.local_model
        with _SCHED_GUARD:
            if self._scheduler is None:
                self._scheduler = BatchScheduler(model_lock(lm))
        return self._scheduler

    def _take_lane(self, prompt: Prompt, cfg: GenerationConfig, router: Router) -> LaneDecoder:
        """A lane for one generation (called holding the model lock): an idle one -- the one whose KV cache
        shares the longest prefix with this prompt, so a next turn reuses it -- or a new one; waits while
        ``max_batch`` are busy."""
        lm = self.local_model
        self._bind(router)
        me = threading.get_ident()
        if len(self._busy) >= self.max_batch and all(t == me for t in self._busy.values()):
            raise ConfigError(f"{len(self._busy)} streams of this engine are open in this thread, its max_batch: "
                              "finish one first, or raise max_batch")
        self._scheduler.cond.wait_for(lambda: len(self._busy) < self.max_batch)
        hidden = self.want_hidden or router.needs_hidden
        lane = None
        if len(self._lanes) > 1:
            ids = self.encode(prompt, cfg)
            lane = max(reversed(self._lanes), key=lambda d: common_prefix_len(d.tokens, ids))
        elif self._lanes:
            lane = self._lanes[0]
        if lane is not None:
            self._lanes.remove(lane)
        if lane is None or lane.want_hidden != hidden:
            lane = LaneDecoder(lm, self._scheduler, want_hidden=hidden)
        lane.sampler = make_sampler(cfg)
        self._busy[lane] = me
        return lane

    def _give_back(self, lane: LaneDecoder) -> None:
        self._busy.pop(lane, None)
        self._lanes.append(lane)
        del self._lanes[: max(0, len(self._lanes) - self.max_batch)]
        self._scheduler.cond.notify_all()

    def _submit(self, fn, *args) -> cf.Future:
        if self._executor is None:
            self._executor = cf.ThreadPoolExecutor(max_workers=max(2, self.max_batch),
                                                   thread_name_prefix="collab-cloud")
        return self._executor.submit(fn, *args)

    def prewarm(self, prompt: Prompt, **options: Unpack[GenerateOptions]) -> cf.Future | None:
        """Let the cloud read ``prompt`` now, in the background (``CloudClient.prewarm``), so that the first
        span of a later ``stream(prompt)`` finds it cached; None without a cloud. One extra call."""
        if self.cloud is None:
            return None
        cfg = self.config.replace(**options)
        text, _ = render_prompt(self.local_model, prompt, chat=cfg.chat, system=cfg.system)
        return self._submit(self.cloud.prewarm, SpanRequest.for_prompt(prompt, text, system=cfg.system))

    # -- sync ----------------------------------------------------------------------------------------------------
    def stream(self, prompt: Prompt, *, router: Router | None = None,
               **options: Unpack[GenerateOptions]) -> Iterator[Event]:
        """Yield one ``TokenEvent`` per generated token, then a ``FinalEvent`` (finish reason, stats).

        Options (``GenerateOptions``) override the engine's ``config`` for this call; an unknown one raises
        ``ConfigError``. ``router`` replaces the engine's router for this call only: a server gives each
        request a fresh one, so that no answer depends on what other requests routed before it.

        Concurrent calls (threads, ``astream``) are decoded as one batch, up to ``max_batch``: each keeps its
        own stream, routing and stats."""
        cfg = self.config.replace(**options)
        lm = self.local_model
        router = self.router if router is None else router
        sched = self._sched()
        with sched.entry():
            lane = self._take_lane(prompt, cfg, router)
            sched.join(lane)
            try:
                run = Run(lm, lane, router, prompt, cfg, cloud=self.cloud, cache=self.cache,
                          submit=self._submit, max_draft=self.max_draft, spend=self.spend, branches=self.branches,
                          pacer=self.pacer)
                with contextlib.closing(run.events()) as events:
                    for ev in events:
                        with sched.stepped_out(lane):  # the caller reads it; the other lanes go on
                            yield ev
            finally:
                sched.leave(lane)
                self._give_back(lane)

    def generate(self, prompt: Prompt, *, router: Router | None = None,
                 **options: Unpack[GenerateOptions]) -> Generation:
        return Generation.from_events(list(self.stream(prompt, router=router, **options)), self.model_name)

    # -- async: decoding runs in a worker thread, the event loop is never blocked ------------------------------
    async def astream(self, prompt: Prompt, *, router: Router | None = None,
                      **options: Unpack[GenerateOptions]) -> AsyncIterator[Event]:
        """``stream`` on a worker thread. Closing this iterator (or cancelling the task awaiting it) stops the
        generation at its next token and releases the local model for the next request."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        cancelled = threading.Event()

        def worker():
            try:
                with contextlib.closing(self.stream(prompt, router=router, **options)) as events:
                    for ev in events:  # closed on cancel: the model lock is released at once
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

    async def agenerate(self, prompt: Prompt, *, router: Router | None = None,
                        **options: Unpack[GenerateOptions]) -> Generation:
        return Generation.from_events([ev async for ev in self.astream(prompt, router=router, **options)],
                                      self.model_name)

    def close(self) -> None:
        if self.cloud is not None:
            self.cloud.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
