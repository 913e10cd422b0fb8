"""collab_core.prompts: one prompt type rendered for the local model and turned into cloud messages."""

from types import SimpleNamespace

import pytest

from collab_core.errors import CollabError, ConfigError, EmptyPromptError, UnsupportedInputError
from collab_core.prompts import (
    chat_role,
    encode_prompt,
    is_token_ids,
    message_text,
    messages_for,
    render_prompt,
    split_prefill,
)

IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture
def plain_lm(tiny_lm):
    """The tiny model's tokenizer, as a model without a chat template."""
    return SimpleNamespace(tokenizer=tiny_lm.tokenizer, has_chat_template=False)


# -- chat_role, is_token_ids, message_text ------------------------------------------------------------------
@pytest.mark.parametrize(("role", "out"), [
    ("user", "user"), ("human", "user"), ("HUMAN", "user"), ("ai", "assistant"), ("assistant", "assistant"),
    ("chatbot", "assistant"), ("model", "assistant"), ("system", "system"), ("developer", "system"),
    ("tool", "tool"), ("function", "tool"), ("narrator", "user"), ("", "user"),
])
def test_chat_role(role, out):
    assert chat_role(role) == out


@pytest.mark.parametrize(("prompt", "out"), [
    ([1, 2, 3], True), ((7,), True), ([], False), ((), False), ("123", False), ("", False),
    ([{"role": "user", "content": "hi"}], False), (["hi"], False),
])
def test_is_token_ids(prompt, out):
    assert is_token_ids(prompt) is out


def test_message_text_joins_text_parts():
    assert message_text(None) == ""
    assert message_text("Hello") == "Hello"
    assert message_text([]) == ""
    parts = [{"type": "text", "text": "Hello"}, "there", {"type": "text", "text": None}, {"type": "text"}]
    assert message_text(parts) == "Hello\nthere\n\n"
    assert message_text(({"type": "text", "text": "a"}, {"type": "text", "text": "b"})) == "a\nb"


@pytest.mark.parametrize("content", [
    [IMAGE],
    [{"type": "text", "text": "What is this?"}, IMAGE],
    [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}],
    [42],
    {"type": "text", "text": "a dict, not a list"},
    b"bytes",
])
def test_message_text_refuses_non_text(content):
    with pytest.raises(UnsupportedInputError) as info:
        message_text(content)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, CollabError)


def test_image_error_names_the_part_type():
    with pytest.raises(UnsupportedInputError, match="image_url"):
        message_text([IMAGE])


# -- render_prompt / encode_prompt ----------------------------------------------------------------------------
def test_string_goes_through_the_chat_template(tiny_lm):
    text, ids = render_prompt(tiny_lm, "What is the capital of France?")
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    assert ids == list(tiny_lm.tokenizer.encode(text, add_special_tokens=False))
    assert tiny_lm.tokenizer.decode(ids) == text
    assert encode_prompt(tiny_lm, "What is the capital of France?") == ids


def test_string_without_chat(tiny_lm, plain_lm):
    prompt = "The capital of France is"
    assert render_prompt(tiny_lm, prompt, chat=False) == (prompt, list(tiny_lm.tokenizer.encode(prompt)))
    assert render_prompt(plain_lm, prompt) == (prompt, list(tiny_lm.tokenizer.encode(prompt)))
    assert encode_prompt(tiny_lm, prompt, chat=False) == list(tiny_lm.tokenizer.encode(prompt))


def test_messages_without_a_chat_template_are_written_out(plain_lm):
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"}]
    text, ids = render_prompt(plain_lm, messages, system="Be brief.")
    assert text == "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Capital of France?\nassistant:"
    assert ids == list(plain_lm.tokenizer.encode(text))


def test_message_list_with_text_parts_and_system(tiny_lm):
    messages = [
        {"role": "system", "content": "Old system."},
        {"role": "user", "content": [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]},
    ]
    text, ids = render_prompt(tiny_lm, messages, system="New system.")
    assert text == ("<|im_start|>system\nNew system.<|im_end|>\n"
                    "<|im_start|>user\nPart one.\nPart two.<|im_end|>\n<|im_start|>assistant\n")
    assert "Old system." not in text
    assert ids == list(tiny_lm.tokenizer.encode(text, add_special_tokens=False))
    # without a new system message the existing one stays
    kept = render_prompt(tiny_lm, messages)[0]
    assert kept.startswith("<|im_start|>system\nOld system.<|im_end|>\n")


def test_chat_false_does_not_apply_to_message_lists(tiny_lm):
    messages = [{"role": "user", "content": "Hi"}]
    assert render_prompt(tiny_lm, messages, chat=False) == render_prompt(tiny_lm, messages)


def test_token_ids_pass_through(tiny_lm):
    ids = list(tiny_lm.tokenizer.encode("The answer is Paris", add_special_tokens=False))
    text, out = render_prompt(tiny_lm, ids, system="ignored for token ids")
    assert out == ids and out is not ids
    assert text == "The answer is Paris"
    assert encode_prompt(tiny_lm, tuple(ids)) == ids


@pytest.mark.parametrize("prompt", [
    "", "  ", "\n\t ", [],
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "   "}, {"role": "assistant", "content": None}],
    [{"role": "user", "content": []}],
    [{"role": "user", "content": [{"type": "text", "text": " "}]}],
])
def test_empty_prompts_are_refused(tiny_lm, plain_lm, prompt):
    for lm in (tiny_lm, plain_lm):
        with pytest.raises(EmptyPromptError) as info:
            render_prompt(lm, prompt)
        assert isinstance(info.value, ValueError)
        with pytest.raises(EmptyPromptError):
            encode_prompt(lm, prompt, system="A system message is not content.")


def test_empty_string_is_refused_without_chat_too(tiny_lm):
    with pytest.raises(EmptyPromptError):
        render_prompt(tiny_lm, " ", chat=False)


def test_image_part_is_refused_when_rendering(tiny_lm):
    prompt = [{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"}, IMAGE]}]
    with pytest.raises(UnsupportedInputError):
        render_prompt(tiny_lm, prompt)
    with pytest.raises(UnsupportedInputError):
        messages_for(prompt)


# -- messages_for ---------------------------------------------------------------------------------------------
def test_messages_for_a_string():
    assert messages_for("Hi") == [{"role": "user", "content": "Hi"}]
    assert messages_for("Hi", system="Be brief.") == [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi"}]


def test_messages_for_a_message_list():
    messages = [
        {"role": "system", "content": "Old."},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "x"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "More."},
    ]
    assert messages_for(messages) == [{"role": "system", "content": "Old."}, {"role": "user", "content": "a\nb"},
                                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More."}]
    assert messages_for(messages, system="New.") == [
        {"role": "system", "content": "New."}, {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "More."}]
    assert messages[1]["content"][0] == {"type": "text", "text": "a"}  # the caller's list is not changed


def test_a_trailing_assistant_message_is_the_answers_start(tiny_lm):
    prompt = [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "The answer is"}]
    assert split_prefill(prompt) == ([{"role": "user", "content": "Capital of France?"}], "The answer is")
    assert split_prefill("hi") == ("hi", "") and split_prefill([1, 2]) == ([1, 2], "")
    # the cloud sees the conversation without it (the engine sends it as the answer so far) ...
    assert messages_for(prompt) == [{"role": "user", "content": "Capital of France?"}]
    # ... and the local model goes on from it, after the generation prompt
    text, ids = render_prompt(tiny_lm, prompt)
    bare, _ = render_prompt(tiny_lm, prompt[:1])
    assert text == bare + "The answer is" and ids == tiny_lm.tokenizer.encode(text, add_special_tokens=False)
    assert messages_for([{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]) == [
        {"role": "user", "content": "Q"}]


def test_messages_for_token_ids_is_empty():
    assert messages_for([1, 2, 3]) == []
    assert messages_for((5,), system="Be brief.") == []
