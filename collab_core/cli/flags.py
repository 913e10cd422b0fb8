"""The flags the settings give: one per ``EngineSettings`` field, one per ``GenerationConfig`` option.

Names, defaults and help come from ``collab_core.settings``; nothing here repeats a default. An engine flag is
``--`` and the setting's name with dashes (``--cloud-model``, ``--max-batch``, ``--pace/--no-pace``); a
generation flag's ``dest`` is its option's name, so that ``generation_config(args)`` reads them all back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from ..settings import GROUPS, EngineSettings, GenerationConfig

_TYPES = {"float": float, "int": int}
_GROUP_TITLES = {"local": "local model", "cloud": "cloud", "routing": "routing", "engine": "engine"}
_ALIASES = {"deployments": ["--cloud-config"]}  # deprecated spellings, still read
_GEN = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}


def json_arg(value: str) -> Any:
    """A JSON flag's value: JSON, or ``@FILE``."""
    return json.loads(Path(value[1:]).read_text() if value.startswith("@") else value)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """One flag per ``EngineSettings`` field, in one argument group per settings group."""
    for group, cls in GROUPS.items():
        g = p.add_argument_group(_GROUP_TITLES[group])
        for f in dataclasses.fields(cls):
            kind = str(f.type).split(" ")[0]
            opts: dict[str, Any] = {"default": f.default, "help": f.metadata["help"]}
            if kind == "bool":
                opts["action"] = argparse.BooleanOptionalAction
            else:
                opts["type"] = _TYPES.get(kind, str)
            if "choices" in f.metadata:
                opts["choices"] = f.metadata["choices"]
            g.add_argument("--" + f.name.replace("_", "-"), *_ALIASES.get(f.name, []), dest=f.name, **opts)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """The engine's flags and one per ``GenerationConfig`` option (``--raw`` is ``chat=False``)."""
    add_engine_args(p)
    g = p.add_argument_group("generation")
    g.add_argument("--max-tokens", type=int, default=_GEN["max_tokens"], help="answer tokens at most "
                   "(default: %(default)s)")
    g.add_argument("--temperature", type=float, default=_GEN["temperature"], help="(default: %(default)s: greedy)")
    g.add_argument("--top-p", type=float, default=_GEN["top_p"], help="(default: %(default)s)")
    g.add_argument("--seed", type=int, default=_GEN["seed"])
    g.add_argument("--stop", action="append", default=list(_GEN["stop"]), help="stop sequence (repeatable)")
    g.add_argument("--system", default=_GEN["system"], help="system message")
    g.add_argument("--raw", dest="chat", action="store_const", const=False, default=_GEN["chat"],
                   help="do not apply the chat template")
    g.add_argument("--local-only", action="store_true", default=_GEN["local_only"], help="never call the cloud")
    g.add_argument("--max-cloud-calls", type=int, default=_GEN["max_cloud_calls"],
                   help="cloud calls per request, at most")
    g.add_argument("--deadline", dest="deadline_s", type=float, default=_GEN["deadline_s"],
                   help="seconds per request after which the cloud is not waited for")
    g.add_argument("--max-cloud-cost-usd", type=float, default=_GEN["max_cloud_cost_usd"],
                   help="per request: stop routing once the cloud cost this many USD (the answer finishes locally)")
    g.add_argument("--tools", type=json_arg, default=_GEN["tools"],
                   help="tools the model may call: a JSON list of function specs, or @FILE")
    g.add_argument("--tool-choice", default=_GEN["tool_choice"], help="auto | none | required | a tool's name")
    g.add_argument("--json-schema", type=json_arg, default=_GEN["json_schema"],
                   help="the answer is JSON following this schema (JSON, or @FILE; {} for any object)")


def add_max_tokens(p: argparse.ArgumentParser) -> None:
    """``--max-tokens`` alone (``collab serve``: the default of a request that does not say)."""
    p.add_argument("--max-tokens", type=int, default=_GEN["max_tokens"],
                   help="per request unless it says (default: %(default)s)")


def generation_config(args: argparse.Namespace) -> GenerationConfig:
    """The ``GenerationConfig`` of the generation flags in ``args`` (absent ones: the defaults)."""
    return GenerationConfig(**{name: getattr(args, name) for name in _GEN if hasattr(args, name)})


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    return EngineSettings(**{name: getattr(args, name) for name in EngineSettings.names()})


def engine_from_args(args: argparse.Namespace):
    from ..engine import Engine

    return Engine.from_settings(engine_settings(args), config=generation_config(args))
