"""The official `openai` Python SDK against the running `--demo` binary.

Expected answers follow the simulator's documented rule (README, "Simulator"):
`Simulated answer — 模拟回答: you said "<last line of the prompt>".`
"""

import openai
import pytest
from openai import OpenAI

MODEL = "qwen3.7-plus"


def expected(prompt):
    last = [line.strip() for line in prompt.splitlines() if line.strip()][-1]
    return f'Simulated answer — 模拟回答: you said "{last}".'


@pytest.fixture()
def client(base_url):
    # max_retries=0: each error class must surface as its exception, not be retried away.
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)


def test_streaming_text(client):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "Hello, SDK"}]
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected("Hello, SDK")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_helper_accumulates(client):
    helper = getattr(client.chat.completions, "stream", None) or client.beta.chat.completions.stream
    with helper(model=MODEL, messages=[{"role": "user", "content": "helper"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.content == expected("helper")


def test_non_streaming_text(client):
    rsp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is up?"}],
        temperature=0.3,
        user="tester",
    )
    assert rsp.object == "chat.completion"
    assert rsp.choices[0].message.content == expected("What is up?")
    assert rsp.choices[0].finish_reason == "stop"
    assert rsp.usage.prompt_tokens > 1000
    assert rsp.usage.total_tokens == rsp.usage.prompt_tokens + rsp.usage.completion_tokens


def test_reasoning_with_thinking_model(client):
    want = 'The user wrote: "Think about it".\n\nI will answer briefly — 简短回答。'
    stream = client.chat.completions.create(
        model=MODEL + "-thinking", stream=True, messages=[{"role": "user", "content": "Think about it"}]
    )
    reasoning, content = "", ""
    for c in stream:
        delta = c.choices[0].delta
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += delta.content or ""
    assert reasoning == want
    assert content == expected("Think about it")

    rsp = client.chat.completions.create(
        model=MODEL + "-thinking", messages=[{"role": "user", "content": "Think about it"}]
    )
    assert rsp.choices[0].message.model_extra["reasoning_content"] == want
    assert rsp.usage.completion_tokens_details.reasoning_tokens > 0


def test_include_usage(client):
    stream = client.chat.completions.create(
        model=MODEL,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "usage please"}],
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_models(client):
    ids = {m.id for m in client.models.list()}
    assert {MODEL, MODEL + "-thinking", MODEL + "-fast", MODEL + "-search"} <= ids
    assert client.models.retrieve(MODEL + "-thinking").id == MODEL + "-thinking"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "directive,exc,status",
    [
        ("rate_limited=2", openai.RateLimitError, 429),
        ("unauthorized", openai.AuthenticationError, 401),
        ("punish", openai.InternalServerError, 503),
        ("waf", openai.InternalServerError, 503),
        ("overload", openai.InternalServerError, 503),
        ("empty", openai.InternalServerError, 502),
        ("moderation_input", openai.BadRequestError, 400),
        ("invalid_input", openai.BadRequestError, 400),
    ],
)
def test_error_classes_raise_the_matching_exception(fresh_base_url, directive, exc, status, stream):
    # A proxy of its own: a spent quota or a refused token takes its only account out of
    # rotation, and what later requests meet is the pool's answer (tests/accounts.rs).
    client = OpenAI(base_url=fresh_base_url, api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(exc) as info:
        rsp = client.chat.completions.create(
            model=MODEL, stream=stream, messages=[{"role": "user", "content": f"q @@sim:{directive}"}]
        )
        if stream:
            list(rsp)
    assert isinstance(info.value, openai.APIStatusError)
    assert info.value.status_code == status
    if status == 429:
        assert int(info.value.response.headers["retry-after"]) == 7200


def test_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "x"}])
    assert info.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])


@pytest.mark.parametrize("directive", ["internal_error", "quota_midstream", "moderation_output", "reset"])
def test_midstream_error_raises_api_error(fresh_base_url, directive):
    # A quota after partial output cools the account all the same: a proxy of its own.
    client = OpenAI(base_url=fresh_base_url, api_key="unused", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": f"q @@sim:{directive}"}]
    )
    received = ""
    with pytest.raises(openai.APIError):
        for c in stream:
            received += c.choices[0].delta.content or ""
    assert received, "partial content arrived before the error"
