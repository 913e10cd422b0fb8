"""LangChain chat model: ``CollabLLM``.

A thin adapter over ``collab_core``: it converts messages and options, streams ``TokenEvent``s from the
shared engine and reports what the engine measured. No routing, scoring or cloud logic lives here, and no tool
formatting or parsing: tools and JSON schemas go to the engine as options (``tools``, ``tool_choice``,
``json_schema``), which enforces them with a grammar and returns the parsed calls (``collab_core.tools``).

Tools: ``bind_tools`` (LangChain tools, pydantic models, functions, dicts; ``tool_choice`` ``"auto"``,
``"none"``, ``"any"``/``"required"``/``True`` or a tool's name), calls in ``AIMessage.tool_calls`` and, when
streaming, in ``tool_call_chunks`` (on the closing chunk; the call's text is held back from ``content``).
Structured output: ``with_structured_output(schema, method="json_schema" | "function_calling" | "json_mode",
include_raw=...)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from collab_core.engine import Engine, Event, FinalEvent, TokenEvent
from collab_core.integration import OwnedEngines, cloud_spans, collab_metadata, usage
from collab_core.local.loading import display_name
from collab_core.prompts import chat_role, message_text
from collab_core.settings import EngineSettings, generation_options
from collab_core.tools import Structured, VisibleText


def _to_messages(messages: list[BaseMessage]) -> list[dict]:
    """The messages as the engine's ``{"role", "content"}`` dicts. The content goes through the core's
    ``message_text``, which refuses an image, audio or file part (``UnsupportedInputError``) rather than
    dropping it as ``BaseMessage.text`` would."""
    out = []
    for m in messages:
        msg = {"role": chat_role(m.type), "content": message_text(m.content)}
        if isinstance(m, AIMessage) and m.tool_calls:
            msg["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                  "function": {"name": c["name"], "arguments": c["args"]}} for c in m.tool_calls]
        elif isinstance(m, ToolMessage):
            msg.update(tool_call_id=m.tool_call_id, **({"name": m.name} if m.name else {}))
        out.append(msg)
    return out


def _tool_choice(choice: Any) -> str | None:
    """LangChain's tool_choice values as the engine's (``"auto"``, ``"none"``, ``"required"``, a name)."""
    if choice is None or choice is False:
        return None
    if choice is True or choice in ("any", "required"):
        return "required"
    if isinstance(choice, dict):
        return (choice.get("function") or {}).get("name") or choice.get("name")
    return str(choice)


def _lc_tool_calls(structured: Structured | None) -> tuple[list[dict], list[dict]]:
    if structured is None:
        return [], []
    calls = [{"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"} for c in structured.tool_calls]
    invalid = [{"name": c.name, "args": c.text, "id": c.id, "error": c.error, "type": "invalid_tool_call"}
               for c in structured.invalid_tool_calls]
    return calls, invalid


class CollabLLM(BaseChatModel):
    """A small local MLX model writes the answer; its hard tokens go to a cloud model (any LiteLLM model).

    Example:
        .. code-block:: python

            from langchain_collab import CollabLLM

            llm = CollabLLM(cloud_model="anthropic/claude-sonnet-4-5", budget=0.07)
            llm.invoke("What is the capital of France?")

    Without ``cloud_model`` it runs local only. The local model defaults to the bundled
    SmolLM2-135M-Instruct and loads on first use (shared by every instance with the same spec).
    """

    local_model: str | None = None
    """Local model: HF repo id, mlx-lm folder or .gguf file (default: qwen2.5-coder-0.5b, with its learned router)."""
    cloud_model: str | None = Field(default=None, alias="model")
    """LiteLLM model string of the cloud model (``gpt-4o-mini``, ``anthropic/...``, ``hosted_vllm/...``)."""
    api_base: str | None = Field(default=None, alias="base_url")
    api_key: SecretStr | None = None
    """Cloud API key; default: the provider's usual environment variable (e.g. ``OPENAI_API_KEY``)."""
    threshold: float | None = None
    budget: float | None = None
    router: Any = None
    pipeline: Literal["sync", "async"] = "async"
    branches: int = 1
    """Async pipeline: draft from the local model's ``branches`` best candidates at a routed position at once."""
    max_batch: int = 8
    """Concurrent generations decoded together (one forward pass per step); more wait."""
    max_draft: int = 32
    """Async pipeline: local tokens drafted at most while a cloud call is in flight."""
    pace: bool = True
    """Async pipeline: hold back a draft pass the span's reply, about to land, would likely make useless."""
    temperature: float = 0.0
    max_tokens: int | None = 256
    timeout: float | None = 10.0
    max_retries: int = 2
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False
    span_tokens: int = 4
    spare_tokens: int = 1
    """Token-exact clouds: tokens asked for beyond each span, used without a call if the next positions route."""
    strategy: str = "auto"
    cloud_vocab: str | None = None
    """The cloud's vocabulary fingerprint, or ``"local"``: it shares the local tokenizer (token-exact spans)."""
    deployments: Any = None
    """A ``litellm.Router`` or a LiteLLM router config file; ``model`` names its model group (default: the first)."""
    max_spend_usd: float | None = None
    """Stop routing once this instance's engine has spent this many USD on the cloud (over all its requests)."""
    redact: Any = None
    """``"default"`` or a function ``str -> str`` over every text sent to the cloud (placeholders restored)."""

    model_config = ConfigDict(populate_by_name=True, arbitrary_types_allowed=True)
    _engines: OwnedEngines = PrivateAttr(default_factory=OwnedEngines)

    @model_validator(mode="after")
    def _validate(self) -> CollabLLM:
        if self.api_key is None and self.cloud_model:
            from collab_core.cloud.client import api_key_env_var

            var = api_key_env_var(self.cloud_model)
            if var and os.environ.get(var):
                self.api_key = SecretStr(os.environ[var])
        return self

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # Unknown model string, missing key, bad setting: a typed error now, not mid-answer (raised here rather
        # than in a validator, where pydantic would wrap it in a ValidationError).
        self._engine()

    # -- engine ------------------------------------------------------------------------------------------
    def _engine(self, cloud_model: str | None = None) -> Engine:
        """This instance's engine (``cloud_model``: a per-call ``model=`` override gets its own)."""
        return self._engines.get(EngineSettings.from_object(self, cloud_model=cloud_model))

    def _options(self, stop: list[str] | None, kwargs: dict) -> dict:
        return generation_options(kwargs.get("max_tokens", self.max_tokens),
                                  kwargs.get("temperature", self.temperature),
                                  stop if stop is not None else self.stop, **kwargs)

    @property
    def model_name(self) -> str:
        return self._engine().model_name if self.cloud_model or self.deployments is not None \
            else display_name(self.local_model)

    @property
    def _llm_type(self) -> str:
        return "collab"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"local_model": self.local_model, "cloud_model": self.cloud_model, "api_base": self.api_base,
                "threshold": self.threshold, "budget": self.budget, "pipeline": self.pipeline,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="collab", ls_model_name=kwargs.get("model", self.model_name),
                                 ls_model_type="chat", ls_temperature=kwargs.get("temperature", self.temperature))
        if (mt := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = mt
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    # -- results -------------------------------------------------------------------------------------------
    @staticmethod
    def _usage(ev: FinalEvent) -> UsageMetadata:
        u = usage(ev.stats)
        return UsageMetadata(input_tokens=u["input_tokens"], output_tokens=u["output_tokens"],
                             total_tokens=u["total_tokens"])

    def _final_metadata(self, engine: Engine, ev: FinalEvent) -> dict:
        return {"model_name": engine.model_name, "finish_reason": ev.finish_reason,
                "collab": collab_metadata(ev.stats)}

    @staticmethod
    def _visible(options: dict) -> VisibleText | None:
        """For a stream with tools: the text filter that holds the calls back from ``content``."""
        return VisibleText() if options.get("tools") and options.get("tool_choice") != "none" else None

    def _chunk(self, engine: Engine, ev: Event, visible: VisibleText | None = None) -> ChatGenerationChunk:
        if isinstance(ev, TokenEvent):
            text = visible.feed(ev.text) if visible is not None else ev.text
            return ChatGenerationChunk(message=AIMessageChunk(
                content=text, response_metadata={"collab_sources": [ev.source]}))
        text = visible.feed(ev.text) + visible.finish() if visible is not None else ev.text
        calls, _ = _lc_tool_calls(ev.structured)
        chunks = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i,
                   "type": "tool_call_chunk"} for i, c in enumerate(calls)]
        return ChatGenerationChunk(
            message=AIMessageChunk(content=text, usage_metadata=self._usage(ev), chunk_position="last",
                                   tool_call_chunks=chunks, response_metadata=self._final_metadata(engine, ev)),
            generation_info={"finish_reason": ev.finish_reason})

    def _result(self, engine: Engine, events: list[Event]) -> ChatResult:
        last = events[-1]
        meta = self._final_metadata(engine, last)
        meta["collab"]["token_sources"] = [e.source for e in events if isinstance(e, TokenEvent)]
        meta["collab"]["cloud_spans"] = cloud_spans(events)
        text = "".join(e.text for e in events)
        calls, invalid = _lc_tool_calls(last.structured)
        if last.structured is not None and (calls or invalid):
            text = last.structured.content
        msg = AIMessage(content=text, usage_metadata=self._usage(last), response_metadata=meta,
                        tool_calls=calls, invalid_tool_calls=invalid)
        return ChatResult(generations=[ChatGeneration(message=msg,
                                                      generation_info={"finish_reason": last.finish_reason})],
                          llm_output={"model_name": engine.model_name})

    # -- sync ----------------------------------------------------------------------------------------------
    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        engine = self._engine(kwargs.get("model"))
        options = self._options(stop, kwargs)
        visible = self._visible(options)
        for ev in engine.stream(_to_messages(messages), **options):
            # langchain-core fires on_llm_new_token for each chunk we yield (once per token, plus the closing
            # chunk that carries usage and stats)
            yield self._chunk(engine, ev, visible)

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import generate_from_stream

            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        engine = self._engine(kwargs.get("model"))
        events = list(engine.stream(_to_messages(messages), **self._options(stop, kwargs)))
        return self._result(engine, events)

    # -- async: the engine decodes on the model's loop thread; the event loop is never blocked --------------
    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        engine = self._engine(kwargs.get("model"))
        options = self._options(stop, kwargs)
        visible = self._visible(options)
        async for ev in engine.astream(_to_messages(messages), **options):
            yield self._chunk(engine, ev, visible)

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        if self.streaming:
            from langchain_core.language_models.chat_models import agenerate_from_stream

            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        engine = self._engine(kwargs.get("model"))
        events = [ev async for ev in engine.astream(_to_messages(messages), **self._options(stop, kwargs))]
        return self._result(engine, events)

    # -- tools and structured output: options for the engine, which enforces and parses them ----------------
    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | BaseTool], *,
                   tool_choice: dict | str | bool | None = None, **kwargs: Any) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, pydantic models, functions or dicts). ``tool_choice``: ``"auto"``
        (default), ``"none"``, ``"any"``/``"required"``/``True`` (a call is forced) or a tool's name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        choice = _tool_choice(tool_choice)
        return super().bind(tools=formatted, **({"tool_choice": choice} if choice else {}), **kwargs)

    def with_structured_output(self, schema: dict | type, *,
                               method: Literal["function_calling", "json_schema", "json_mode"] = "json_schema",
                               include_raw: bool = False, **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
        """Answers parsed into ``schema`` (a pydantic model, a TypedDict, a JSON schema or an OpenAI tool dict).

        ``json_schema`` (default): the answer is the JSON value, enforced by the grammar; ``function_calling``:
        a forced call to a tool named after the schema; ``json_mode``: any JSON object (describe the fields
        in the prompt). Pydantic models come back as instances, other schemas as dicts. ``include_raw``:
        ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``.
        """
        from langchain_core.output_parsers import (
            JsonOutputKeyToolsParser,
            JsonOutputParser,
            PydanticOutputParser,
        )
        from langchain_core.output_parsers.openai_tools import PydanticToolsParser

        kwargs.pop("strict", None)  # the grammar always enforces the schema
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        from langchain_core.utils.pydantic import is_basemodel_subclass

        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)  # pydantic 2, or its v1 models
        fmt = {"kwargs": {"method": method}, "schema": schema}
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=fmt)
            parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True) if is_model
                                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema = (schema.model_json_schema() if is_model and hasattr(schema, "model_json_schema")
                               else convert_to_json_schema(schema))
            else:
                json_schema = {"type": "object"}
            llm = self.bind(json_schema=json_schema, ls_structured_output_format=fmt)
            parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()
        else:
            raise ValueError(f"method must be function_calling, json_schema or json_mode, not {method!r}")
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        failed = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([failed], exception_key="parsing_error")
