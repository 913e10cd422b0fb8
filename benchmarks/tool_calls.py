"""Tool calling: local only, routed at a 7% budget, and the cloud alone, on the same tasks.

    python benchmarks/tool_calls.py --cloud-model M [--api-base URL] [--local-model SPEC] [--budget 0.07]
                                    [--modes local,routed,cloud] [--limit N] [--tool-choice required|auto]
                                    [--data benchmarks/data/tool_tasks.jsonl] [--out DIR]  (resumable)

Tasks (``benchmarks/data/tool_tasks.jsonl``): the first line is ``{"tools": [...]}`` (six function specs), each
further line ``{"id", "prompt", "expected": {"name", "arguments"}}`` -- pick the right tool, fill the right
arguments (some need a fact: "the capital of France" -> ``Paris``).

Modes, all with the same tools and prompt (the local model's own tool format, or the generic fallback):

* ``local``: the local model alone, calls enforced by the grammar (``tool_choice``, default ``required``);
* ``routed``: the same, with a ``budget:B`` router (default 7%) sending uncertain tokens to the cloud; each
  span checked against the grammar;
* ``cloud``: the cloud model alone, asked through LiteLLM with the same conversation in the generic text format
  (``collab_core.prompts.cloud_prompt``), unconstrained; its reply parsed the same way.

Per mode: ``valid_call_rate`` (a call to a known tool whose arguments validate against its schema), ``tool_accuracy``
(the expected tool), ``argument_accuracy`` (the expected tool with every argument right: strings compared
case-insensitively after trimming, numbers by value) and, routed, the cloud's share of tokens. Writes
``OUT/rows.jsonl`` and ``OUT/summary.json``; the last line is ``name=value`` headline figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx on Linux)
from collab_core import Engine, load_local_model
from collab_core.errors import CollabError
from collab_core.prompts import cloud_prompt, render_prompt
from collab_core.tools import GENERIC, normalize_tools, parse_tool_calls

DATA = Path(__file__).parent / "data" / "tool_tasks.jsonl"
MODES = ("local", "routed", "cloud")


def load_tasks(path: Path) -> tuple[list[dict], list[dict]]:
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return normalize_tools(lines[0]["tools"]), lines[1:]


def _same(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.strip().lower()
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def score(call: dict | None, expected: dict, tools: list[dict]) -> dict:
    """valid / right tool / right arguments for one call (``{"name", "arguments"}``, or None: no call)."""
    import jsonschema

    if call is None:
        return {"valid": False, "tool": False, "args": False}
    spec = next((t["function"] for t in tools if t["function"]["name"] == call["name"]), None)
    valid = spec is not None
    if valid:
        try:
            jsonschema.validate(call["arguments"], spec["parameters"])
        except jsonschema.ValidationError:
            valid = False
    right_tool = call["name"] == expected["name"]
    exp = expected["arguments"]
    args = right_tool and set(call["arguments"]) == set(exp) and all(_same(call["arguments"][k], v)
                                                                     for k, v in exp.items())
    return {"valid": valid, "tool": right_tool, "args": bool(args)}


def run_engine(engine: Engine, task: dict, tools: list[dict], choice: str, max_tokens: int) -> tuple[dict | None, dict]:
    try:
        g = engine.generate(task["prompt"], tools=tools, tool_choice=choice, max_tokens=max_tokens)
    except CollabError as exc:  # e.g. the token limit before the call was complete
        return None, {"error": f"{type(exc).__name__}: {exc}"}
    call = g.tool_calls[0] if g.tool_calls else None
    info = {"text": g.text, "cloud_tokens": g.stats.cloud_tokens, "total_tokens": g.stats.total_tokens,
            "cloud_calls": g.stats.cloud_calls}
    return ({"name": call.name, "arguments": call.arguments} if call else None), info


def run_cloud(model: str, api_base: str | None, task: dict, tools: list[dict], lm, max_tokens: int,
              api_key: str | None = None):
    """The cloud alone: the conversation in the generic format; text completion gets the local rendering."""
    import litellm

    messages = cloud_prompt(task["prompt"], tools=tools)
    kw = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "num_retries": 3, "timeout": 600}
    if api_base:
        kw["api_base"] = api_base
        if api_key is None and api_base.startswith(("http://127.0.0.1", "http://localhost")):
            api_key = os.environ.get("OPENAI_API_KEY") or "sk-loopback-no-key"  # the SDK insists on one
    if api_key:
        kw["api_key"] = api_key
    if model.startswith("text-completion-"):
        prompt, _ = render_prompt(lm, messages)
        text = litellm.text_completion(prompt=prompt, **kw).choices[0].text
    else:
        text = litellm.completion(messages=messages, **kw).choices[0].message.content or ""
    _, calls, _ = parse_tool_calls(text, GENERIC, tools)
    call = calls[0] if calls else None
    return ({"name": call.name, "arguments": call.arguments} if call else None), {"text": text}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--cloud-model", default=None)
    ap.add_argument("--api-base", default=None)
    ap.add_argument("--api-key", default=None, help="default: the provider's usual variable")
    ap.add_argument("--budget", type=float, default=0.07)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--tool-choice", default="required")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "tool_calls")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"modes are {MODES}")
    if {"routed", "cloud"} & set(modes) and not args.cloud_model:
        ap.error("--cloud-model is needed for the routed and cloud modes")

    tools, tasks = load_tasks(args.data)
    tasks = tasks[: args.limit] if args.limit else tasks
    lm = load_local_model(args.local_model)
    engines = {}
    if "local" in modes:
        engines["local"] = Engine(lm)
    if "routed" in modes:
        engines["routed"] = Engine(lm, cloud=args.cloud_model, api_base=args.api_base, api_key=args.api_key,
                                   budget=args.budget, pipeline="sync")
    args.out.mkdir(parents=True, exist_ok=True)
    # resumable: rows already written for this model and these settings are kept, the rest are run and appended
    key = {"model": lm.name, "cloud_model": args.cloud_model, "budget": args.budget, "tool_choice": args.tool_choice,
           "max_tokens": args.max_tokens}
    done = {}
    if (args.out / "rows.jsonl").exists():
        for line in (args.out / "rows.jsonl").read_text().splitlines():
            r = json.loads(line)
            if all(r.get(k) == v for k, v in key.items()):
                done[(r["id"], r["mode"])] = r
    rows = []
    with open(args.out / "rows.jsonl", "a") as f:
        for task in tasks:
            for mode in modes:
                if (task["id"], mode) in done:
                    rows.append(done[(task["id"], mode)])
                    continue
                t = time.perf_counter()
                if mode == "cloud":
                    try:
                        call, info = run_cloud(args.cloud_model, args.api_base, task, tools, lm, args.max_tokens,
                                               args.api_key)
                    except Exception as exc:  # noqa: BLE001 - the cloud is down: no row, a rerun asks again
                        print(f"{task['id']} cloud: no answer ({type(exc).__name__}); rerun to fill it in",
                              file=sys.stderr)
                        continue
                else:
                    call, info = run_engine(engines[mode], task, tools, args.tool_choice, args.max_tokens)
                row = {**key, "id": task["id"], "mode": mode, "call": call, "expected": task["expected"],
                       **score(call, task["expected"], tools), "seconds": round(time.perf_counter() - t, 3), **info}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
                print(f"{task['id']} {mode:6s} valid={row['valid']!s:5s} args={row['args']!s:5s} {call}",
                      file=sys.stderr)
    summary = {"model": lm.name, "cloud_model": args.cloud_model, "budget": args.budget, "tasks": len(tasks),
               "tool_choice": args.tool_choice, "modes": {}}
    for mode in modes:
        rs = [r for r in rows if r["mode"] == mode]
        if not rs:
            continue
        m = {"tasks": len(rs), "valid_call_rate": round(statistics.mean(r["valid"] for r in rs), 4),
             "tool_accuracy": round(statistics.mean(r["tool"] for r in rs), 4),
             "argument_accuracy": round(statistics.mean(r["args"] for r in rs), 4)}
        if mode == "routed":
            total = sum(r.get("total_tokens", 0) for r in rs)
            m["cloud_share"] = round(sum(r.get("cloud_tokens", 0) for r in rs) / total, 4) if total else 0.0
        summary["modes"][mode] = m
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(" ".join(f"{mode}_{k}={v}" for mode, m in summary["modes"].items() for k, v in m.items() if k != "tasks"))


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
