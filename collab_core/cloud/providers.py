"""What LiteLLM knows of a model string: its provider, the strategy ``auto`` picks for it, where its key usually
lives, and which of its errors are worth a retry."""

from __future__ import annotations

import re

from ..errors import CloudConfigError
from .lite import litellm_module
from .protocols import CHAT_PROTOCOL

#: The strategy a provider takes (``auto``); any other provider: the chat protocol, which every chat endpoint
#: takes. Anthropic's models that accept an assistant prefill take ``prefill`` (``choose_strategy``).
PROVIDER_STRATEGIES = {
    **dict.fromkeys(("text-completion-openai", "hosted_vllm", "together_ai", "fireworks_ai",
                     "text-completion-codestral", "openai_like"), "completion"),
    **dict.fromkeys(("deepseek", "mistral", "codestral"), "prefix"),
}
LOOPBACK = re.compile(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")
CACHE_MARKED_PROVIDERS = {"anthropic"}  # providers whose prompt cache needs explicit cache_control markers

_PROVIDER_KEY_ENV = {
    "openai": "OPENAI_API_KEY", "text-completion-openai": "OPENAI_API_KEY", "azure": "AZURE_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY", "deepseek": "DEEPSEEK_API_KEY", "mistral": "MISTRAL_API_KEY",
    "codestral": "CODESTRAL_API_KEY", "gemini": "GEMINI_API_KEY", "together_ai": "TOGETHERAI_API_KEY",
    "fireworks_ai": "FIREWORKS_AI_API_KEY", "groq": "GROQ_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY",
    "openrouter": "OPENROUTER_API_KEY", "cohere": "COHERE_API_KEY", "xai": "XAI_API_KEY",
}


def provider_of(model: str, api_base: str | None = None) -> str | None:
    """LiteLLM's provider for ``model`` (None when it cannot tell)."""
    try:
        return litellm_module().get_llm_provider(model, api_base=api_base)[1]
    except Exception:
        return None


def choose_strategy(model: str, api_base: str | None = None) -> str:
    """The strategy's name ``auto`` picks for ``model``; ``CloudConfigError`` when LiteLLM cannot tell its provider."""
    provider = provider_of(model, api_base)
    if provider is None:
        raise CloudConfigError(
            f"unknown cloud model {model!r}: LiteLLM cannot tell its provider "
            "(use a provider prefix, e.g. 'openai/gpt-4o-mini', 'anthropic/claude-sonnet-4-5', "
            "'hosted_vllm/NAME' or 'text-completion-openai/NAME' with --api-base)"
        )
    if provider == "anthropic" and model_info(model).get("supports_assistant_prefill"):
        return "prefill"
    return PROVIDER_STRATEGIES.get(provider, CHAT_PROTOCOL)


def api_key_env_var(model: str) -> str | None:
    """The environment variable a provider's key usually lives in (None if unknown or not needed)."""
    provider = provider_of(model)
    return _PROVIDER_KEY_ENV.get(provider) if provider else None


def model_info(model: str) -> dict:
    """LiteLLM's cost-map entry for ``model`` (with or without its provider prefix); {} when it has none."""
    litellm = litellm_module()
    bare = model.split("/", 1)[1] if "/" in model else model
    return litellm.model_cost.get(model) or litellm.model_cost.get(bare) or {}


def is_retryable(exc: BaseException) -> bool:
    litellm = litellm_module()
    import openai

    non_retryable = (litellm.AuthenticationError, litellm.BadRequestError, litellm.NotFoundError,
                     litellm.PermissionDeniedError, litellm.UnprocessableEntityError)
    if isinstance(exc, non_retryable):
        return False
    retryable = (litellm.RateLimitError, litellm.InternalServerError, litellm.ServiceUnavailableError,
                 litellm.BadGatewayError, litellm.APIConnectionError, litellm.Timeout,
                 openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                 openai.RateLimitError)
    return isinstance(exc, retryable)
