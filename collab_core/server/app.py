"""The ASGI app of ``collab serve`` (Starlette): the OpenAI-compatible API and the page at ``/``.

    GET  /                       the page (plain HTML/JS from ``assets/``, no build step)
    GET  /assets/NAME            its scripts and style
    GET  /collab/config          what the page shows: model names, the server's budget, max tokens
    GET  /v1/models              the one model this server answers as
    POST /v1/chat/completions    chat, streamed by SSE or not
    POST /v1/completions         raw completion (no chat template), streamed by SSE or not

Decoding runs on the local model's loop thread (``Engine.astream`` reads its events from a queue), so the event
loop keeps serving while an answer is being written. Concurrent requests are decoded as one batch, each with its own
router (``routing.py``): never mixed, and the same request gets the same answer however many run beside it.

Bad input is answered before any work starts: invalid JSON, an unknown field or an unsupported value (400), an
oversized body (413), a wrong content type (415). A client that goes away mid-stream stops its generation at
the next token; the model is released for the next request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..engine import Engine, FinalEvent, TokenEvent
from ..errors import CollabError, ConfigError, RequestError
from . import assets
from .openai_format import CHAT, COMPLETION, SSE_DONE, ApiRequest, Reply, error_body, parse_request, sse
from .routing import describe_budget, request_router

JSON_TYPES = ("application/json",)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_body_bytes: int = 1 << 20  # 1 MiB: a long conversation, not a file upload
    max_tokens: int = 4096  # per answer, at most (the engine also clamps to the context window)


def http_status(exc: BaseException) -> int:
    """The HTTP status for a failure: the caller's fault (4xx) or ours (500)."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, ConfigError):  # an empty prompt, an image part, a prompt longer than the context
        return 400
    return 500


def error_response_body(exc: BaseException) -> dict[str, Any]:
    if http_status(exc) >= 500:
        return error_body(f"{type(exc).__name__}: {exc}", kind="server_error", code="internal_error")
    return error_body(str(exc), param=getattr(exc, "param", None),
                      code=getattr(exc, "code", None) or type(exc).__name__)


def error_response(exc: BaseException) -> JSONResponse:
    return JSONResponse(error_response_body(exc), status_code=http_status(exc))


async def read_json(request: Request, *, max_bytes: int) -> Any:
    """The body as JSON, after checking its type and size (the size while reading: a chunked body has no
    Content-Length to trust)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        raise RequestError(f"Content-Type must be application/json, not {ctype or 'none'!r}", status=415,
                           code="unsupported_media_type")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(f"the body is larger than {max_bytes} bytes", status=413, code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > max_bytes:
            raise RequestError(f"the body is larger than {max_bytes} bytes", status=413, code="body_too_large")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc})", code="invalid_json") from exc


class EventStream(Response):
    """An SSE response that stops its source as soon as the client goes away.

    It watches for ``http.disconnect`` while sending, instead of waiting for a send to fail (which may never
    happen: a server may drop writes to a closed connection quietly), and closes the source either way, so the
    engine stops at its next token and the local model is free again.
    """

    media_type = "text/event-stream"

    def __init__(self, chunks: AsyncIterator[bytes]):
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})  # no body: no Content-Length
        self.chunks = chunks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            try:
                await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
                async with aclosing(self.chunks) as chunks:
                    async for chunk in chunks:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away while we wrote
                pass
            finally:
                tg.cancel_scope.cancel()


class CollabServer:
    """The routes, around one engine (its local model loaded before the first request)."""

    def __init__(self, engine: Engine, *, limits: Limits = Limits()):
        self.engine = engine
        self.limits = limits
        self.model_id = engine.model_name  # loads the local model now, not in the first request
        self.template = engine.router.clone()  # never used itself: each request routes with a clone

    # -- generation ----------------------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        return await self._generate(request, CHAT)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, COMPLETION)

    async def _generate(self, request: Request, kind: str) -> Response:
        req = parse_request(await read_json(request, max_bytes=self.limits.max_body_bytes), kind=kind)
        limit = req.options.get("max_tokens", self.engine.config.max_tokens)
        if limit > self.limits.max_tokens:
            raise RequestError(f"max_tokens must be at most {self.limits.max_tokens}, not {limit}",
                               param="max_tokens", code="out_of_range")
        events = self.engine.astream(req.prompt, router=request_router(self.template, budget=req.budget),
                                     **req.options)
        reply = Reply.start(kind, self.model_id)
        if not req.stream:
            async with aclosing(events) as evs:
                collected = [ev async for ev in evs]
            return JSONResponse(reply.response(collected[:-1], collected[-1]))
        try:
            first = await anext(events)  # a bad prompt fails here, before any byte is sent: a clean 4xx
        except BaseException:
            await events.aclose()
            raise
        return EventStream(self._chunks(reply, req, first, events))

    async def _chunks(self, reply: Reply, req: ApiRequest, first, events: AsyncIterator) -> AsyncIterator[bytes]:
        """One chunk per token, the closing chunk, ``[DONE]``. A failure after the first byte can no longer
        change the status: it is sent as an ``error`` event (as OpenAI does) and the stream ends."""
        async with aclosing(events) as rest:
            ev, is_first = first, True
            try:
                while True:
                    if isinstance(ev, FinalEvent):
                        yield sse(reply.final_chunk(ev, with_usage=not req.include_usage, first=is_first))
                        if req.include_usage:
                            yield sse(reply.usage_chunk(ev.stats))
                        break
                    assert isinstance(ev, TokenEvent)
                    yield sse(reply.token_chunk(ev, first=is_first))
                    is_first = False
                    ev = await anext(rest)
            except Exception as exc:  # noqa: BLE001 - reported to the client, which can no longer get a status
                yield sse(error_response_body(exc))
        yield SSE_DONE

    # -- the rest ------------------------------------------------------------------------------------------------
    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.model_id, "object": "model", "created": 0, "owned_by": "collab-decoding"}]})

    async def config(self, request: Request) -> Response:
        eng = self.engine
        return JSONResponse({"model": self.model_id, "local_model": eng.local_model.name,
                             "cloud_model": eng.cloud.config.model if eng.cloud is not None else None,
                             "router": self.template.describe(), "budget": describe_budget(self.template),
                             "max_tokens": eng.config.max_tokens})

    async def page(self, request: Request) -> Response:
        return Response(assets.read("index.html"), media_type="text/html; charset=utf-8")

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in assets.PAGE_ASSETS:
            raise HTTPException(404, f"no asset {name!r}")
        return Response(assets.read(name), media_type=assets.media_type(name))


async def _collab_error(request: Request, exc: Exception) -> Response:
    return error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(error_body(str(exc.detail), code=str(exc.status_code)), status_code=exc.status_code,
                        headers=exc.headers)


def create_app(engine: Engine, *, limits: Limits = Limits()) -> Starlette:
    """The ASGI app serving ``engine`` (run it with uvicorn: ``serving.serve`` or ``BackgroundServer``)."""
    s = CollabServer(engine, limits=limits)
    routes = [
        Route("/", s.page, methods=["GET"]),
        Route("/assets/{name}", s.asset, methods=["GET"]),
        Route("/collab/config", s.config, methods=["GET"]),
        Route("/v1/models", s.models, methods=["GET"]),
        Route("/v1/chat/completions", s.chat, methods=["POST"]),
        Route("/v1/completions", s.completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={CollabError: _collab_error, HTTPException: _http_error,
                                                       Exception: _collab_error})
    app.state.collab = s
    return app
