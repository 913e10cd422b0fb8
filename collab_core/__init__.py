"""collab_core: the framework-free token-routing core.

Where things live:

* ``local/`` -- the local model: loading (hub id, mlx-lm folder, GGUF, the offline default from PyPI),
  GGUF conversion, OpenBLAS on a Linux CPU, and ``StepDecoder`` (decoding on MLX with rollback);
* ``prompts`` -- the one ``Prompt`` type, rendered for the local model and as messages for the cloud;
* ``scoring`` -- per-token signals (``Confidence``, ``TokenSignal``) and the scorers (confidence, learned);
* ``router`` -- routing policies on a score (threshold, budget, never, scheduled);
* ``cloud/`` -- the cloud leg: LiteLLM client and strategies, the span cache, a generation's ``CloudLeg``;
* ``engine/`` -- the engine every adapter streams from (``Engine``), each generation a state machine on the model's loop;
* ``settings`` -- engine settings and per-request options, declared once;
* ``errors`` -- the one error tree; ``stats`` -- per-generation statistics; ``text`` -- streaming text;
* ``children`` -- child processes that stop with their parent; ``threads`` -- parked worker threads for MLX;
* ``integration`` -- what the LangChain and LlamaIndex adapters share;
* ``training/`` -- offline: traces, router training, calibration (the runtime never imports it);
* ``devtools/`` -- the stand-in cloud and a fake cloud on loopback.
"""

from .local import blas as _blas

_blas.enable()

from .engine import Engine, Event, FinalEvent, Generation, TokenEvent
from .errors import (
    CloudConfigError,
    CloudError,
    CollabError,
    ConfigError,
    ContextOverflowError,
    EmptyPromptError,
    GrammarError,
    ModelLoadError,
    RouterLoadError,
    TraceError,
    UnsupportedInputError,
    UnsupportedModelError,
)
from .local.decoder import Step, StepDecoder
from .local.loading import LocalModel, load_local_model
from .prompts import Message, Prompt, encode_prompt, render_prompt
from .scoring import Confidence, LearnedScorer, TokenSignal
from .settings import EngineSettings, GenerateOptions, GenerationConfig
from .stats import GenerationStats

__version__ = "0.1.0"

__all__ = [
    "CloudConfigError", "CloudError", "CollabError", "Confidence", "ConfigError", "ContextOverflowError",
    "EmptyPromptError", "Engine", "EngineSettings", "Event", "FinalEvent", "GenerateOptions", "Generation",
    "GenerationConfig", "GrammarError", "GenerationStats", "LearnedScorer", "LocalModel", "Message", "ModelLoadError", "Prompt",
    "RouterLoadError", "Step", "StepDecoder", "TokenEvent", "TokenSignal", "TraceError", "UnsupportedInputError",
    "UnsupportedModelError", "encode_prompt", "load_local_model", "render_prompt",
]
