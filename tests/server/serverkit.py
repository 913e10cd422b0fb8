"""Shared by the server's tests: the engine they serve (the tiny model, routed to a fake cloud on loopback)."""

from __future__ import annotations

from collab_core import Engine
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.router import ScheduledRouter

CLOUD_MODEL = "text-completion-openai/fake"
ROUTED_AT = (2, 6, 10, 14, 18, 22, 26, 30)  # answer positions the template router sends to the cloud


def cloud_reply(body: dict) -> str:
    """A reply that depends on the request, so an answer spliced with another request's span would show."""
    prompt = body.get("prompt", "")
    return " Paris is" if "France" in prompt else " Rome was" if "Italy" in prompt else " and then"


def make_engine(lm, cloud: FakeCloud, *, cache: bool = True, routed_at=ROUTED_AT) -> Engine:
    """``pipeline="sync"``: which positions are routed must not depend on when a span comes back."""
    return Engine(lm, cloud=CLOUD_MODEL, api_base=cloud.url, router=ScheduledRouter(routed_at),
                  pipeline="sync", cache=cache)
