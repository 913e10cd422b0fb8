"""What cloud tokens cost at a provider's list price, from LiteLLM's cost map (kept offline).

A routed answer calls the cloud several times, and every call resends the prompt and the answer so far: most of
its input tokens were already sent by the call before. With a provider's prompt cache those are *cacheable*.
``answer_cost`` prices one answer two ways: with no cache hits, and with every cacheable input token a hit (read
at the cache price; the first call of an answer is never a hit, and writes are priced as plain input).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from .lite import litellm_module

#: Two list prices to report routed answers against: a small and a large hosted model.
REFERENCE_MODELS = ("gpt-4o-mini", "claude-sonnet-4-5")


@dataclass(frozen=True)
class Price:
    model: str
    input: float  # USD per input token
    cached_input: float  # USD per input token read from the provider's prompt cache
    output: float  # USD per output token


def list_price(model: str) -> Price:
    """``model``'s list price in LiteLLM's cost map; ``ConfigError`` for a model it does not know."""
    entry = litellm_module().model_cost.get(model)
    if not entry or "input_cost_per_token" not in entry:
        raise ConfigError(f"no list price for {model!r} in LiteLLM's cost map")
    inp = float(entry["input_cost_per_token"])
    return Price(model, inp, float(entry.get("cache_read_input_token_cost", inp)),
                 float(entry.get("output_cost_per_token", 0.0)))


def answer_cost(price: Price, *, input_tokens: int, output_tokens: int, last_call_input: int) -> dict[str, float]:
    """One answer's cloud cost: ``no_cache`` and ``all_hits``. ``last_call_input`` is the input of the answer's
    last call: everything the calls before it sent is a prefix of it, so with every cacheable token a hit only
    that many input tokens are read at full price (at most all of them)."""
    if min(input_tokens, output_tokens, last_call_input) < 0:
        raise ConfigError("token counts must be >= 0")
    fresh = min(input_tokens, last_call_input)
    no_cache = input_tokens * price.input + output_tokens * price.output
    hits = fresh * price.input + (input_tokens - fresh) * price.cached_input + output_tokens * price.output
    return {"no_cache": no_cache, "all_hits": hits}
