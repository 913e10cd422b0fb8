"""Settings are declared once (``EngineSettings``, ``GenerationConfig``); the adapters and the CLI follow."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest

from collab_core import Engine
from collab_core.cli import build_parser, engine_settings, generation_config, main
from collab_core.cloud.client import CloudConfig
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CollabError, ConfigError
from collab_core.integration import OwnedEngines
from collab_core.router import BudgetRouter, NeverRouter, ThresholdRouter, make_router
from collab_core.settings import GROUPS, EngineSettings, GenerateOptions, GenerationConfig
from langchain_collab import CollabLLM as LangChainLLM
from llamaindex_collab import CollabLLM as LlamaIndexLLM

ENGINE_FIELDS = {f.name: f.default for f in dataclasses.fields(EngineSettings)}


def _default(info):
    d = info.default
    return None if d is None else getattr(d, "get_secret_value", lambda: d)()


@pytest.mark.parametrize("adapter", [LangChainLLM, LlamaIndexLLM], ids=["langchain", "llamaindex"])
def test_adapters_expose_every_engine_setting_with_its_default(adapter):
    fields = adapter.model_fields
    missing = sorted(set(ENGINE_FIELDS) - set(fields))
    assert missing == [], f"{adapter.__module__}.CollabLLM lacks settings {missing}: add them (see EngineSettings)"
    assert {n: _default(fields[n]) for n in ENGINE_FIELDS} == ENGINE_FIELDS


def _cli_defaults(command: str) -> dict:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, type(parser._subparsers._group_actions[0])))
    return {a.dest: a.default for a in sub.choices[command]._actions}


@pytest.mark.parametrize("command", ["run", "serve"])
def test_cli_flags_are_the_engine_settings(command):
    defaults = _cli_defaults(command)
    assert {n: defaults[n] for n in ENGINE_FIELDS} == ENGINE_FIELDS


def test_cli_generation_flags_are_the_generation_config_with_its_defaults():
    defaults = _cli_defaults("run")
    options = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
    assert {n: defaults[n] for n in options} == {**options, "stop": list(options["stop"])}
    assert generation_config(build_parser().parse_args(["run", "hi"])) == GenerationConfig()
    assert _cli_defaults("serve")["max_tokens"] == GenerationConfig().max_tokens


def test_cli_builds_the_engine_from_its_flags():
    from collab_core.cli import engine_from_args

    args = build_parser().parse_args(["run", "hi", "--budget", "0.1", "--pipeline", "sync", "--max-tokens", "7",
                                      "--stop", "X", "--raw", "--deadline", "3"])
    eng = engine_from_args(args)
    assert isinstance(eng.router, BudgetRouter) and eng.router.budget == 0.1 and eng.pipeline == "sync"
    assert eng.config.max_tokens == 7 and tuple(eng.config.stop) == ("X",) and eng.config.chat is False
    assert eng.config.deadline_s == 3
    assert eng.branches == 1 and engine_from_args(build_parser().parse_args(["run", "hi", "--branches", "3"])).branches == 3
    with pytest.raises(SystemExit):  # argparse refuses a pipeline it does not know
        build_parser().parse_args(["run", "hi", "--pipeline", "fast"])


# -- one tree, every setting reached under its one name ----------------------------------------------------
#: a value away from its default for every setting (the LiteLLM deployments as the CLI takes them: a file)
OTHER = {"local_model": "some/model", "cloud_model": "text-completion-openai/fake",
         "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-test", "strategy": "completion", "span_tokens": 3,
         "spare_tokens": 2, "timeout": 7.0, "max_retries": 1, "cloud_vocab": "local", "deployments": "router.yaml",
         "max_spend_usd": 1.5, "redact": "default", "router": "threshold:0.3", "threshold": 0.4, "budget": 0.2,
         "pipeline": "sync", "max_batch": 3, "max_draft": 5, "branches": 2, "pace": False}


def test_the_settings_are_one_tree_of_four_groups():
    assert list(GROUPS) == ["local", "cloud", "routing", "engine"]
    assert EngineSettings.names() == list(ENGINE_FIELDS)  # the groups' fields, each once, and nothing else
    assert {"max_batch", "pace", "max_draft", "branches", "pipeline"} == set(EngineSettings.names("engine"))
    assert {"router", "threshold", "budget"} == set(EngineSettings.names("routing"))
    assert set(OTHER) == set(ENGINE_FIELDS) and all(OTHER[n] != d for n, d in ENGINE_FIELDS.items())
    s = EngineSettings(**OTHER)
    assert s.group("cloud").span_tokens == 3 and s.group("engine").max_batch == 3
    assert EngineSettings(**s.as_kwargs()) == s


def test_engine_takes_every_setting_by_its_name_with_its_default():
    params = inspect.signature(Engine).parameters
    missing = sorted(set(ENGINE_FIELDS) - set(params))
    assert missing == [], f"Engine lacks the settings {missing}"
    assert {n: params[n].default for n in ENGINE_FIELDS} == ENGINE_FIELDS
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ENGINE_FIELDS if n != "local_model")


def _other_with_a_router():
    """``OTHER`` with deployments an engine can be built on: a litellm.Router whose model group is the cloud."""
    import litellm

    router = litellm.Router(model_list=[{"model_name": "group", "litellm_params": {
        "model": "text-completion-openai/fake", "api_base": "http://127.0.0.1:9/v1", "api_key": "sk-test"}}])
    return {**OTHER, "cloud_model": "group", "deployments": router}


def test_from_settings_reaches_every_setting(tiny_dir):
    vals = {**_other_with_a_router(), "local_model": str(tiny_dir)}
    s = EngineSettings(**vals)
    eng = Engine.from_settings(s)
    assert eng.settings == s
    cfg = eng.cloud.config
    assert (cfg.model, cfg.api_base, cfg.api_key, cfg.strategy, cfg.span_tokens, cfg.spare_tokens, cfg.timeout_s,
            cfg.max_retries, cfg.vocab, cfg.deployments, cfg.redact) == tuple(vals[n] for n in (
                "cloud_model", "api_base", "api_key", "strategy", "span_tokens", "spare_tokens", "timeout",
                "max_retries", "cloud_vocab", "deployments", "redact"))
    assert eng.cloud.deployments is vals["deployments"] and eng.spend.limit_usd == 1.5
    assert eng.router.describe() == "threshold:0.3"  # the router spec wins over the threshold shortcut
    assert (eng.pipeline, eng.max_batch, eng.branches, eng.pacer) == ("sync", 3, 2, None)
    assert eng.max_draft == 0  # a sync pipeline never drafts
    assert Engine.from_settings(dataclasses.replace(s, pipeline="async")).max_draft == 5
    assert Engine.from_settings(dataclasses.replace(s, pipeline="async", pace=True)).pacer is not None


def test_the_cli_reaches_every_setting():
    argv = []
    for name, value in OTHER.items():
        flag = "--" + name.replace("_", "-")
        argv += ([f"--no-{name}"] if value is False else [flag, str(value)])
    for command in (["run", "hi"], ["serve"]):
        assert engine_settings(build_parser().parse_args([*command, *argv])) == EngineSettings(**OTHER)


@pytest.mark.parametrize("adapter", [LangChainLLM, LlamaIndexLLM], ids=["langchain", "llamaindex"])
def test_adapters_reach_every_setting(adapter, tiny_dir):
    vals = {**_other_with_a_router(), "local_model": str(tiny_dir)}
    llm = adapter(**vals)
    assert EngineSettings.from_object(llm) == EngineSettings(**vals)
    assert llm._engine().settings == EngineSettings(**vals)


def test_cloud_settings_are_flat_on_the_engine(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    eng = Engine(cloud="gpt-4o-mini", span_tokens=2)
    assert eng.cloud.model == "gpt-4o-mini" and eng.cloud.config.span_tokens == 2 and not eng.loaded
    assert Engine(cloud_model="gpt-4o-mini", timeout=3.0).cloud.config.timeout_s == 3.0
    # over a CloudConfig, the cloud settings given apply; those left at their defaults do not undo it
    eng = Engine(cloud=CloudConfig(model="gpt-4o-mini", span_tokens=3, max_retries=0), timeout=5.0)
    assert (eng.cloud.config.span_tokens, eng.cloud.config.max_retries, eng.cloud.config.timeout_s) == (3, 0, 5.0)
    with pytest.raises(ConfigError, match="disagree"):
        Engine(cloud="gpt-4o-mini", cloud_model="gpt-4o")
    with pytest.raises(ConfigError, match="span_tokens"):
        Engine(cloud="gpt-4o-mini", span_tokens=0)


def test_router_is_the_policy_and_deployments_the_litellm_router():
    router = _other_with_a_router()["deployments"]
    eng = Engine(cloud=router)  # a litellm.Router given as the cloud is the deployments setting
    assert eng.settings.deployments is router and eng.cloud.deployments is router and eng.cloud.model == "group"
    assert not hasattr(eng.cloud, "router") and "router" not in {f.name for f in dataclasses.fields(CloudConfig)}
    with pytest.warns(DeprecationWarning, match="deployments"):
        old = Engine(cloud_config=router)
    assert old.cloud.deployments is router


# -- a threshold or a budget outside [0, 1] ---------------------------------------------------------------
BAD_SHARES = [-1.0, -0.01, 1.01, 2, float("nan")]


@pytest.mark.parametrize("name", ["threshold", "budget"])
@pytest.mark.parametrize("value", BAD_SHARES)
def test_a_threshold_or_budget_outside_0_1_is_a_config_error_everywhere(name, value, capsys):
    with pytest.raises(ConfigError, match=name):
        EngineSettings(**{name: value})
    with pytest.raises(ConfigError, match=name):
        Engine(**{name: value})
    with pytest.raises(ConfigError, match=name):
        make_router(f"{name}:{value}")
    with pytest.raises(ConfigError, match=name):
        LangChainLLM(**{name: value})
    with pytest.raises(ConfigError, match=name):
        LlamaIndexLLM(**{name: value})
    with pytest.raises(ConfigError, match=name):
        (ThresholdRouter if name == "threshold" else BudgetRouter)(value)
    assert main(["run", "hi", f"--{name}", str(value)]) == 2
    assert f"{name} must be a number in [0, 1]" in capsys.readouterr().err


def test_the_ends_of_0_1_are_settings():
    assert Engine(threshold=0.0).router.threshold == 0.0 and Engine(threshold=1.0).router.threshold == 1.0
    assert Engine(budget=1.0).router.budget == 1.0
    assert isinstance(Engine(budget=0.0).router, NeverRouter) and isinstance(make_router("budget:0"), NeverRouter)
    assert LangChainLLM(threshold=1.0).threshold == 1.0


def test_generate_options_are_the_generation_config():
    assert set(typing.get_type_hints(GenerateOptions)) == {f.name for f in dataclasses.fields(GenerationConfig)}


def test_bad_settings_and_options_are_config_errors(tiny_lm):
    for bad in ({"pipeline": "fast"}, {"span_tokens": 0}, {"max_retries": -1}, {"timeout": 0}, {"branches": 0}):
        with pytest.raises(ConfigError):
            EngineSettings(**bad)
    eng = Engine(tiny_lm)
    with pytest.raises(ConfigError, match="unknown generation option"):
        eng.generate("hi", max_tokenz=3)
    with pytest.raises(ConfigError, match="max_tokens"):
        eng.generate("hi", max_tokens=-1)
    with pytest.raises(ValueError):  # a ConfigError is a ValueError too, and a CollabError
        Engine(tiny_lm, pipeline="fast")
    assert issubclass(ConfigError, CollabError)


def test_the_key_never_holds_the_secret():
    s = EngineSettings(cloud_model="gpt-4o-mini", api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(s) and "sk-secret-123" not in repr(s.key())
    assert s.key() != EngineSettings(cloud_model="gpt-4o-mini", api_key="sk-other").key()
    assert s.key() == EngineSettings(cloud_model="gpt-4o-mini", api_key="sk-secret-123").key()


def test_owned_engines_are_bounded_and_reused(tiny_dir):
    owned = OwnedEngines(size=2)
    a = owned.get(EngineSettings(local_model=str(tiny_dir), threshold=0.1))
    assert owned.get(EngineSettings(local_model=str(tiny_dir), threshold=0.1)) is a
    owned.get(EngineSettings(local_model=str(tiny_dir), threshold=0.2))
    owned.get(EngineSettings(local_model=str(tiny_dir), threshold=0.3))
    assert len(owned) == 2
    assert owned.get(EngineSettings(local_model=str(tiny_dir), threshold=0.1)) is not a  # evicted, rebuilt


def test_a_budget_is_per_engine(tiny_dir):
    """Requests on one engine share its budget (the router's running share spans them); two adapter instances
    never share one."""
    one, two = LangChainLLM(local_model=str(tiny_dir), budget=0.1), LangChainLLM(local_model=str(tiny_dir), budget=0.1)
    assert one._engine() is one._engine() and one._engine() is not two._engine()
    assert one._engine().router is not two._engine().router
    with FakeCloud(reply=" the sea") as fc:
        engine = Engine(str(tiny_dir), cloud="text-completion-openai/fake", api_base=fc.url, budget=0.3,
                        pipeline="sync")
        gens = [engine.generate(p, max_tokens=12) for p in ("Name a fruit.", "Name a colour.", "Count to five.")]
    router = engine.router
    assert router.total_tokens == sum(g.stats.total_tokens for g in gens) > 0
    assert router.cloud_tokens == sum(g.stats.cloud_tokens for g in gens)
    assert router.routed_share <= 0.3 + 4 / router.total_tokens  # at most one span over the budget
