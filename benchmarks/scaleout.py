"""Time per routed span when the cloud is two servers behind a LiteLLM Router (in this process) or behind a real
LiteLLM proxy process, against one round trip to one server; then one server is killed mid-run.

    python benchmarks/scaleout.py [--local-model SPEC] [--latency-ms 100] [--answers 4] [--modes router,proxy]

Two fake OpenAI-compatible servers (``collab_core.devtools.fakecloud``) on loopback answer after ``--latency-ms``
(a cloud's round trip). A *round trip* is the median wall time of one bare HTTP request to one of them (a kept-alive
connection; no LiteLLM, no Router, no proxy), measured between the answers. The time per span is the engine's
``span_wall_s`` (from the routing decision until the span's text is ready; sync pipeline, no span cache). For each
mode: answers with both servers up (``span_rtt_ratio``: median time per span / round trip; target <= 1.3), then
answers during which the second server dies (every answer must complete; spans keep coming from the survivor;
LiteLLM's retries show in ``rerouted``).

Prints one JSON object, then ``span_rtt_ratio_max=<the larger ratio of the modes>`` as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import collab_core  # noqa: E402,F401  (first: loads OpenBLAS before mlx when available)
from collab_core import Engine, load_local_model  # noqa: E402
from collab_core.children import run_main  # noqa: E402
from collab_core.cloud.client import CloudConfig  # noqa: E402
from collab_core.devtools.fakecloud import FakeCloud  # noqa: E402
from collab_core.devtools.proxy import LiteLLMProxy  # noqa: E402
from collab_core.router import ScheduledRouter  # noqa: E402

PROMPTS = ["Describe the sea in a few sentences.", "Explain how a bicycle works.",
           "Write a short note about mountains.", "Tell me about the history of bread."]
GROUP = "span"
MODEL = "text-completion-openai/fake"


class Servers:
    """Two fake servers; ``kill_after(n)``: the second dies (connections cut) at their n-th request."""

    def __init__(self, latency_s: float):
        self.a = FakeCloud(reply=self._reply, latency_s=latency_s).start()
        self.b = FakeCloud(reply=self._reply, latency_s=latency_s).start()
        self.urls = [self.a.url, self.b.url]
        self.kill_at: int | None = None
        self.killed = threading.Event()

    def _reply(self, body: dict) -> str:
        n = len(self.a.requests) + len(self.b.requests)
        if self.kill_at is not None and n >= self.kill_at and not self.killed.is_set():
            self.killed.set()
            threading.Thread(target=self.b.kill, daemon=True).start()
        return " and the"

    def revive(self) -> None:
        """The second server back on its port (for the next mode)."""
        port = int(self.urls[1].rsplit(":", 1)[1].split("/")[0])
        self.b = FakeCloud(reply=self._reply, latency_s=self.a.latency_s, port=port).start()
        self.kill_at = None
        self.killed.clear()

    def deployments(self) -> list[dict]:
        return [{"model_name": GROUP, "litellm_params": {"model": MODEL, "api_base": u, "api_key": "sk-fake"}}
                for u in self.urls]

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


def round_trip(url: str, n: int = 5) -> list[float]:
    """Wall times of ``n`` bare HTTP round trips to one server (a kept-alive connection, the request a span makes):
    the network and the server, without LiteLLM or any routing layer."""
    import httpx

    body = {"model": "fake", "prompt": "Hello", "max_tokens": 4}
    out = []
    with httpx.Client(timeout=30) as client:
        client.post(url + "/completions", json=body)  # connect first
        for _ in range(n):
            t = time.perf_counter()
            client.post(url + "/completions", json=body).raise_for_status()
            out.append(time.perf_counter() - t)
    return out


def run_mode(mode: str, lm, servers: Servers, args) -> dict:
    settings = {"num_retries": 2, "allowed_fails": 0, "cooldown_time": 30, "retry_after": 0}
    proxy = None
    if mode == "router":
        import litellm

        cloud = CloudConfig(model=GROUP, deployments=litellm.Router(model_list=servers.deployments(), **settings))
    else:
        proxy = LiteLLMProxy({"model_list": servers.deployments(), "router_settings": settings,
                              "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
                              "litellm_settings": {"turn_off_message_logging": True}}).start()
        cloud = CloudConfig(model=f"litellm_proxy/{GROUP}", api_base=proxy.api_base, api_key=proxy.master_key,
                            strategy="completion")
    try:
        eng = Engine(lm, cloud=cloud, router=ScheduledRouter(range(2, 512, args.every)), pipeline="sync", cache=False)
        eng.generate(PROMPTS[0], max_tokens=16)  # warm-up: connections, LiteLLM's first-call work
        spans, rtts, deployments = [], [], {}
        for i in range(args.answers):
            rtts += round_trip(servers.urls[i % 2], 3)
            g = eng.generate(PROMPTS[i % len(PROMPTS)], max_tokens=args.tokens)
            assert g.stats.cloud_failures == 0, g.stats.cloud_errors
            spans.append(g.stats.span_wall_s)
            for k, v in g.stats.cloud_deployments.items():
                deployments[k] = deployments.get(k, 0) + v
        rtt = statistics.median(rtts)
        # one server dies mid-answer
        servers.kill_at = len(servers.a.requests) + len(servers.b.requests) + 3
        killed = [eng.generate(PROMPTS[i % len(PROMPTS)], max_tokens=args.tokens) for i in range(2)]
        after = killed[-1].stats
        result = {
            "round_trip_s": round(rtt, 4),
            "span_wall_s_median": round(statistics.median(spans), 4),
            "span_rtt_ratio": round(statistics.median(spans) / rtt, 3),
            "spans_by_deployment": {("a" if k == servers.urls[0] else "b"): v for k, v in deployments.items()},
            "kill": {
                "killed": servers.killed.is_set(),
                "answers_complete": all(g.finish_reason in ("stop", "length") and g.text for g in killed),
                "answer_tokens": [g.stats.total_tokens for g in killed],
                "cloud_failures": sum(g.stats.cloud_failures for g in killed),
                "rerouted": sum(g.stats.cloud_rerouted for g in killed),
                "spans_after_kill_by_deployment": {("a" if k == servers.urls[0] else "b"): v
                                                   for k, v in after.cloud_deployments.items()},
                "span_wall_s_during_kill": round(killed[0].stats.span_wall_s, 4),
            },
        }
        eng.close()
        return result
    finally:
        if proxy is not None:
            proxy.stop()
        servers.revive()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--answers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--every", type=int, default=4, help="route every N-th answer position")
    ap.add_argument("--modes", default="router,proxy")
    args = ap.parse_args()

    lm = load_local_model(args.local_model)
    servers = Servers(args.latency_ms / 1000)
    results = {}
    try:
        for mode in args.modes.split(","):
            results[mode] = run_mode(mode, lm, servers, args)
    finally:
        servers.stop()
    print(json.dumps({"local_model": lm.name, "latency_ms": args.latency_ms, "answers": args.answers,
                      "tokens": args.tokens, "machine": platform.platform(), "modes": results}, indent=2))
    worst = max(r["span_rtt_ratio"] for r in results.values())
    print(f"span_rtt_ratio_max={worst:.3f}")


if __name__ == "__main__":
    run_main(main)
