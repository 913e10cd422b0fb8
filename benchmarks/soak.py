"""Soak: ``collab serve`` under a mix of requests, clients that leave and a cloud that fails, then every answer
checked against its solo run.

    python benchmarks/soak.py [--requests 300] [--concurrency 12] [--tokens 24] [--local-model SPEC]

``collab serve`` runs as a child process (sync pipeline, threshold routing: which positions are routed does not
depend on timing) against the fake cloud (``collab_core.devtools.fakecloud``). A hash of each request decides
everything random, so that a solo run of the same request meets the same: whether it streams, whether (and after
how many chunks) its client disconnects, and, for each cloud call (a hash of its bytes), whether the cloud answers,
fails with a 5xx, hangs past the engine's timeout or sends garbage. After the soak every completed request is sent
again alone, one at a time, and its answer compared.

Reports completed / cancelled / failed requests, p50 and p99 latency, the server's RSS after warm-up (``--warmup``
requests of the same mix, twice the concurrency by default, run as the soak runs them and not counted) and at the
end, whether any request was stuck (no answer within ``--stuck-s``), and whether every completed answer equals
its solo run. Prints one JSON object, then the headline ``soak_identical=<0|1>``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import re
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collab_core.devtools.fakecloud import FakeCloud  # noqa: E402

TOPICS = ["the sea", "a mountain", "bread", "a violin", "rain", "a library", "bees", "a bridge", "winter", "tea"]


def draw(key: str, salt: str) -> float:
    """A number in [0, 1) that ``key`` decides."""
    return zlib.crc32(f"{salt}:{key}".encode()) % 10_000 / 10_000


def cloud_fault(raw: bytes) -> str | None:
    """The fault a cloud call meets, decided by its bytes (a solo run's call is the same bytes)."""
    x = zlib.crc32(raw) % 100
    return "500" if x < 8 else "timeout" if x < 12 else "garbled" if x < 16 else None


def plan(i: int) -> dict:
    key = f"req{i}"
    prompt = f"Write a sentence about {TOPICS[i % len(TOPICS)]} (note {i})."
    stream = draw(key, "stream") < 0.5
    leave = draw(key, "leave") < 0.15
    return {"i": i, "prompt": prompt, "stream": stream or leave, "leave_after": 1 + int(draw(key, "k") * 5) if leave
            else None}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def start_server(local_model: str | None, cloud_url: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "collab_core.cli", "serve", "--port", "0", "--cloud-model",
           "text-completion-openai/fake", "--api-base", cloud_url, "--router", "threshold:0.6", "--pipeline", "sync",
           "--timeout", "3", "--max-batch", str(max_batch)]
    if local_model:
        cmd += ["--local-model", local_model]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"collab serve exited with {proc.returncode}")
        m = re.search(r"page: (http://\S+?)/\s", line)
        if m:
            return proc, m.group(1)
    proc.kill()
    raise RuntimeError("collab serve did not start")


def one(client, url: str, p: dict, tokens: int) -> dict:
    """Send one planned request; its outcome, answer and latency."""
    body = {"model": "collab", "prompt": p["prompt"], "max_tokens": tokens, "temperature": 0, "stream": p["stream"]}
    t0 = time.perf_counter()
    try:
        if not p["stream"]:
            r = client.post(f"{url}/v1/completions", json=body)
            if r.status_code != 200:
                return {"outcome": "failed", "status": r.status_code, "s": time.perf_counter() - t0}
            return {"outcome": "completed", "text": r.json()["choices"][0]["text"], "s": time.perf_counter() - t0}
        text, chunks = [], 0
        with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"outcome": "failed", "status": r.status_code, "s": time.perf_counter() - t0}
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"outcome": "failed", "error": chunk["error"], "s": time.perf_counter() - t0}
                text += [c.get("text") or "" for c in chunk.get("choices", [])]
                chunks += 1
                if p["leave_after"] is not None and chunks >= p["leave_after"]:
                    return {"outcome": "cancelled", "s": time.perf_counter() - t0}  # the client leaves
        return {"outcome": "completed", "text": "".join(text), "s": time.perf_counter() - t0}
    except Exception as exc:  # noqa: BLE001 - counted, shown
        return {"outcome": "failed", "error": repr(exc)[:200], "s": time.perf_counter() - t0}


def soak(*, requests: int, concurrency: int, tokens: int, local_model: str | None = None, max_batch: int = 8,
         stuck_s: float = 300.0, warmup: int | None = None) -> dict:
    import httpx

    plans = [plan(i) for i in range(requests)]
    warmup = 2 * concurrency if warmup is None else warmup
    with FakeCloud(reply=" and then", latency_s=0.03, timeout_sleep_s=4.0, fault_of=cloud_fault) as fc:
        proc, url = start_server(local_model, fc.url, max_batch)
        try:
            with httpx.Client(timeout=stuck_s) as client:
                # warm-up: the soak's own mix, as many at once as it runs, on requests it does not count; so the
                # loop is started and the batch's working set (the widest batched cache, MLX's buffer pool) is
                # allocated before the first RSS reading, and growth after it is what the soak itself adds
                with cf.ThreadPoolExecutor(concurrency) as ex:
                    list(ex.map(lambda p: one(client, url, p, tokens), [plan(requests + k) for k in range(warmup)]))
                rss_warm = rss_mb(proc.pid)
                t0 = time.perf_counter()
                with cf.ThreadPoolExecutor(concurrency) as ex:
                    results = list(ex.map(lambda p: one(client, url, p, tokens), plans))
                wall = time.perf_counter() - t0
                rss_end = rss_mb(proc.pid)
                done = [(p, r) for p, r in zip(plans, results) if r["outcome"] == "completed"]
                solo = [one(client, url, {**p, "stream": False, "leave_after": None}, tokens) for p, _ in done]
        finally:
            proc.terminate()
            proc.wait(30)
    lat = sorted(r["s"] for r in results if r["outcome"] == "completed")
    mismatched = [p["i"] for (p, r), s in zip(done, solo) if s.get("text") != r["text"]]
    stuck = [p["i"] for p, r in zip(plans, results) if "ReadTimeout" in str(r.get("error", ""))]
    count = {k: sum(r["outcome"] == k for r in results) for k in ("completed", "cancelled", "failed")}
    return {
        "requests": requests, "concurrency": concurrency, "tokens": tokens, "warmup": warmup, **count,
        "failures": [r for r in results if r["outcome"] == "failed"][:5],
        "p50_s": round(statistics.median(lat), 3) if lat else None,
        "p99_s": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3) if lat else None,
        "wall_s": round(wall, 1), "rss_warm_mb": round(rss_warm, 1), "rss_end_mb": round(rss_end, 1),
        "rss_growth": round(rss_end / rss_warm - 1, 4), "stuck": stuck, "mismatched": mismatched,
        "identical": not mismatched, "cloud_calls": len(fc.requests),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=12)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--local-model", default=None)
    ap.add_argument("--warmup", type=int, default=None, help="uncounted requests first (default: 2x concurrency)")
    args = ap.parse_args()
    out = soak(requests=args.requests, concurrency=args.concurrency, tokens=args.tokens,
               local_model=args.local_model, max_batch=args.max_batch, warmup=args.warmup)
    print(json.dumps(out, indent=1))
    print(f"soak_rss_growth={out['rss_growth']}")
    print(f"soak_identical={int(out['identical'] and not out['stuck'])}")


if __name__ == "__main__":
    main()
