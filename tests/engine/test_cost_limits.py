"""Money limits: a per-request cost cap (``max_cloud_cost_usd``) and a per-engine spend limit (``max_spend_usd``).
When one is reached, routing stops, the answer finishes locally and the stats say why."""

from __future__ import annotations

import pytest

from collab_core import Engine
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import ConfigError
from collab_core.router import ScheduledRouter
from collab_core.settings import EngineSettings

PROMPT = "What is the capital of France?"
EVERY_OTHER = ScheduledRouter(range(0, 64, 2))
PRICES = {"input_cost_per_token": 1e-4, "output_cost_per_token": 2e-4}  # LiteLLM's custom pricing


@pytest.fixture()
def fake():
    with FakeCloud(reply=" the sea") as fc:
        yield fc


def _priced(fc: FakeCloud) -> CloudConfig:
    # a model name of its own: LiteLLM registers custom prices under it
    return CloudConfig(model="text-completion-openai/priced-fake", api_base=fc.url, extra=dict(PRICES))


def _span_cost(lm, fc) -> float:
    gen = Engine(lm, cloud=_priced(fc), router=ScheduledRouter([2]), pipeline="sync", cache=False).generate(
        PROMPT, max_tokens=8)
    assert gen.stats.cloud_calls == 1 and gen.stats.cost_usd > 0
    return gen.stats.cost_usd


@pytest.mark.parametrize("pipeline", ["sync", "async"])
def test_the_request_cost_cap_stops_routing(tiny_lm, fake, pipeline):
    cost = _span_cost(tiny_lm, fake)
    cap = 2.5 * cost  # the third span crosses it
    eng = Engine(tiny_lm, cloud=_priced(fake), router=EVERY_OTHER, pipeline=pipeline, cache=False)
    gen = eng.generate(PROMPT, max_tokens=40, max_cloud_cost_usd=cap)
    s = gen.stats
    assert s.total_tokens == 40  # the answer finished, locally
    assert 3 <= s.cloud_calls <= 4  # three spans reach the cap; async: one more may have been in flight
    assert s.cloud_disabled_reason.startswith("cost cap reached") and "max_cloud_cost_usd" in s.cloud_disabled_reason
    assert s.cost_usd >= cap
    last_cloud = max(i for i, e in enumerate(gen.events[:-1]) if e.source == "cloud")
    assert all(e.source == "local" for e in gen.events[last_cloud + 1:-1])
    # without the cap the same request keeps routing
    free = eng.generate(PROMPT, max_tokens=40)
    assert free.stats.cloud_calls > s.cloud_calls and free.stats.cloud_disabled_reason is None


def test_a_zero_cap_makes_no_call(tiny_lm, fake):
    gen = Engine(tiny_lm, cloud=_priced(fake), router=EVERY_OTHER, pipeline="sync").generate(
        PROMPT, max_tokens=10, max_cloud_cost_usd=0)
    assert gen.stats.cloud_calls == 0 and "cost cap" in gen.stats.cloud_disabled_reason and not fake.requests


def test_the_engine_spend_limit_holds_over_requests(tiny_lm, fake):
    cost = _span_cost(tiny_lm, fake)
    eng = Engine(tiny_lm, cloud=_priced(fake), router=EVERY_OTHER, pipeline="sync", cache=False,
                 max_spend_usd=5.5 * cost)
    gens = [eng.generate(PROMPT, max_tokens=6) for _ in range(6)]
    reasons = [g.stats.cloud_disabled_reason for g in gens]
    k = next(i for i, r in enumerate(reasons) if r is not None)  # the request during which the limit was reached
    assert k >= 1 and all(r is None for r in reasons[:k])  # the first requests routed freely
    assert all(r.startswith("engine spend limit reached") for r in reasons[k:])
    for g in gens[k + 1:]:  # once reached, no request routes again; every answer still completes
        assert g.stats.cloud_calls == 0 and g.stats.total_tokens == 6
    assert eng.spend.spent_usd == pytest.approx(sum(g.stats.cost_usd for g in gens))
    assert eng.spend.spent_usd >= eng.spend.limit_usd


def test_money_limits_are_settings_and_options(tiny_dir, fake):
    from collab_core.cli import build_parser, engine_from_args
    from langchain_collab import CollabLLM as LangChainLLM
    from llamaindex_collab import CollabLLM as LlamaIndexLLM

    assert Engine.from_settings(EngineSettings(cloud_model="text-completion-openai/x", api_base=fake.url,
                                               max_spend_usd=0.5)).spend.limit_usd == 0.5
    for adapter in (LangChainLLM, LlamaIndexLLM):
        llm = adapter(local_model=str(tiny_dir), cloud_model="text-completion-openai/x", api_base=fake.url,
                      max_spend_usd=0.25)
        assert llm._engine().spend.limit_usd == 0.25
    args = build_parser().parse_args(["run", "hi", "--max-spend-usd", "1.5", "--max-cloud-cost-usd", "0.01",
                                      "--cloud-model", "text-completion-openai/x", "--api-base", fake.url])
    eng = engine_from_args(args)
    assert eng.spend.limit_usd == 1.5 and eng.config.max_cloud_cost_usd == 0.01
    with pytest.raises(ConfigError):
        EngineSettings(max_spend_usd=-1)
    with pytest.raises(ConfigError):
        Engine(str(tiny_dir)).generate("hi", max_cloud_cost_usd=-0.1)
