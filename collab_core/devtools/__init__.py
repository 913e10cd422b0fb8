"""Development tools, never used by the runtime: peers to route to on loopback.

* ``standin`` -- the stand-in cloud: ``mlx_lm.server`` serving Qwen2.5-Coder-1.5B-Instruct on 127.0.0.1;
* ``standin_server`` -- ``mlx_lm.server`` with its prompt-cache crash fixed (what the stand-in runs);
* ``demo`` -- ``collab demo``: the best pair we ship, routed, beside the local model alone;
* ``fakecloud`` -- a fake OpenAI-compatible cloud with injected latency and faults (tests, benchmarks).
"""
