"""A LiteLLM Router as the cloud: an object or a router config file, in the Engine, both adapters and the CLI;
load balancing, fallbacks and cooldowns are LiteLLM's, and our retries do not multiply its own."""

from __future__ import annotations

import json

import litellm
import pytest
import yaml
from fleet import GROUP, Fleet

from collab_core import Engine
from collab_core.cloud.client import CHAT_PROTOCOL, CloudClient, CloudConfig
from collab_core.cloud.deployments import load_router
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CloudConfigError
from collab_core.router import ScheduledRouter

PROMPT = "What is the capital of France?"
EVERY_OTHER = ScheduledRouter(range(0, 64, 2))


@pytest.fixture()
def fleet():
    f = Fleet()
    yield f
    f.stop()


def _router(fleet: Fleet, **settings) -> litellm.Router:
    return litellm.Router(model_list=fleet.deployments(), **settings)


def test_a_router_object_is_the_cloud_and_spreads_the_spans(tiny_lm, fleet):
    eng = Engine(tiny_lm, cloud=_router(fleet), router=EVERY_OTHER, pipeline="sync", cache=False)
    assert eng.cloud.model == GROUP and eng.cloud.strategy == "completion" and eng.cloud.litellm_retries
    gen = eng.generate(PROMPT, max_tokens=40)
    s = gen.stats
    assert s.cloud_calls >= 12 and s.cloud_failures == 0 and s.cloud_tokens > 0
    assert sum(s.cloud_deployments.values()) == s.cloud_calls  # every span says where it came from
    assert set(s.cloud_deployments) == set(fleet.urls)  # both deployments served spans (simple shuffle)
    assert len(fleet.a.requests) + len(fleet.b.requests) == s.cloud_calls
    assert eng.model_name.endswith("+" + GROUP)


def test_kill_one_deployment_mid_run(tiny_lm, fleet):
    """The second server dies mid-answer: LiteLLM retries on the survivor and cools the dead one down; every
    answer completes, spans keep coming (from the survivor), and the failure shows in the stats."""
    router = _router(fleet, num_retries=2, allowed_fails=0, cooldown_time=60)
    eng = Engine(tiny_lm, cloud=router, router=EVERY_OTHER, pipeline="sync", cache=False)
    fleet.kill_after(6)
    gens = [eng.generate(PROMPT, max_tokens=40) for _ in range(3)]
    assert fleet.killed.is_set()
    for g in gens:
        assert g.stats.total_tokens == 40  # complete
        assert g.stats.cloud_failures == 0 and g.stats.cloud_tokens > 0  # no span was lost
    assert sum(g.stats.cloud_rerouted for g in gens) >= 1  # LiteLLM absorbed the dead server's failure
    for g in gens[1:]:  # after the kill: only the survivor
        assert set(g.stats.cloud_deployments) == {fleet.a.url}
    assert gens[0].stats.cloud_calls == sum(gens[0].stats.cloud_deployments.values())


def test_our_retries_do_not_multiply_the_routers(tiny_lm):
    """A Router retries (num_retries=2: three tries of one span); our own max_retries does not apply on top: one
    span that fails everywhere costs three requests, not 3 x (max_retries + 1), and counts once towards our
    breaker."""
    with FakeCloud() as one, FakeCloud() as two:
        one.faults.extend(["500"] * 20)
        two.faults.extend(["500"] * 20)
        router = litellm.Router(model_list=[
            {"model_name": GROUP, "litellm_params": {"model": "text-completion-openai/fake", "api_base": fc.url,
                                                     "api_key": "sk-fake"}} for fc in (one, two)],
            num_retries=2, allowed_fails=1000, retry_after=0)
        cfg = CloudConfig(model=GROUP, deployments=router, max_retries=5)
        eng = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([3]), pipeline="sync", cache=False)
        gen = eng.generate(PROMPT, max_tokens=12)
        assert len(one.requests) + len(two.requests) == 3
        assert gen.stats.cloud_calls == 1 and gen.stats.cloud_failures == 1 and len(gen.stats.cloud_errors) == 1
        assert gen.stats.total_tokens == 12 and gen.stats.cloud_tokens == 0  # finished locally
        # three failed spans in a row: our breaker switches the cloud off; LiteLLM made its tries for each
        eng.router = ScheduledRouter([2, 4, 6, 8, 10])
        gen = eng.generate(PROMPT, max_tokens=12)
        assert gen.stats.cloud_calls == 3 and gen.stats.cloud_disabled_reason == "3 failures in a row"
        assert len(one.requests) + len(two.requests) == 3 + 3 * 3


def test_without_a_router_our_retries_apply(tiny_lm):
    with FakeCloud() as fc:
        fc.faults.extend(["500"] * 10)
        cfg = CloudConfig(model="text-completion-openai/fake", api_base=fc.url, max_retries=2)
        gen = Engine(tiny_lm, cloud=cfg, router=ScheduledRouter([3]), pipeline="sync").generate(PROMPT, max_tokens=8)
        assert len(fc.requests) == 3 and gen.stats.cloud_failures == 1


def test_fallbacks_across_model_groups(tiny_lm, fleet):
    """The primary group's only deployment is down: the Router falls back to another group."""
    with FakeCloud() as dead:
        dead_url = dead.url
    router = litellm.Router(model_list=[
        {"model_name": "primary", "litellm_params": {"model": "text-completion-openai/fake", "api_base": dead_url,
                                                     "api_key": "sk-fake"}},
        *[{**d, "model_name": "backup"} for d in fleet.deployments()]],
        fallbacks=[{"primary": ["backup"]}], num_retries=0)
    eng = Engine(tiny_lm, cloud=CloudConfig(model="primary", deployments=router), router=ScheduledRouter([2, 6]),
                 pipeline="sync", cache=False)
    gen = eng.generate(PROMPT, max_tokens=12)
    assert gen.stats.cloud_calls == 2 and gen.stats.cloud_failures == 0 and gen.stats.cloud_tokens > 0
    assert gen.stats.cloud_rerouted >= 2 and set(gen.stats.cloud_deployments) <= set(fleet.urls)


def _config_file(tmp_path, fleet, monkeypatch) -> str:
    monkeypatch.setenv("FAKE_CLOUD_KEY", "sk-from-the-environment")
    models = fleet.deployments()
    for d in models:
        d["litellm_params"]["api_key"] = "os.environ/FAKE_CLOUD_KEY"
    path = tmp_path / "router.yaml"
    path.write_text(yaml.safe_dump({"model_list": models,
                                    "router_settings": {"num_retries": 2, "allowed_fails": 0, "cooldown_time": 60},
                                    "litellm_settings": {"drop_params": True}}))
    return str(path)


def test_a_router_config_file(tmp_path, fleet, monkeypatch):
    router = load_router(_config_file(tmp_path, fleet, monkeypatch))
    assert router.num_retries == 2 and router.cooldown_time == 60
    assert {d["litellm_params"]["api_key"] for d in router.model_list} == {"sk-from-the-environment"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("router_settings: {num_retries: 1}\n")
    with pytest.raises(CloudConfigError, match="no model_list"):
        load_router(bad)
    with pytest.raises(CloudConfigError, match="no model group 'nope'"):
        CloudClient(CloudConfig(model="nope", deployments=router))


def test_the_cli_takes_a_router_config(tmp_path, tiny_dir, fleet, monkeypatch, capsys):
    from collab_core.cli import main

    path = _config_file(tmp_path, fleet, monkeypatch)
    code = main(["run", PROMPT, "--local-model", str(tiny_dir), "--deployments", path, "--threshold", "0",
                 "--pipeline", "sync", "--max-tokens", "10", "--json"])
    assert code == 0
    stats = json.loads(capsys.readouterr().out)["stats"]
    assert stats["cloud_calls"] > 0 and stats["cloud_failures"] == 0
    assert set(stats["cloud_deployments"]) <= set(fleet.urls) and sum(stats["cloud_deployments"].values()) > 0
    assert all(r["body"]["model"] == "fake" for r in fleet.a.requests + fleet.b.requests)


def test_both_adapters_take_a_router(tmp_path, tiny_dir, fleet, monkeypatch):
    from langchain_collab import CollabLLM as LangChainLLM
    from llamaindex_collab import CollabLLM as LlamaIndexLLM

    lc = LangChainLLM(local_model=str(tiny_dir), deployments=_router(fleet), router=ScheduledRouter([1, 3]),
                      pipeline="sync", max_tokens=8)
    meta = lc.invoke(PROMPT).response_metadata["collab"]
    assert meta["cloud_calls"] == 2 and sum(meta["cloud_deployments"].values()) == 2
    li = LlamaIndexLLM(local_model=str(tiny_dir), deployments=_config_file(tmp_path, fleet, monkeypatch),
                       router=ScheduledRouter([1, 3]), pipeline="sync", max_tokens=8)
    raw = li.complete(PROMPT).raw["collab"]
    assert raw["cloud_calls"] == 2 and sum(raw["cloud_deployments"].values()) == 2


def test_mixed_deployments_get_a_strategy_they_all_take(fleet):
    router = litellm.Router(model_list=[
        fleet.deployments()[0], {**fleet.deployments("openai/fake")[1]}])
    assert CloudClient(CloudConfig(model=GROUP, deployments=router)).strategy == CHAT_PROTOCOL
    assert CloudClient(CloudConfig(model=GROUP, deployments=_router(fleet))).strategy == "completion"
    assert CloudClient(CloudConfig(model=GROUP, deployments=router, strategy="anchor")).strategy == "anchor"
