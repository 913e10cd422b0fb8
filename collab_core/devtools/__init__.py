"""Development tools, never used by the runtime: peers to route to on loopback.

* ``standin`` -- the stand-in cloud: ``mlx_lm.server`` serving Qwen2.5-Coder-1.5B-Instruct on 127.0.0.1;
* ``fakecloud`` -- a fake OpenAI-compatible cloud with injected latency and faults (tests, benchmarks).
"""
