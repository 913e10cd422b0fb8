"""A real server on loopback (uvicorn on a thread) around the tiny model, routed to a fake cloud on loopback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.server.app import Limits, create_app
from collab_core.server.serving import BackgroundServer

sys.path.insert(0, str(Path(__file__).parent))
from serverkit import cloud_reply, make_engine  # noqa: E402


@pytest.fixture()
def fake():
    with FakeCloud(reply=cloud_reply) as fc:
        yield fc


@pytest.fixture()
def serve_engine():
    """``serve_engine(engine, **limits)`` -> the base URL of a server for it (stopped after the test)."""
    servers = []

    def start(engine: Engine, **limits) -> str:
        server = BackgroundServer(create_app(engine, limits=Limits(**limits))).__enter__()
        servers.append(server)
        return server.url

    yield start
    for s in servers:
        s.__exit__(None, None, None)


@pytest.fixture()
def url(tiny_lm, fake, serve_engine) -> str:
    return serve_engine(make_engine(tiny_lm, fake))
