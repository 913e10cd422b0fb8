"""LiteLLM, imported once the same way everywhere: offline (no cost-map or beta-header fetches) and quiet."""

from __future__ import annotations

import os


def litellm_module():
    """Import LiteLLM kept offline (no cost-map or beta-header fetches) and quiet."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm
