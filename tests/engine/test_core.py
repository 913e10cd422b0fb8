"""The engine loop, streaming text, stop sequences, async, CLI -- on the tiny model."""

import json
import subprocess
import sys

import pytest
from conftest import LoopTicker

from collab_core import Engine, FinalEvent, Generation, TokenEvent
from collab_core.errors import ContextOverflowError, EmptyPromptError
from collab_core.text import StopMatcher, TextStream

PROMPT = "What is the capital of France?"


def test_stop_matcher_across_boundaries_and_hold_back():
    m = StopMatcher(["\nUser:", "END"])
    out = [m.feed(s) for s in ["Hello", " wor", "ld\nUs", "er: more"]]
    assert out == ["Hello", " wor", "ld", ""]
    assert m.stopped and m.matched == "\nUser:"
    m = StopMatcher(["END"])
    assert m.feed("the E") == "the " and m.feed("x") == "Ex" and m.flush() == ""
    m = StopMatcher(["END"])
    assert m.feed("abc E") == "abc " and m.flush() == "E"  # held-back text is released at the end


def test_text_stream_never_loses_spaces(tiny_lm):
    tok = tiny_lm.tokenizer
    text = "Leading  spaces, trailing spaces  , tabs\tand\nnew lines.  Café 東京 "
    ids = tok.encode(text)
    ts = TextStream(tok)
    pieces = [ts.add(t) for t in ids]
    pieces.append(ts.finish())
    assert "".join(pieces) == tok.decode(ids) == text
    assert len(pieces) > 10  # really streamed token by token


def test_engine_greedy_text_equals_decode_of_tokens(tiny_lm):
    eng = Engine(tiny_lm)
    events = list(eng.stream(PROMPT, max_tokens=20))
    gen = Generation.from_events(events, eng.model_name)
    toks = [e.token for e in gen.events]
    assert gen.text == tiny_lm.tokenizer.decode(toks)
    assert gen.stats.total_tokens == len(toks) and gen.stats.cloud_tokens == 0
    assert all(isinstance(e, TokenEvent) and e.source == "local" and e.confidence is not None for e in gen.events)
    # the stream closes with exactly one FinalEvent, carrying the finish reason and the stats
    assert isinstance(events[-1], FinalEvent) and sum(isinstance(e, FinalEvent) for e in events) == 1
    assert events[-1].finish_reason == gen.finish_reason and events[-1].stats is gen.stats
    assert gen.finish_reason in ("stop", "length")


def test_engine_max_tokens_and_stop_sequence(tiny_lm):
    eng = Engine(tiny_lm)
    full = eng.generate(PROMPT, max_tokens=30)
    assert full.finish_reason == "length" and full.stats.total_tokens == 30
    # pick a stop string that straddles a token boundary in the greedy output
    toks = [e.token for e in full.events]
    dec = tiny_lm.tokenizer.decode
    cut = len(dec(toks[:10]))
    stop = full.text[cut - 2: cut + 2]
    assert len(stop) == 4
    stopped = eng.generate(PROMPT, max_tokens=30, stop=[stop])
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[: full.text.index(stop)]
    assert stop not in stopped.text


def test_second_turn_reuses_kv_cache_and_matches_fresh_engine(tiny_lm):
    eng = Engine(tiny_lm)
    first = eng.generate(PROMPT, max_tokens=8)
    msgs = [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": first.text},
            {"role": "user", "content": "Why?"}]
    (lane,) = eng._lanes
    cache = lane.cache
    again = eng.generate(msgs, max_tokens=8)
    assert eng._lanes == [lane] and lane.cache is cache
    assert again.text == Engine(tiny_lm).generate(msgs, max_tokens=8).text


def test_bad_prompts_raise_typed_errors(tiny_lm):
    eng = Engine(tiny_lm)
    with pytest.raises(EmptyPromptError):
        eng.generate("   ")
    with pytest.raises(EmptyPromptError):
        eng.generate([{"role": "user", "content": ""}])
    with pytest.raises(ContextOverflowError):
        eng.generate("word " * 400)  # the tiny model's window is 256


def test_max_tokens_is_clamped_to_the_context_window(tiny_lm):
    eng = Engine(tiny_lm)
    prompt = "word " * 30
    ids = eng.encode(prompt)
    assert 100 < len(ids) < tiny_lm.context_window
    gen = eng.generate(prompt, max_tokens=10_000)
    assert gen.finish_reason in ("length", "stop")
    assert len(ids) + gen.stats.total_tokens <= tiny_lm.context_window


async def test_astream_does_not_block_the_event_loop(tiny_lm):
    eng = Engine(tiny_lm)
    seen = []
    async with LoopTicker() as t:
        events = []
        async for ev in eng.astream(PROMPT, max_tokens=40):
            events.append(ev)
            seen.append(t.ticks)
    assert events[-1].stats is not None and events[-1].stats.total_tokens == 40
    # a blocking stream would run to the end inside the consumer with the ticker frozen
    assert seen[-1] > seen[0] and any(b > a for a, b in zip(seen, seen[1:]))
    sync = eng.generate(PROMPT, max_tokens=40)
    assert "".join(e.text for e in events) == sync.text


async def test_astream_propagates_errors(tiny_lm):
    with pytest.raises(EmptyPromptError):
        async for _ in Engine(tiny_lm).astream(""):
            pass


def test_cli_run_json(tiny_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "collab_core.cli", "run", PROMPT, "--local-model", str(tiny_dir),
         "--max-tokens", "6", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) >= {"text", "tokens", "stats"}
    assert len(data["tokens"]) == 6 and data["stats"]["total_tokens"] == 6
    assert all({"text", "confidence", "source"} <= set(t) for t in data["tokens"])
    assert "".join(t["text"] for t in data["tokens"]) == data["text"]


def test_cli_plain_output_and_errors(tiny_dir):
    ok = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", PROMPT, "--local-model",
                         str(tiny_dir), "--max-tokens", "4"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() and "4 tokens" in ok.stderr
    bad = subprocess.run([sys.executable, "-m", "collab_core.cli", "run", " ", "--local-model", str(tiny_dir)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "empty" in bad.stderr and "Traceback" not in bad.stderr
