"""A real LiteLLM proxy process (``litellm --config``) in front of two OpenAI-compatible servers is the cloud,
through ``litellm_proxy/<group>`` and its ``api_base``. The proxy starts once for this module (~15 s)."""

from __future__ import annotations

import time

import pytest
from fleet import GROUP, Fleet

from collab_core import Engine
from collab_core.cloud.client import CHAT_PROTOCOL, CloudConfig
from collab_core.devtools.proxy import LiteLLMProxy
from collab_core.router import ScheduledRouter

PROMPT = "What is the capital of France?"
EVERY_OTHER = ScheduledRouter(range(0, 64, 2))
NUM_RETRIES = 2
COOLDOWN_S = 1


@pytest.fixture(scope="module")
def fleet():
    f = Fleet()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def proxy(fleet):
    chat = [{**d, "model_name": "chat"} for d in fleet.deployments("openai/fake")]  # chat deployments
    config = {"model_list": fleet.deployments() + chat,
              "router_settings": {"num_retries": NUM_RETRIES, "allowed_fails": 0, "cooldown_time": COOLDOWN_S,
                                  "retry_after": 0}}
    with LiteLLMProxy(config) as p:
        yield p


def _engine(lm, proxy, group=GROUP, **kw) -> Engine:
    cfg = CloudConfig(model=f"litellm_proxy/{group}", api_base=proxy.api_base, api_key=proxy.master_key, **kw)
    return Engine(lm, cloud=cfg, router=EVERY_OTHER, pipeline="sync", cache=False)


@pytest.mark.parametrize("strategy", ["completion", "auto"])
def test_the_proxy_is_the_cloud(tiny_lm, fleet, proxy, strategy):
    na, nb = len(fleet.a.requests), len(fleet.b.requests)
    eng = _engine(tiny_lm, proxy, GROUP if strategy == "completion" else "chat", strategy=strategy)
    assert eng.cloud.litellm_retries  # the proxy retries: one attempt per span on our side
    assert eng.cloud.strategy == ("completion" if strategy == "completion" else CHAT_PROTOCOL)
    gen = eng.generate(PROMPT, max_tokens=30)
    s = gen.stats
    assert s.cloud_calls >= 8 and s.cloud_failures == 0 and s.cloud_tokens > 0
    # the proxy says which server answered each span: both took some (simple shuffle)
    assert set(s.cloud_deployments) == set(fleet.urls) and sum(s.cloud_deployments.values()) == s.cloud_calls
    reqs = fleet.a.requests[na:] + fleet.b.requests[nb:]
    assert len(reqs) == s.cloud_calls
    path = "/v1/completions" if strategy == "completion" else "/v1/chat/completions"
    assert {r["path"] for r in reqs} == {path}


def test_our_retries_do_not_multiply_the_proxys(tiny_lm, fleet, proxy):
    """Every server fails: the proxy tries a span at most 1 + num_retries times, and we do not retry on top
    (max_retries=5 would otherwise make it up to six proxy calls)."""
    before = len(fleet.a.requests) + len(fleet.b.requests)
    fleet.a.faults.extend(["500"] * 10)
    fleet.b.faults.extend(["500"] * 10)
    try:
        eng = Engine(tiny_lm, cloud=CloudConfig(model=f"litellm_proxy/{GROUP}", api_base=proxy.api_base,
                                                api_key=proxy.master_key, max_retries=5),
                     router=ScheduledRouter([3]), pipeline="sync", cache=False)
        gen = eng.generate(PROMPT, max_tokens=10)
    finally:
        fleet.a.faults.clear()
        fleet.b.faults.clear()
    assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 1
    assert gen.stats.total_tokens == 10 and gen.stats.cloud_tokens == 0  # finished locally
    assert 1 <= len(fleet.a.requests) + len(fleet.b.requests) - before <= 1 + NUM_RETRIES
    time.sleep(COOLDOWN_S + 0.5)  # let the proxy's cooldown of both servers pass before the next test


def test_kill_one_server_behind_the_proxy_mid_run(tiny_lm, fleet, proxy):
    """Runs last: the second server dies mid-answer and stays dead."""
    eng = _engine(tiny_lm, proxy, strategy="completion")
    fleet.kill_after(len(fleet.a.requests) + len(fleet.b.requests) + 5)
    gens = [eng.generate(PROMPT, max_tokens=40) for _ in range(3)]
    assert fleet.killed.is_set()
    for g in gens:
        assert g.stats.total_tokens == 40 and g.stats.cloud_failures == 0 and g.stats.cloud_tokens > 0
    assert sum(g.stats.cloud_rerouted for g in gens) >= 1  # the proxy absorbed the dead server's failures
    for g in gens[1:]:
        assert set(g.stats.cloud_deployments) == {fleet.a.url}  # spans come from the survivor
