"""The CommonsenseQA benchmark's reports: summary, money, table, plot and headline of its rows (``benchmarks/csqa.py``)."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import collab_core  # noqa: F401  (first: OpenBLAS before mlx)
from collab_core.training.csqa import prompt_text


def answers_by_place(rows: list[dict], small: dict[str, dict]) -> dict:
    """Where a routed mode spent its cloud tokens, answer by answer: answers whose final letter's slot was routed,
    answers routed only elsewhere, and answers not routed; per group the cloud tokens spent and the answers that
    went wrong -> right (up) and right -> wrong (down) against the local model alone on the same question."""
    out = {g: {"answers": 0, "cloud_tokens": 0, "up": 0, "down": 0} for g in ("slot", "elsewhere only", "none")}
    for r in rows:
        places = r.get("routed_places") or {}
        g = out["slot" if places.get("answer slot") else "elsewhere only" if r["cloud_tokens"] else "none"]
        g["answers"] += 1
        g["cloud_tokens"] += r["cloud_tokens"]
        alone = small.get(r["id"])
        if alone is not None:
            g["up"] += int(r["correct"] and not alone["correct"])
            g["down"] += int(alone["correct"] and not r["correct"])
    return out


def summarize(rows: list[dict], modes: list[str]) -> dict:
    out = {}
    small = {r["id"]: r for r in rows if r["mode"] == "small"}
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        if not rs:
            continue
        n = len(rs)
        toks = sum(r["tokens"] for r in rs)
        out[m] = {
            "questions": n,
            "accuracy": sum(r["correct"] for r in rs) / n,
            "invalid_rate": sum(r["pred"] is None for r in rs) / n,
            "routed_share": sum(r["cloud_tokens"] for r in rs) / toks if toks else 0.0,
            "cloud_calls": sum(r["cloud_calls"] for r in rs),
            "spare_tokens_used": sum(r.get("spare_tokens", 0) for r in rs),  # cloud tokens that needed no call
            "cloud_failures": sum(r["cloud_failures"] for r in rs),
            "cloud_tokens_in": sum(r["cloud_in"] for r in rs),
            "cloud_tokens_out": sum(r["cloud_out"] for r in rs),
            "cost_usd": sum(r["cost"] for r in rs),
            "time_per_question_s": sum(r["time_s"] for r in rs) / n,
            "median_answer_tokens": statistics.median(r["tokens"] for r in rs),
            **money(rs),
            "routed_places": {k: sum(r.get("routed_places", {}).get(k, 0) for r in rs)
                              for k in ("answer slot", "first sentence", "elsewhere")},
        }
        if m not in ("small", "cloud"):
            out[m]["answers_by_place"] = answers_by_place(rs, small)
    return out


def money(rows: list[dict]) -> dict:
    """The rows' cloud tokens at the list prices of ``REFERENCE_MODELS`` (LiteLLM's cost map), with no cache hits
    and with every cacheable input token a hit (``collab_core.cloud.pricing``). An answer's last call sent at
    most its prompt and its whole answer: that bounds the input that no cache can serve."""
    from collab_core.cloud.pricing import REFERENCE_MODELS, answer_cost, list_price

    out = {}
    for model in REFERENCE_MODELS:
        price = list_price(model)
        tot = {"no_cache": 0.0, "all_hits": 0.0}
        for r in rows:
            if not r["cloud_calls"]:
                continue
            last = min(r["cloud_in"], r.get("prompt_tokens", r["cloud_in"]) + r["tokens"])
            for k, v in answer_cost(price, input_tokens=r["cloud_in"], output_tokens=r["cloud_out"],
                                    last_call_input=last).items():
                tot[k] += v
        out[f"usd_{model}_no_cache"] = tot["no_cache"]
        out[f"usd_{model}_all_hits"] = tot["all_hits"]
    return out


def fill_prompt_tokens(rows: list[dict], lm, questions: list[dict], fmt: str) -> None:
    """Rows written before ``prompt_tokens`` was recorded: count it with the local tokenizer (the pair's)."""
    by_id = {q["id"]: q for q in questions}
    for r in rows:
        if "prompt_tokens" not in r and r["id"] in by_id:
            r["prompt_tokens"] = len(lm.tokenizer.encode(prompt_text(lm, by_id[r["id"]], fmt), add_special_tokens=False))


def write_reports(summary: dict, out: Path, meta: dict) -> list[str]:
    lines = ["| mode | questions | accuracy | invalid | median answer tokens | routed share | cloud calls (failed) | "
             "cloud tokens in/out | time/question (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(f"| {m} | {s['questions']} | {s['accuracy']:.3f} | {s['invalid_rate']:.3f} | "
                     f"{s['median_answer_tokens']:g} | {s['routed_share']:.3f} | "
                     f"{s['cloud_calls']} ({s['cloud_failures']}) | "
                     f"{s['cloud_tokens_in']}/{s['cloud_tokens_out']} | {s['time_per_question_s']:.2f} |")
    placed = {m: s["answers_by_place"] for m, s in summary.items() if "answers_by_place" in s}
    if placed:
        lines += ["", "| mode | answers: slot routed | elsewhere only | not routed |", "|---|---|---|---|"]
        for m, g in placed.items():
            lines.append(f"| {m} | " + " | ".join(f"{v['answers']} ({v['cloud_tokens']} tokens, +{v['up']}/-{v['down']})"
                                                for v in g.values()) + " |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "summary.json").write_text(json.dumps({"meta": meta, "modes": summary}, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        routed = {m: s for m, s in summary.items() if m not in ("small", "cloud")}
        for m, s in routed.items():
            ax.scatter(s["routed_share"] * 100, s["accuracy"], label=m, marker="s" if m.startswith("seed") else "^" if m.startswith("learned") else "o")
        if "small" in summary:
            ax.axhline(summary["small"]["accuracy"], ls="--", color="gray", label="small only")
        if "cloud" in summary:
            ax.axhline(summary["cloud"]["accuracy"], ls=":", color="black", label="cloud only")
        ax.set_xlabel("tokens routed to the cloud (%)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"CommonsenseQA ({meta['questions']} questions)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "accuracy_vs_share.png", dpi=120)
    except ImportError:
        pass
    return lines


def headline(summary: dict) -> dict:
    small = summary.get("small", {}).get("accuracy")
    cloud = summary.get("cloud", {}).get("accuracy")
    h = {"small_accuracy": small, "cloud_accuracy": cloud}
    for cap in (0.02, 0.07):  # the best routed mode whose measured share is within the cap
        tag = f"{round(cap * 100)}pct"
        routed = [s for m, s in summary.items() if m.startswith(("threshold", "budget", "learned"))
                  and s["routed_share"] <= cap]
        top = max(routed, key=lambda s: s["accuracy"], default=None)
        if top is None:
            continue
        h[f"best_routed_accuracy_at_{tag}"] = top["accuracy"]
        if small:
            h[f"relative_gain_at_{tag}"] = (top["accuracy"] - small) / small
        if small is not None and cloud is not None and cloud != small:
            h[f"gap_closed_at_{tag}"] = (top["accuracy"] - small) / (cloud - small)
        if "cloud" in summary:  # money: that mode's cloud tokens against cloud-only answers, at list price
            for k in [k for k in top if k.startswith("usd_")]:
                if summary["cloud"][k]:
                    h[f"cost_vs_cloud_at_{tag}_{k[4:]}"] = top[k] / summary["cloud"][k]
    for m, s in summary.items():
        if m.startswith("learned-budget:") and "budget:" + m.split(":")[1] in summary:
            conf = summary["budget:" + m.split(":")[1]]  # same budget, confidence score: accuracy difference
            h[f"learned_minus_confidence_at_budget_{m.split(':')[1]}"] = s["accuracy"] - conf["accuracy"]
        if m.startswith("seed:"):
            ours = summary.get("threshold:" + m.split(":")[1])
            if ours:
                h[f"time_vs_seed_{m.split(':')[1]}"] = ours["time_per_question_s"] / s["time_per_question_s"]
                if ours["time_per_question_s"] > s["time_per_question_s"]:
                    print(f"WARNING: routed threshold {m.split(':')[1]} is slower per question than the seed "
                          "baseline", file=sys.stderr)
    return h


def latest_rows(rows_path: Path, ids: set) -> list[dict]:
    """One row per (mode, question) of ``ids``: the latest written."""
    latest = {(r["mode"], r["id"]): r for r in (json.loads(x) for x in rows_path.read_text().splitlines())}
    return [r for r in latest.values() if r["id"] in ids]
