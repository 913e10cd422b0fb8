"""``Engine``: token-level routing between a local MLX model and a cloud model reached through LiteLLM.

The engine owns what outlives one request -- its lanes (and with them the KV caches a next turn reuses), the
router (and with it the budget's running share), the cloud client, the span cache and the executor cloud calls
run on -- and hands them to a ``Run`` per request (``run.py``). Every generation runs on the local model's loop
(``local/loop.py``: one thread runs every forward pass); ``stream`` and ``astream`` read its events from a queue,
so no reader's thread touches the model and the event loop is never blocked. ``generate``/``agenerate`` collect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import dataclasses
import queue
import sys
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from ..cloud.cache import SpanCache
from ..cloud.client import CloudClient, CloudConfig, SpanRequest
from ..cloud.deployments import is_router
from ..cloud.leg import SpendLimit
from ..errors import ConfigError
from ..local.batch import LaneDecoder
from ..local.decoder import greedy
from ..local.loading import LocalModel, load_local_model, model_fingerprint
from ..local.loop import ModelLoop, Request, model_loop
from ..prompts import Prompt, render_prompt
from ..router import Router, default_router, make_router
from ..settings import EngineSettings, GenerateOptions, GenerationConfig
from ..threads import ParkedThreads
from .events import Event, Generation
from .lanes import LanePool
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
_WAITING = ParkedThreads("collab-admit")  # async API: loading the model, waiting for a free lane (no decoding)


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
        self._pool = LanePool(max_batch)
        self._scheduler: ModelLoop | None = None  # the local model's loop, once a generation ran
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

    @property
    def _lanes(self) -> list[LaneDecoder]:
        return self._pool.idle

    @property
    def _busy(self) -> dict[LaneDecoder, object]:
        return self._pool.busy

    def _open(self, prompt: Prompt, router: Router | None, options: dict, owner: object,
              sink: Callable[[object], None], *, block: bool = True) -> tuple[Request, Callable[[], None]] | None:
        """Start a generation on the model's loop: a lane first (waiting while ``max_batch`` are busy; None at
        once if not ``block``). Returns its ``Request`` and the function its reader calls when done with it."""
        cfg = self.config.replace(**options)
        router = self.router if router is None else router
        lm = self.local_model
        loop = self._scheduler = model_loop(lm)
        hidden = self.want_hidden or router.needs_hidden
        lane = self._pool.take(lambda: LaneDecoder(lm, loop, want_hidden=hidden), lambda: self.encode(prompt, cfg),
                               hidden, owner, block=block)
        if lane is None:
            return None
        lane.sampler = make_sampler(cfg)
        release = self._pool.releaser(lane)
        req = loop.submit_generation(lambda: self._generation(loop, lane, prompt, cfg, router), sink,
                                     on_end=release)
        return req, release

    def _generation(self, loop: ModelLoop, lane: LaneDecoder, prompt: Prompt, cfg: GenerationConfig,
                    router: Router):
        """One generation, as the loop advances it (on its thread)."""
        self._bind(router)
        loop.join(lane)
        try:
            run = Run(self.local_model, lane, router, prompt, cfg, cloud=self.cloud, cache=self.cache,
                      submit=self._submit, max_draft=self.max_draft, spend=self.spend, branches=self.branches,
                      pacer=self.pacer)
            yield from run.events()
        finally:
            loop.leave(lane)
            lane.tokens  # noqa: B018 - ints from here on: an idle lane's tokens are read off the loop

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
        q: queue.SimpleQueue = queue.SimpleQueue()
        req, release = self._open(prompt, router, options, threading.get_ident(), q.put)
        try:
            yield from req.items(q)
        finally:  # a stream closed early: the loop drops the generation at its next step, before this returns
            req.cancel()
            release()

    def generate(self, prompt: Prompt, *, router: Router | None = None,
                 **options: Unpack[GenerateOptions]) -> Generation:
        return Generation.from_events(list(self.stream(prompt, router=router, **options)), self.model_name)

    # -- async: the loop decodes, the event loop only reads ------------------------------------------------------
    async def astream(self, prompt: Prompt, *, router: Router | None = None,
                      **options: Unpack[GenerateOptions]) -> AsyncIterator[Event]:
        """``stream`` for asyncio: events come from the model's loop through a queue. Closing this iterator (or
        cancelling the task awaiting it) stops the generation at the loop's next step and frees its lane."""
        aloop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def sink(item) -> None:
            aloop.call_soon_threadsafe(q.put_nowait, item)

        owner = object()
        if not self.loaded:  # loading takes seconds: not on the event loop
            await asyncio.wrap_future(_WAITING.submit(lambda: self.local_model))
        opened = self._open(prompt, router, options, owner, sink, block=False)
        if opened is None:  # max_batch busy: wait for a lane off the event loop
            opened = await asyncio.wrap_future(_WAITING.submit(
                lambda: self._open(prompt, router, options, owner, sink)))
        req, release = opened
        try:
            while req.received(item := await q.get()):
                yield item
        finally:
            req.cancel(wait=False)
            release()

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
