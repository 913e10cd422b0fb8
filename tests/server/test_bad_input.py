"""Bad input gets a clear 4xx before any work starts, a client that leaves mid-stream stops its generation, and
either way the server goes on serving: the next answer is the one a fresh server gives."""

from __future__ import annotations

import json

import httpx
import pytest
from serverkit import make_engine

from collab_core.devtools.fakecloud import FakeCloud

CHAT = "/v1/chat/completions"
FRANCE = {"model": "collab", "messages": [{"role": "user", "content": "What is the capital of France?"}],
          "max_tokens": 16}


@pytest.fixture()
def fresh_answer(tiny_lm, fake, serve_engine) -> dict:
    """FRANCE answered by a server that has served nothing else."""
    r = httpx.post(serve_engine(make_engine(tiny_lm, fake)) + CHAT, json=FRANCE, timeout=60)
    return _answer(r.json())


def _answer(got: dict) -> dict:
    return {"text": got["choices"][0]["message"]["content"],
            "tokens": [(t["token"], t["source"]) for t in got["collab"]["tokens"]], "usage": got["usage"]}


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"
    return err


def _post(url, content: bytes, ctype="application/json", path=CHAT) -> httpx.Response:
    return httpx.post(url + path, content=content, headers={"content-type": ctype}, timeout=60)


@pytest.mark.parametrize("path", [CHAT, "/v1/completions"])
def test_each_bad_request_is_a_clear_4xx_and_the_server_goes_on(url, fresh_answer, path):
    assert "not valid JSON" in _error(_post(url, b'{"messages": [', path=path), 400)["message"]
    assert _error(_post(url, b'{"prompt": "x", "messages": [], "frobnicate": 1}', path=path),
                  400)["param"] == "frobnicate"
    assert _error(_post(url, json.dumps(FRANCE).encode(), ctype="text/plain", path=path), 415)["code"] == \
        "unsupported_media_type"
    assert _error(_post(url, b"", ctype="", path=path), 415)
    assert "larger than 1048576 bytes" in _error(_post(url, b" " * (1 << 20) + b"{}", path=path), 413)["message"]
    assert _error(_post(url, b"[1, 2]", path=path), 400)
    assert _answer(httpx.post(url + CHAT, json=FRANCE, timeout=60).json()) == fresh_answer


def test_an_oversized_body_is_413_whether_declared_or_streamed(tiny_lm, fake, serve_engine, fresh_answer):
    url = serve_engine(make_engine(tiny_lm, fake), max_body_bytes=2048)
    big = json.dumps({**FRANCE, "messages": [{"role": "user", "content": "x" * 4096}]}).encode()
    assert _error(_post(url, big), 413)["code"] == "body_too_large"

    def chunked():  # no Content-Length: the size is checked while reading
        for i in range(0, len(big), 512):
            yield big[i:i + 512]

    r = httpx.post(url + CHAT, content=chunked(), headers={"content-type": "application/json"}, timeout=60)
    assert _error(r, 413)["code"] == "body_too_large"
    assert _answer(httpx.post(url + CHAT, json=FRANCE, timeout=60).json()) == fresh_answer


@pytest.mark.parametrize("stream", [False, True])
def test_prompts_the_engine_refuses_are_400s_streamed_or_not(url, stream):
    empty = {**FRANCE, "stream": stream, "messages": [{"role": "user", "content": "   "}]}
    assert _error(httpx.post(url + CHAT, json=empty), 400)["code"] == "EmptyPromptError"
    image = {**FRANCE, "stream": stream, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
    assert _error(httpx.post(url + CHAT, json=image), 400)["code"] == "UnsupportedInputError"
    long = {**FRANCE, "stream": stream, "messages": [{"role": "user", "content": "Paris " * 400}]}
    assert _error(httpx.post(url + CHAT, json=long), 400)["code"] == "ContextOverflowError"
    assert _error(httpx.post(url + CHAT, json={**FRANCE, "max_tokens": 10 ** 6}), 400)["param"] == "max_tokens"


def test_unknown_paths_and_methods_answer_in_json(url):
    assert httpx.get(url + "/v1/nothing").status_code == 404
    r = httpx.get(url + CHAT)
    assert r.status_code == 405 and r.json()["error"]["message"]


def test_a_client_leaving_mid_stream_stops_its_generation(tiny_lm, serve_engine):
    """The span cache is off, so every cloud call shows: the abandoned answer makes few of the calls a whole
    one makes, and the next request on the same server gets what a fresh server gives."""
    positions = range(2, 200, 4)
    with FakeCloud(reply=" and then", latency_s=0.05) as cloud:
        def engine():
            return make_engine(tiny_lm, cloud, cache=False, routed_at=positions)

        gone = {**FRANCE, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 200}
        full = httpx.post(serve_engine(engine()) + CHAT, json=gone, timeout=120).json()
        whole_calls = full["collab"]["stats"]["cloud_calls"]
        assert whole_calls >= 40
        cloud.requests.clear()
        fresh = _answer(httpx.post(serve_engine(engine()) + CHAT, json=FRANCE, timeout=60).json())

        url = serve_engine(engine())
        with httpx.stream("POST", url + CHAT, json={**gone, "stream": True}, timeout=60) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: {")  # one token arrived; now hang up
        after = _answer(httpx.post(url + CHAT, json=FRANCE, timeout=60).json())
        abandoned = [q for q in cloud.requests if "long story" in q["body"].get("prompt", "")]
    assert after == fresh
    assert len(abandoned) < whole_calls / 4


def test_a_failure_mid_stream_is_an_error_event_and_the_server_goes_on(tiny_lm, fake, serve_engine):
    """The status is sent with the first token; what fails later reaches the client as an ``error`` event."""
    from collab_core.router import Router

    class Breaks(Router):  # scores fine for two positions, then fails
        def score(self, sig):
            if sig.position >= 2:
                raise RuntimeError("the router broke")
            return 0.0

        def clone(self):
            return Breaks()

    engine = make_engine(tiny_lm, fake)
    engine.router = Breaks()
    url = serve_engine(engine)
    lines = []
    with httpx.stream("POST", url + CHAT, json={**FRANCE, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["type"] == "server_error" and "the router broke" in error["message"]
    assert [json.loads(line[6:])["collab"]["tokens"][0]["source"] for line in lines[:-2]] == ["local", "local"]
    r = httpx.post(url + CHAT, json=FRANCE, timeout=60)
    assert r.status_code == 500 and "the router broke" in r.json()["error"]["message"]
    unrouted = httpx.post(url + CHAT, json={**FRANCE, "collab": {"budget": 0}}, timeout=60)  # no router call
    assert unrouted.status_code == 200 and unrouted.json()["usage"]["completion_tokens"] == 16
