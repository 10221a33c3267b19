"""The official `anthropic` Python SDK against the running `--demo` binary's Messages API
(`POST /v1/messages`, `/v1/messages/count_tokens`, `GET /v1/models`; README "Anthropic
Messages API").

Expected answers follow the simulator's documented rule (README, "Simulator"):
`Simulated answer — 模拟回答: you said "<last line of the prompt>".`, the last non-empty line
with the `@@sim:` directives removed; after a tool result, the result's last line.
"""

import base64
import hashlib
import json
import re
import struct
import urllib.request
import zlib

import anthropic
import pytest
from anthropic import Anthropic

MODEL = "qwen3.7-plus"
# A Claude name the default MODEL_ALIASES maps (sonnet → qwen3.7-plus); answers carry it.
CLAUDE = "claude-sonnet-4-5-20250929"
# The stream's own events (the helper adds derived ones: `text`, `input_json`, …).
RAW_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}
WEATHER = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name"}},
        "required": ["city"],
    },
}


def last_line(prompt):
    """The prompt's last non-empty line, trimmed, its `@@sim:` directives removed."""
    return [line.strip() for line in re.sub(r"@@sim:\S+", "", prompt).splitlines() if line.strip()][-1]


def expected(prompt):
    return f'Simulated answer — 模拟回答: you said "{last_line(prompt)}".'


def expected_thinking(prompt):
    return f'The user wrote: "{last_line(prompt)}".\n\nI will answer briefly — 简短回答。'


def call_directive(name, args):
    """`@@sim:call=NAME,ARGS_B64`: the simulated model calls NAME with these arguments."""
    b64 = base64.urlsafe_b64encode(json.dumps(args).encode()).decode().rstrip("=")
    return f"@@sim:call={name},{b64}"


def tiny_png():
    """A valid 1×1 RGB PNG, built here (signature, IHDR, IDAT, IEND with their CRCs)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x80\x00")) + chunk(b"IEND", b"")


def sim_stats(sim_url):
    with urllib.request.urlopen(f"{sim_url}/__sim/stats", timeout=10) as rsp:
        return json.load(rsp)


def make_client(base_url):
    # The SDK appends /v1/messages itself. max_retries=0: each error class must surface as
    # its exception, not be retried away.
    return Anthropic(base_url=base_url.removesuffix("/v1"), api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def client(base_url):
    return make_client(base_url)


def user(text):
    return [{"role": "user", "content": text}]


# --- answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_create_non_streamed(client, model):
    prompt = "First line\n  What is up?  "
    msg = client.messages.create(model=model, max_tokens=1024, system="Be brief.", messages=user(prompt))
    assert isinstance(msg, anthropic.types.Message)
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.model == model
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == expected(prompt)
    assert expected(prompt) == 'Simulated answer — 模拟回答: you said "What is up?".'
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert isinstance(msg.usage.input_tokens, int) and msg.usage.input_tokens > 0
    assert isinstance(msg.usage.output_tokens, int) and msg.usage.output_tokens > 0


@pytest.mark.parametrize("model", [MODEL, CLAUDE])
def test_stream_helper_accumulates(client, model):
    # `@@sim:split`: the upstream's frames arrive cut at arbitrary bytes (inside UTF-8 too).
    prompt = "Hello, Claude @@sim:split"
    with client.messages.stream(model=model, max_tokens=1024, messages=user(prompt)) as stream:
        events = list(stream)
        final = stream.get_final_message()
    raw = [e.type for e in events if e.type in RAW_EVENTS]
    assert raw[0] == "message_start" and raw[-1] == "message_stop", raw
    assert raw.count("message_start") == 1 and raw.count("message_stop") == 1
    assert raw.count("message_delta") == 1 and raw[-2] == "message_delta", raw
    assert raw[1] == "content_block_start" and raw[-3] == "content_block_stop", raw
    assert events[0].message.model == model
    deltas = [e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"]
    assert len(deltas) > 1, "the answer streamed in several deltas"
    assert "".join(deltas) == expected(prompt)
    # The helper's own `text` events carry the same text.
    assert "".join(e.text for e in events if e.type == "text") == expected(prompt)
    assert final.model == model
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == expected(prompt)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0


def test_text_stream(client):
    prompt = "Only the words, please"
    with client.messages.stream(model=MODEL, max_tokens=256, messages=user(prompt)) as stream:
        text = "".join(stream.text_stream)
        assert stream.get_final_text() == expected(prompt)
    assert text == expected(prompt)


def test_raw_stream_true(client):
    prompt = "raw events"
    events = list(client.messages.create(model=MODEL, max_tokens=256, stream=True, messages=user(prompt)))
    types = [e.type for e in events]
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types.count("message_delta") == 1
    assert events[0].message.usage.input_tokens > 0
    delta = next(e for e in events if e.type == "message_delta")
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens > 0
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == expected(prompt)


# --- tool use ------------------------------------------------------------------------------


def tool_use_of(msg):
    calls = [b for b in msg.content if b.type == "tool_use"]
    assert len(calls) == 1, msg.content
    return calls[0]


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_use_round_trip(demo, streamed):
    client = make_client(demo["base_url"])
    city = "Paris" if streamed else "Tokyo"
    args = {"city": city}
    first = {"role": "user", "content": f"What is the weather in {city}? {call_directive('get_weather', args)}"}
    before = sim_stats(demo["sim_url"])["chats_used"]

    def ask(messages):
        if not streamed:
            return client.messages.create(model=MODEL, max_tokens=1024, tools=[WEATHER], messages=messages)
        with client.messages.stream(model=MODEL, max_tokens=1024, tools=[WEATHER], messages=messages) as s:
            events = list(s)
            final = s.get_final_message()
        raw = [e.type for e in events if e.type in RAW_EVENTS]
        assert raw[0] == "message_start" and raw[-1] == "message_stop" and raw.count("message_delta") == 1
        if any(b.type == "tool_use" for b in final.content):
            # The input arrived as input_json deltas that add up to the accumulated input.
            partial = "".join(e.delta.partial_json for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
            assert json.loads(partial) == args
        return final

    call_msg = ask([first])
    assert call_msg.stop_reason == "tool_use"
    call = tool_use_of(call_msg)
    assert call.id.startswith("toolu_") and len(call.id) > len("toolu_")
    assert call.name == "get_weather"
    assert call.input == args
    assert call_msg.content[-1].type == "tool_use", "the call ends the answer"

    result = f"Weather report for {city}\nsunny, 21 °C"
    answer = ask(
        [
            first,
            {"role": "assistant", "content": call_msg.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]},
        ]
    )
    assert answer.stop_reason == "end_turn"
    assert [b.type for b in answer.content] == ["text"]
    # The simulated model answers with the tool result's last line.
    assert answer.content[0].text == expected(result)
    assert expected(result) == 'Simulated answer — 模拟回答: you said "sunny, 21 °C".'
    # The result continued the call's upstream chat.
    assert sim_stats(demo["sim_url"])["chats_used"] - before == 1


def test_tool_result_with_is_error_and_blocks(client):
    args = {"city": "Atlantis"}
    first = {"role": "user", "content": f"Weather in Atlantis? {call_directive('get_weather', args)}"}
    call_msg = client.messages.create(model=MODEL, max_tokens=1024, tools=[WEATHER], messages=[first])
    call = tool_use_of(call_msg)
    assert call.input == args
    answer = client.messages.create(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER],
        messages=[
            first,
            {"role": "assistant", "content": call_msg.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "is_error": True,
                        "content": [{"type": "text", "text": "lookup failed\nno such city: Atlantis"}],
                    }
                ],
            },
        ],
    )
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == expected("no such city: Atlantis")


@pytest.mark.parametrize("streamed", [False, True])
def test_tool_choice_any_asks_a_bad_call_again(client, streamed):
    # Under tool_choice `any` (OpenAI's `required`) a call to a tool the request does not offer
    # is asked again with a hint while the client has seen nothing of the answer — always
    # for a whole message, for a stream too since its prose is held (README "Function
    # calling"). The simulated model obeys the hint with its first tool, arguments built from
    # the schema: a string without default or enum is "sim" (README "Simulator").
    kwargs = dict(
        model=MODEL,
        max_tokens=1024,
        tools=[WEATHER],
        tool_choice={"type": "any"},
        messages=user(f"Weather in Bern? {call_directive('delete_everything', {'path': '/'})}"),
    )
    if streamed:
        with client.messages.stream(**kwargs) as s:
            events = list(s)
            msg = s.get_final_message()
        assert [e.type for e in events].count("message_start") == 1
    else:
        msg = client.messages.create(**kwargs)
    assert msg.stop_reason == "tool_use", msg.content
    call = tool_use_of(msg)
    assert call.name == "get_weather" and call.input == {"city": "sim"}


# --- thinking ------------------------------------------------------------------------------


def test_thinking_block_signed_and_replayed(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    prompt = "Why is the sky blue?"
    msg = client.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=user(prompt))
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == expected_thinking(prompt)
    assert isinstance(msg.content[0].signature, str) and msg.content[0].signature
    assert msg.content[1].text == expected(prompt)
    assert msg.stop_reason == "end_turn"

    # The assistant message goes back as it came, thinking block and signature included.
    follow_up = "And why are sunsets red?"
    again = client.messages.create(
        model=MODEL,
        max_tokens=2048,
        thinking=thinking,
        messages=[*user(prompt), {"role": "assistant", "content": msg.content}, *user(follow_up)],
    )
    assert [b.type for b in again.content] == ["thinking", "text"]
    assert again.content[0].signature
    assert again.content[1].text == expected(follow_up)

    # Without thinking asked for, no thinking block.
    plain = client.messages.create(model=MODEL, max_tokens=2048, messages=user(prompt))
    assert [b.type for b in plain.content] == ["text"]
    disabled = client.messages.create(
        model=MODEL, max_tokens=2048, thinking={"type": "disabled"}, messages=user(prompt)
    )
    assert [b.type for b in disabled.content] == ["text"]
    assert disabled.content[0].text == expected(prompt)


def test_thinking_streamed(client):
    prompt = "Think it through"
    with client.messages.stream(
        model=MODEL, max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024}, messages=user(prompt)
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    thought = "".join(e.delta.thinking for e in events if e.type == "content_block_delta" and e.delta.type == "thinking_delta")
    signatures = [e.delta.signature for e in events if e.type == "content_block_delta" and e.delta.type == "signature_delta"]
    assert thought == expected_thinking(prompt)
    assert len(signatures) == 1 and signatures[0]
    # The signature closes the thinking block: the next event is its content_block_stop.
    raw = [e for e in events if e.type in RAW_EVENTS]
    sig_at = next(i for i, e in enumerate(raw) if e.type == "content_block_delta" and e.delta.type == "signature_delta")
    assert raw[sig_at + 1].type == "content_block_stop" and raw[sig_at + 1].index == 0
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == expected_thinking(prompt)
    assert final.content[0].signature == signatures[0]
    assert final.content[1].text == expected(prompt)


# --- images --------------------------------------------------------------------------------


def image_message(png, text):
    data = base64.b64encode(png).decode()
    return [
        {
            "role": "user",
            "content": [
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
                {"type": "text", "text": text},
            ],
        }
    ]


def test_base64_image_is_seen(client):
    png = tiny_png()
    # `@@sim:files`: the simulated model lists the files its message carried, one line each
    # (`NAME: MEDIA_TYPE, N bytes, sha256 HEX`).
    msg = client.messages.create(
        model=MODEL, max_tokens=512, messages=image_message(png, "What is in this picture? @@sim:files")
    )
    text = msg.content[0].text
    assert "image/png" in text
    assert f"image/png, {len(png)} bytes, sha256 {hashlib.sha256(png).hexdigest()}" in text, text
    assert msg.stop_reason == "end_turn"


def test_image_to_a_model_without_vision_is_refused(client):
    # qwen3.8-max has no `capabilities.vision` in the simulator's catalogue (README, "Images").
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model="qwen3.8-max", max_tokens=512, messages=image_message(tiny_png(), "What is this?"))
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "qwen3.7-plus" in info.value.body["error"]["message"], "the error names the models that see images"


# --- errors --------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="no-such-model", max_tokens=16, messages=user("hi"))
    assert info.value.status_code == 404
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in info.value.body["error"]["message"]


def test_missing_max_tokens_is_a_bad_request(client):
    # The typed method will not send a request without max_tokens: the SDK's raw post does
    # (same error mapping).
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post("/v1/messages", body={"model": MODEL, "messages": user("hi")}, cast_to=anthropic.types.Message)
    assert info.value.status_code == 400
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in info.value.body["error"]["message"]


def test_invalid_requests_are_bad_requests(client):
    # A server tool: the proxy runs client tools only, and refuses rather than ignore it.
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model=MODEL,
            max_tokens=64,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
            messages=user("search the web"),
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "web_search" in info.value.body["error"]["message"]
    # An empty conversation.
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=64, messages=[])
    assert info.value.body["error"]["type"] == "invalid_request_error"


def test_prompt_too_long_is_413(client):
    # A tools section that cannot fit the upstream request even with the history as
    # documents (tests/anthropic.rs): 60 tools of 2,500 characters each.
    tools = [
        {"name": f"tool_{i}", "description": "d" * 2_500, "input_schema": {"type": "object"}} for i in range(60)
    ]
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model=MODEL, max_tokens=16, tools=tools, messages=user("hi"))
    assert isinstance(info.value, anthropic.ContentTooLargeError), type(info.value)
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"
    assert info.value.body["error"]["message"].startswith("prompt is too long")


@pytest.mark.parametrize("streamed", [False, True])
def test_upstream_rate_limit_is_rate_limit_error(fresh_base_url, streamed):
    # A proxy of its own: a spent quota takes its only account out of rotation.
    client = make_client(fresh_base_url)
    kwargs = dict(model=MODEL, max_tokens=64, messages=user("q @@sim:rate_limited=2"))
    with pytest.raises(anthropic.RateLimitError) as info:
        if streamed:
            with client.messages.stream(**kwargs) as s:
                list(s)
        else:
            client.messages.create(**kwargs)
    assert info.value.status_code == 429
    assert info.value.body["error"]["type"] == "rate_limit_error"
    # `rate_limited=2`: the upstream's wait of 2 hours.
    assert int(info.value.response.headers["retry-after"]) == 2 * 3600


@pytest.mark.parametrize(
    "directive,error_type",
    [("internal_error", "api_error"), ("reset", "api_error"), ("moderation_output", "invalid_request_error")],
)
def test_error_after_the_stream_began(fresh_base_url, directive, error_type):
    client = make_client(fresh_base_url)
    received = ""
    with pytest.raises(anthropic.APIStatusError) as info:
        with client.messages.stream(model=MODEL, max_tokens=64, messages=user(f"go @@sim:{directive}")) as s:
            for event in s:
                if event.type == "text":
                    received += event.text
    assert isinstance(info.value, anthropic.APIError)
    # The stream had begun: the HTTP status was 200, the failure came as an `error` event.
    assert info.value.status_code == 200
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == error_type
    assert received, "partial text arrived before the error"
    assert expected("go").startswith(received) and received != expected("go")


# --- count_tokens and models ---------------------------------------------------------------


def test_count_tokens(demo):
    client = make_client(demo["base_url"])
    before = sim_stats(demo["sim_url"])["completion_requests"]
    messages = user("How many tokens is this?")
    plain = client.messages.count_tokens(model=MODEL, messages=messages)
    assert isinstance(plain.input_tokens, int) and plain.input_tokens > 0
    with_tools = client.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER])
    assert with_tools.input_tokens > plain.input_tokens
    # About four characters a token: 4,000 characters of system text add at least 800.
    with_system = client.messages.count_tokens(model=MODEL, system="s " * 2_000, messages=messages)
    assert with_system.input_tokens >= plain.input_tokens + 800
    assert sim_stats(demo["sim_url"])["completion_requests"] == before, "no upstream call"


def test_models_list(client):
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert {MODEL, MODEL + "-thinking", "qwen3.8-max"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert all(m.type == "model" for m in models)
