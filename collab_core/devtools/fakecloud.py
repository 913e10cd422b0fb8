"""A fake OpenAI-compatible cloud on loopback, with injected latency and faults.

For tests and benchmarks: a real HTTP peer on 127.0.0.1 (so LiteLLM, httpx and the OpenAI SDK run for
real), answering ``/v1/completions`` and ``/v1/chat/completions``. What it answers is a function of the
request; every request is recorded (``requests``: path, parsed body, and the raw bytes that came over the
wire); faults are queued per call:

    with FakeCloud(reply=lambda body: " Paris", latency_s=0.15) as cloud:
        cloud.faults.extend(["429", "500", "timeout", "garbled", "empty", "cut"])
        engine = Engine(cloud="text-completion-openai/fake", api_base=cloud.url, ...)

``LocalReply`` makes it a cloud that agrees with the local model at a chosen share of routed positions (it runs
the local model itself): what the async pipeline's drafts are measured against (``benchmarks/routing_latency.py``).
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ..threads import ParkedThreads

_MLX_THREADS = ParkedThreads("collab-fake-cloud")


def _draw(data: bytes) -> float:
    """A number in [0, 1) that ``data`` decides: the same request draws the same every time."""
    return zlib.crc32(data) % 10_000 / 10_000


FAULTS = ("401", "429", "500", "503", "timeout", "garbled", "empty", "cut", "nochoices")


class FakeCloud:
    def __init__(self, reply: Callable[[dict], str] | str = " the", latency_s: float = 0.0,
                 finish_reason: str = "length", timeout_sleep_s: float = 5.0, port: int = 0, jitter_s: float = 0.0,
                 tokenizer=None, fault_of: Callable[[bytes], str | None] | None = None):
        self.port = port
        self.tokenizer = tokenizer  # given: a completion carries its token ids (as mlx_lm.server's logprobs do)
        self.reply = reply if callable(reply) else (lambda body, _r=reply: _r)
        self.latency_s = latency_s
        self.jitter_s = jitter_s  # latency spread: uniform in latency_s +- jitter_s, drawn from the request's bytes
        self.finish_reason = finish_reason
        self.timeout_sleep_s = timeout_sleep_s
        self.faults: deque[str] = deque()
        self.fault_of = fault_of  # a fault decided by the request's bytes (after the queued ones): the same every time
        self.requests: list[dict] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set = set()  # open connections (kill() cuts them, as a dead server would)
        self._conns_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeCloud:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY the second waits for the client's delayed
            # ACK of the first on a kept-alive connection (back-to-back calls took 198 ms against 156 for 150 ms)
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet
                pass

            def setup(self):
                super().setup()
                with owner._conns_lock:
                    owner._conns.add(self.connection)

            def finish(self):
                with owner._conns_lock:
                    owner._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:  # cut by kill()
                    pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw or b"{}")
                owner.requests.append({"path": self.path, "body": body, "raw": raw})  # raw: the bytes on the wire
                fault = owner.faults.popleft() if owner.faults else owner.fault_of(raw) if owner.fault_of else None
                t0 = time.perf_counter()
                text = None if fault else owner.reply(body)  # its time counts inside the latency
                if owner.latency_s:
                    time.sleep(max(0.0, owner.latency(raw) - (time.perf_counter() - t0)))
                if fault in ("401", "429", "500", "503"):
                    return self._send(int(fault), {"error": {"message": f"injected {fault}", "type": "fault"}})
                if fault == "timeout":
                    time.sleep(owner.timeout_sleep_s)
                    return self._send(503, {"error": {"message": "too late"}})
                if fault == "garbled":
                    return self._raw(200, b"{this is not json", "application/json")
                if fault == "cut":
                    payload = json.dumps(owner._response(self.path, body)).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return None
                if fault == "nochoices":
                    return self._send(200, {"id": "x", "object": "text_completion", "created": 0,
                                            "model": "fake", "choices": []})
                if fault == "empty":
                    text = ""
                return self._send(200, owner._response(self.path, body, text))

            def _send(self, code: int, obj: Any):
                self._raw(code, json.dumps(obj).encode(), "application/json")

            def _raw(self, code: int, payload: bytes, ctype: str):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def latency(self, raw: bytes) -> float:
        """This request's latency: ``latency_s``, spread by ``jitter_s`` as a hash of the request decides (the same
        request waits as long every time, so pipelines that send the same requests meet the same cloud)."""
        return max(0.0, self.latency_s + (2 * _draw(raw) - 1) * self.jitter_s)

    def _response(self, path: str, body: dict, text: str | None = None) -> dict:
        text = self.reply(body) if text is None else text
        usage = {"prompt_tokens": len(json.dumps(body)) // 4, "completion_tokens": max(1, len(text) // 4),
                 "total_tokens": 0}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        finish = self.finish_reason
        if path.endswith("/chat/completions"):
            return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "fake"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": finish}], "usage": usage}
        logprobs = None
        if self.tokenizer is not None:  # the reply's tokens, at most max_tokens of them
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))[:body.get("max_tokens") or None]
            text = self.tokenizer.decode(ids)
            logprobs = {"content": [{"id": i, "token": self.tokenizer.decode([i]), "logprob": 0.0} for i in ids]}
        return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}],
                "usage": usage}

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def kill(self) -> None:
        """Die as a crashed server does: stop listening and cut every open (kept-alive) connection."""
        import socket

        self.stop()
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def __enter__(self) -> FakeCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LocalReply:
    """A scripted cloud that is a stronger model only in how often it agrees with the local one.

    It runs the local model itself (in the fake cloud's process) on the request's prompt -- the rendered prompt
    and the answer so far -- and, at each routed position, sends the local model's own rank-``r`` candidate as
    its first token, greedy after it (``max_tokens`` tokens in all): rank 1 (the local model's pick) at about
    ``agree`` of the positions, rank 2, 3, ... at the further shares ``ranks`` gives, and ``other`` (a text no
    candidate starts) otherwise. A deterministic hash of the prompt decides, so every pipeline sees the same
    cloud. Agreement is per position, wherever the answer went before (a cloud that agreed only while the
    answer still matched one fixed reference would agree less and less after its first correction).
    Completions only (a chat request gets ``other``).
    """

    def __init__(self, local_model=None, *, agree: float = 0.6, ranks: tuple[float, ...] = (),
                 other: str = " and then"):
        if agree + sum(ranks) > 1.0 + 1e-9:
            raise ValueError("agree + ranks must not exceed 1")
        self.local_model = local_model
        self.shares = (agree, *ranks)
        self.other = other
        self._dec = None
        self._lock = threading.Lock()

    def rank(self, prompt: str) -> int | None:
        """The rank (0: the local model's pick) of the candidate this prompt gets; None: ``other``."""
        u = _draw(prompt.encode())
        acc = 0.0
        for r, share in enumerate(self.shares):
            acc += share
            if u < acc:
                return r
        return None

    def __call__(self, body: dict) -> str:
        prompt = body.get("prompt")
        r = self.rank(prompt) if isinstance(prompt, str) else None
        if r is None:
            return self.other
        n = max(1, int(body.get("max_tokens") or 2))
        with self._lock:  # MLX work on a parked thread: a request's own thread exits (see ``threads``)
            return _MLX_THREADS.submit(lambda: self._continue(prompt, r, n)).result()

    def _continue(self, prompt: str, r: int, n: int) -> str:
        import mlx.core as mx

        dec = self._decoder()
        tok = dec.lm.tokenizer
        step = dec.prefill(list(tok.encode(prompt)))  # the prefix shared with the last request is reused
        top = step.confidence.top_ids
        if r >= len(top):
            return self.other
        out = [top[r]]
        while len(out) < n:
            step = dec.step(out[-1])
            if step.token_id in dec.lm.eos_token_ids:
                break
            out.append(step.token_id)
        mx.eval([c.state for c in dec.cache])
        return tok.decode(out)

    def _decoder(self):
        if self._dec is None:
            from ..local.decoder import StepDecoder
            from ..local.loading import load_local_model

            lm = self.local_model if not isinstance(self.local_model, (str, type(None))) else \
                load_local_model(self.local_model)
            self._dec = StepDecoder(lm)
        return self._dec


class TableReply:
    """Replies looked up by the request's prompt (``{prompt: text}``, e.g. what a ``LocalReply`` answered in a dry
    run), so that a timed run computes nothing in the cloud's place; ``fallback`` answers any other request."""

    def __init__(self, table: dict[str, str], fallback: Callable[[dict], str] | str = " and then"):
        self.table = table
        self.fallback = fallback if callable(fallback) else (lambda body, _r=fallback: _r)
        self.misses = 0

    def __call__(self, body: dict) -> str:
        text = self.table.get(body.get("prompt"))
        if text is None:
            self.misses += 1
            return self.fallback(body)
        return text


class Recorder:
    """Wraps a reply function and keeps ``{prompt: text}`` of every completion it answered (for ``TableReply``)."""

    def __init__(self, reply: Callable[[dict], str]):
        self.reply = reply
        self.table: dict[str, str] = {}

    def __call__(self, body: dict) -> str:
        text = self.reply(body)
        if isinstance(body.get("prompt"), str):
            self.table[body["prompt"]] = text
        return text


def main(argv: list[str] | None = None) -> None:
    """Serve a FakeCloud in its own process: ``python -m collab_core.devtools.fakecloud --port P [--latency-ms L]
    [--jitter-ms J] [--local-model SPEC --agree A --ranks R2,R3,...] [--replies FILE]`` (prints its URL, serves until killed)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m collab_core.devtools.fakecloud")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0, help="latency uniform in latency +- jitter")
    ap.add_argument("--local-model", default=None, help="answer as LocalReply over this local model")
    ap.add_argument("--agree", type=float, default=0.6)
    ap.add_argument("--ranks", default="", help="shares of rank 2, 3, ... candidates (comma-separated)")
    ap.add_argument("--reply", default=" and then")
    ap.add_argument("--replies", default=None, help="JSON {prompt: text} answered first (TableReply)")
    args = ap.parse_args(argv)
    reply: Callable[[dict], str] | str = args.reply
    if args.local_model is not None:
        ranks = tuple(float(x) for x in args.ranks.split(",") if x)
        reply = LocalReply(args.local_model or None, agree=args.agree, ranks=ranks, other=args.reply)
    if args.replies:
        with open(args.replies) as f:
            reply = TableReply(json.load(f), fallback=reply)
    cloud = FakeCloud(reply=reply, latency_s=args.latency_ms / 1000, port=args.port,
                      jitter_s=args.jitter_ms / 1000).start()
    print(cloud.url, flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
