"""What the two agent examples share: the two tools, the question, and a scripted fake cloud for offline runs.

The fake cloud (``collab_core.devtools.fakecloud``, OpenAI-compatible on loopback) plays a strong model that
knows the answer: asked to continue the assistant's turn, it continues the call or the answer it would write
(the capital's name, the tool's result in words), a word at a time. Whatever position the router sends it,
what it writes is checked against the tool-call grammar before it is kept.
"""

from __future__ import annotations

import re

QUESTION = "What is the weather like in the capital of France? Give the temperature in Fahrenheit."


def get_weather(city: str) -> str:
    """Get the current weather in a city, temperature in Celsius."""
    return f"{city}: 18 C, sunny"


def celsius_to_fahrenheit(celsius: float) -> float:
    """Convert a temperature from Celsius to Fahrenheit."""
    return round(celsius * 9 / 5 + 32, 1)


TOOLS = [get_weather, celsius_to_fahrenheit]


def scripted_turn(prompt: str) -> str:
    """The turn a strong model would write next, given the conversation so far (a rendered prompt)."""
    results = re.findall(r"<tool_response>\n(.*?)\n</tool_response>", prompt, re.S)
    if not results:
        return '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    if len(results) == 1:
        return '<tool_call>\n{"name": "celsius_to_fahrenheit", "arguments": {"celsius": 18}}\n</tool_call>'
    return f"It is sunny in Paris, {results[-1]} F."


def fake_reply(body: dict) -> str:
    """FakeCloud reply (text completion): the next word of the scripted turn after the partial answer, as a
    real cloud asked for a short span would write it; off script, a space."""
    prompt = body.get("prompt", "")
    head, _, partial = prompt.rpartition("<|im_start|>assistant\n")
    target = scripted_turn(head)
    if not target.startswith(partial):
        return " "
    m = re.match(r"\W*\w+", target[len(partial):])
    return m.group(0) if m else target[len(partial):]
