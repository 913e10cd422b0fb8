"""LlamaIndex LLM: ``CollabLLM``.

A thin adapter over ``collab_core``: it turns prompts and ``ChatMessage`` lists into engine prompts,
streams ``TokenEvent``s from the shared engine and reports what the engine measured. No routing, scoring
or cloud logic lives here.

Every public call carries LlamaIndex's callback decorators (``llm_completion_callback`` /
``llm_chat_callback``), so the instrumentation dispatcher and ``CallbackManager`` handlers such as
``TokenCountingHandler`` see it. The async methods stream from ``Engine.astream``, which decodes on the
model's loop thread: the event loop is never blocked (``CustomLLM``'s async defaults would call the sync
methods on the loop, so this class subclasses ``LLM`` directly).

What a response carries:

* ``raw["usage"]``: ``prompt_tokens`` / ``completion_tokens`` / ``total_tokens`` of the local model (on
  the last chunk of a stream);
* ``raw["collab"]``: the routing stats (tokens from the cloud, calls, failures, cost, time split);
* ``raw["finish_reason"]`` and ``raw["model"]``;
* tools (it is a ``FunctionCallingLLM``: ``chat_with_tools``, ``predict_and_call``, ``structured_predict``,
  ``as_structured_llm``, ``FunctionAgent``): the tools and ``tool_choice`` go to the engine, which enforces the
  calls with a grammar and parses them (``collab_core.tools``); the calls come back in
  ``message.additional_kwargs["tool_calls"]`` (``{"id", "name", "arguments"}``), the message's content being
  the text outside them. ``chat(messages, json_schema=...)`` gives an answer that is that schema's JSON;
* streams: one chunk per generated token, with ``additional_kwargs["source"]`` (``"local"`` or
  ``"cloud"``) and, in ``raw``, the token id, its source and the local model's confidence; the delta
  may be empty while bytes of a character or a possible stop sequence are held back. A closing chunk
  (delta: any held-back text) carries ``usage``, ``collab`` (with ``cloud_spans``: the text the cloud wrote)
  and ``finish_reason``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import aclosing
from typing import Any, Literal

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr, SecretStr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection, default_completion_to_prompt

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from collab_core.engine import Engine, Event, FinalEvent, Generation, TokenEvent
from collab_core.integration import OwnedEngines, cloud_spans, collab_metadata, usage
from collab_core.local.loading import display_name
from collab_core.settings import EngineSettings, generation_options
from collab_core.tools import VisibleText

from .messages import to_engine_messages


class _Chunks:
    """Turns the engine's events into (delta, raw, additional_kwargs) for stream responses."""

    def __init__(self, llm: CollabLLM, engine: Engine, options: dict | None = None):
        self.llm, self.engine = llm, engine
        self.text = ""
        self.last_source = "local"
        options = options or {}
        # with tools, a call's text is held back from the deltas; the parsed calls come on the closing chunk
        self.visible = VisibleText() if options.get("tools") and options.get("tool_choice") != "none" else None
        self.tool_calls: list[dict] = []
        self.events: list[TokenEvent] = []

    def __call__(self, ev: Event) -> tuple[str, dict, dict]:
        text = self.visible.feed(ev.text) if self.visible is not None else ev.text
        if isinstance(ev, TokenEvent):  # a token; its text may be "" (part of a character, or of a possible stop string)
            self.text += text
            self.last_source = ev.source
            self.events.append(ev)
            return text, ev.as_dict(), {"source": ev.source}
        # the closing event: any held-back text, usage and stats (and the tool calls)
        if self.visible is not None:
            text += self.visible.finish()
        self.text += text
        self.tool_calls = _tool_calls(ev)
        raw = self.llm._final_raw(self.engine, ev)
        raw["collab"]["cloud_spans"] = cloud_spans(self.events)
        return text, raw, {"source": self.last_source, "finish_reason": ev.finish_reason}


def _tool_calls(ev: FinalEvent | Generation) -> list[dict]:
    return [c.as_dict() for c in ev.structured.tool_calls] if ev.structured is not None else []


class CollabLLM(FunctionCallingLLM):
    """A small local MLX model writes the answer; its hard tokens go to a cloud model (any LiteLLM model).

    Example:
        .. code-block:: python

            from llama_index.core import Settings
            from llamaindex_collab import CollabLLM

            Settings.llm = CollabLLM(cloud_model="gpt-4o-mini", budget=0.07)
            print(Settings.llm.complete("What is the capital of France?"))

    Without ``cloud_model`` it runs local only. The local model defaults to the bundled
    SmolLM2-135M-Instruct and loads on first use (the loaded model is shared by every instance with the same spec; each instance owns its engine, so
    budgets are per instance);
    constructing the class is cheap, but an unknown cloud model string or a missing API key raises
    ``collab_core.errors.CloudConfigError`` right here, before any work.

    ``complete(prompt)`` sends the prompt as a user message through the model's chat template (with the
    generation prompt); ``complete(prompt, formatted=True)`` sends it as is. ``chat`` always uses the chat
    template. Per call, ``max_tokens``, ``temperature``, ``stop`` and the core's generation options
    (``seed``, ``top_p``, ``local_only``, ``max_cloud_calls``, ``deadline_s``) may be passed as keywords.
    """

    local_model: str | None = Field(
        default=None,
        description="Local model: HF repo id, mlx-lm folder or .gguf file (default: qwen2.5-coder-0.5b, with its learned router).")
    cloud_model: str | None = Field(
        default=None, description="LiteLLM model string of the cloud model (None: local only).")
    api_base: str | None = Field(default=None, description="Base URL of the cloud API.")
    api_key: SecretStr | None = Field(
        default=None, exclude=True, repr=False,
        description="Cloud API key; default: the provider's environment variable (read by LiteLLM).")
    threshold: float | None = Field(default=None, description="Route a token whose score reaches this, in [0, 1].")
    budget: float | None = Field(default=None, description="Target share of tokens written by the cloud, in [0, 1].")
    router: Any = Field(default=None, description="A collab_core Router or a router spec string.")
    pipeline: Literal["sync", "async"] = Field(
        default="async", description="async: keep drafting locally while the cloud works; sync: wait.")
    branches: int = Field(default=1, ge=1, description="Async pipeline: draft from the local model's BRANCHES best "
                                                       "candidates at a routed position at once.")
    max_batch: int = Field(default=8, description="Concurrent generations decoded together; more wait.")
    max_draft: int = Field(default=32, description="Async pipeline: tokens drafted at most while the cloud works.")
    pace: bool = Field(default=True, description="Async pipeline: skip a draft pass a landing reply would waste.")
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature (0: greedy).")
    max_tokens: int = Field(default=256, gt=0, description="Most tokens to generate.")
    timeout: float = Field(default=10.0, gt=0, description="Seconds per cloud call.")
    max_retries: int = Field(default=2, ge=0, description="Retries per cloud call.")
    stop: list[str] | None = Field(default=None, description="Stop sequences (not included in the output).")
    span_tokens: int = Field(default=4, gt=0, description="Tokens the cloud writes per routed position.")
    spare_tokens: int = Field(default=1, ge=0, description="Token-exact clouds: tokens asked for beyond each span, "
                              "used without a call if the router routes the positions right after it.")
    strategy: str = Field(default="auto", description="How the cloud continues the answer (see collab_core.cloud.client).")
    cloud_vocab: str | None = Field(
        default=None, description="The cloud's vocabulary fingerprint, or 'local': it shares the local tokenizer "
                                  "(spans are spliced token for token).")
    deployments: Any = Field(
        default=None, description="A litellm.Router or a LiteLLM router config file; cloud_model names its model "
                                  "group (default: the first).")
    max_spend_usd: float | None = Field(
        default=None, description="Stop routing once this instance's engine has spent this many USD on the cloud.")
    redact: Any = Field(
        default=None, description="'default' or a function str -> str over every text sent to the cloud "
                                  "(placeholders restored in the spans).")

    _engines: OwnedEngines = PrivateAttr(default_factory=OwnedEngines)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        # Validates the cloud settings (CloudConfigError) without loading the local model.
        self._engine()

    @classmethod
    def class_name(cls) -> str:
        return "CollabLLM"

    # -- engine ------------------------------------------------------------------------------------------
    def _engine(self) -> Engine:
        """This instance's engine for its current settings (a dictionary look-up after the first call)."""
        return self._engines.get(EngineSettings.from_object(self))

    def _options(self, kwargs: dict[str, Any], **fixed: Any) -> dict[str, Any]:
        kwargs = dict(kwargs)
        stop = kwargs.pop("stop", None)
        return generation_options(kwargs.pop("max_tokens", None) or self.max_tokens,
                                  kwargs.pop("temperature", self.temperature),
                                  stop if stop is not None else self.stop, **{**kwargs, **fixed})

    def _completion_prompt(self, prompt: str, formatted: bool) -> tuple[str, dict[str, Any]]:
        """(engine prompt, fixed options): a plain prompt becomes a user message in the chat template."""
        if formatted:
            return prompt, {"chat": False}
        if self.query_wrapper_prompt is not None:
            prompt = self.query_wrapper_prompt.format(query_str=prompt)
        if self.completion_to_prompt not in (None, default_completion_to_prompt):
            return self.completion_to_prompt(prompt), {"chat": False}  # the user formats it
        return prompt, {"system": self.system_prompt} if self.system_prompt else {}

    @property
    def metadata(self) -> LLMMetadata:
        """Loads the local model on first access (``context_window`` comes from its config)."""
        engine = self._engine()
        return LLMMetadata(context_window=engine.local_model.context_window, num_output=self.max_tokens,
                           is_chat_model=True, is_function_calling_model=True, model_name=engine.model_name)

    def to_payload(self) -> dict[str, Any]:
        """What the callback decorators report about this LLM (never the API key).

        They call it at the start of every call, async ones on the event loop: before the local model is
        loaded this is built from the settings alone, so it never blocks the loop on a model load.
        """
        engine = self._engine()
        if engine.loaded:
            return super().to_payload()
        name = display_name(self.local_model)
        return {"class_name": self.class_name(), "num_output": self.max_tokens, "is_chat_model": True,
                "is_function_calling_model": True,
                "model_name": f"{name}+{engine.cloud.model}" if engine.cloud is not None else name}

    # -- results -------------------------------------------------------------------------------------------
    @staticmethod
    def _usage(stats) -> dict[str, int]:
        u = usage(stats)
        return {"prompt_tokens": u["input_tokens"], "completion_tokens": u["output_tokens"],
                "total_tokens": u["total_tokens"]}

    def _final_raw(self, engine: Engine, ev: FinalEvent | Generation) -> dict[str, Any]:
        return {"usage": self._usage(ev.stats), "collab": collab_metadata(ev.stats),
                "finish_reason": ev.finish_reason, "model": engine.model_name}

    def _generation_raw(self, engine: Engine, gen: Generation) -> dict[str, Any]:
        raw = self._final_raw(engine, gen)
        raw["collab"]["token_sources"] = [e.source for e in gen.events]
        raw["collab"]["cloud_spans"] = cloud_spans(gen.events)
        return raw

    def _completion(self, engine: Engine, gen: Generation) -> CompletionResponse:
        return CompletionResponse(text=gen.text, raw=self._generation_raw(engine, gen),
                                  additional_kwargs={"finish_reason": gen.finish_reason})

    def _chat(self, engine: Engine, gen: Generation) -> ChatResponse:
        calls = _tool_calls(gen)
        content = gen.structured.content if calls or (gen.structured and gen.structured.invalid_tool_calls) else gen.text
        message = ChatMessage(role=MessageRole.ASSISTANT, content=content,
                              additional_kwargs={"tool_calls": calls} if calls else {})
        return ChatResponse(message=message,
                            raw=self._generation_raw(engine, gen),
                            additional_kwargs={"finish_reason": gen.finish_reason})

    @staticmethod
    def _stream_completions(chunks: _Chunks, delta: str, raw: dict, extra: dict) -> CompletionResponse:
        return CompletionResponse(text=chunks.text, delta=delta, raw=raw, additional_kwargs=extra)

    @staticmethod
    def _stream_chats(chunks: _Chunks, delta: str, raw: dict, extra: dict) -> ChatResponse:
        kw = {"tool_calls": chunks.tool_calls} if chunks.tool_calls else {}
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=chunks.text, additional_kwargs=kw),
                            delta=delta, raw=raw, additional_kwargs=extra)

    def _sync_stream(self, prompt: Any, options: dict, make) -> Iterator:
        engine = self._engine()
        chunks = _Chunks(self, engine, options)

        def gen():
            events = engine.stream(prompt, **options)
            try:
                for ev in events:
                    yield make(chunks, *chunks(ev))
            finally:
                events.close()  # releases the engine at once if the caller stops early

        return gen()

    def _async_stream(self, prompt: Any, options: dict, make) -> AsyncIterator:
        engine = self._engine()
        chunks = _Chunks(self, engine, options)

        async def gen():
            async with aclosing(engine.astream(prompt, **options)) as events:
                async for ev in events:
                    yield make(chunks, *chunks(ev))

        return gen()

    # -- completion ------------------------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, fixed = self._completion_prompt(prompt, formatted)
        engine = self._engine()
        return self._completion(engine, engine.generate(text, **self._options(kwargs, **fixed)))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        text, fixed = self._completion_prompt(prompt, formatted)
        return self._sync_stream(text, self._options(kwargs, **fixed), self._stream_completions)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        text, fixed = self._completion_prompt(prompt, formatted)
        engine = self._engine()
        return self._completion(engine, await engine.agenerate(text, **self._options(kwargs, **fixed)))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        text, fixed = self._completion_prompt(prompt, formatted)
        return self._async_stream(text, self._options(kwargs, **fixed), self._stream_completions)

    # -- chat: the message list goes through the model's chat template, with the generation prompt ---------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        engine = self._engine()
        return self._chat(engine, engine.generate(to_engine_messages(messages), **self._options(kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._sync_stream(to_engine_messages(messages), self._options(kwargs), self._stream_chats)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        engine = self._engine()
        return self._chat(engine, await engine.agenerate(to_engine_messages(messages), **self._options(kwargs)))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return self._async_stream(to_engine_messages(messages), self._options(kwargs), self._stream_chats)

    # -- tools: FunctionCallingLLM ---------------------------------------------------------------------------
    def _prepare_chat_with_tools(self, tools: Sequence[Any], user_msg: str | ChatMessage | None = None,
                                 chat_history: list[ChatMessage] | None = None, verbose: bool = False,
                                 allow_parallel_tool_calls: bool = False, tool_required: bool = False,
                                 tool_choice: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """``chat`` arguments: the messages, the tools as OpenAI-style specs and the choice (``tool_required``:
        a call is forced; ``tool_choice``: ``"auto"``, ``"none"``, ``"required"`` or a tool's name)."""
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(user_msg if isinstance(user_msg, ChatMessage) else
                            ChatMessage(role=MessageRole.USER, content=user_msg))
        specs = [t.metadata.to_openai_tool() for t in tools]
        choice = "required" if tool_required else tool_choice
        return {"messages": messages, "tools": specs or None, **({"tool_choice": choice} if choice else {}), **kwargs}

    def get_tool_calls_from_response(self, response: ChatResponse, error_on_no_tool_call: bool = True,
                                     **kwargs: Any) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected at least one tool call, got none: {response.message.content!r}")
        return [ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"]) for c in calls]


__all__ = ["CollabLLM", "to_engine_messages"]
