"""Settings are declared once (``EngineSettings``, ``GenerationConfig``); the adapters and the CLI follow."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from collab_core import Engine
from collab_core.cli import build_parser
from collab_core.devtools.fakecloud import FakeCloud
from collab_core.errors import CollabError, ConfigError
from collab_core.integration import OwnedEngines
from collab_core.router import BudgetRouter
from collab_core.settings import EngineSettings, GenerateOptions, GenerationConfig
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


@pytest.mark.parametrize("command", ["run"])
def test_cli_flags_are_the_engine_settings(command):
    defaults = _cli_defaults(command)
    assert {n: defaults[n] for n in ENGINE_FIELDS} == ENGINE_FIELDS
    # every per-request option has its flag (--raw is chat=False, --deadline is deadline_s)
    flag = {"chat": "raw", "deadline_s": "deadline"}
    assert {flag.get(f.name, f.name) for f in dataclasses.fields(GenerationConfig)} <= set(defaults)


def test_cli_builds_the_engine_from_its_flags():
    from collab_core.cli import engine_from_args

    args = build_parser().parse_args(["run", "hi", "--budget", "0.1", "--pipeline", "sync", "--max-tokens", "7",
                                      "--stop", "X", "--raw"])
    eng = engine_from_args(args)
    assert isinstance(eng.router, BudgetRouter) and eng.router.budget == 0.1 and eng.pipeline == "sync"
    assert eng.config.max_tokens == 7 and tuple(eng.config.stop) == ("X",) and eng.config.chat is False
    assert eng.branches == 1 and engine_from_args(build_parser().parse_args(["run", "hi", "--branches", "3"])).branches == 3
    with pytest.raises(SystemExit):  # argparse refuses a pipeline it does not know
        build_parser().parse_args(["run", "hi", "--pipeline", "fast"])


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
