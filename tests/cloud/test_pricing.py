"""List prices from LiteLLM's cost map, with and without prompt-cache hits."""

import pytest

from collab_core.cloud.pricing import REFERENCE_MODELS, answer_cost, list_price
from collab_core.errors import ConfigError


def test_reference_models_have_list_prices():
    for m in REFERENCE_MODELS:
        p = list_price(m)
        assert 0 < p.cached_input < p.input < p.output


def test_answer_cost_with_and_without_cache_hits():
    p = list_price("gpt-4o-mini")
    # three calls of one answer: 100, 110, 120 input tokens (each a prefix of the next), one token out each
    c = answer_cost(p, input_tokens=330, output_tokens=3, last_call_input=120)
    assert c["no_cache"] == pytest.approx(330 * p.input + 3 * p.output)
    assert c["all_hits"] == pytest.approx(120 * p.input + 210 * p.cached_input + 3 * p.output)
    one = answer_cost(p, input_tokens=100, output_tokens=50, last_call_input=100)  # a cloud-only answer
    assert one["no_cache"] == one["all_hits"]


def test_unknown_model_and_bad_counts():
    with pytest.raises(ConfigError):
        list_price("no-such-model-xyz")
    with pytest.raises(ConfigError):
        answer_cost(list_price("gpt-4o-mini"), input_tokens=-1, output_tokens=0, last_call_input=0)
