"""The official `openai` Python SDK against the running `--demo` binary's Responses API
(`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`): `responses.create` (whole and
streamed), the `responses.stream` and `responses.parse` helpers, stored responses,
`previous_response_id`, `item_reference`, function, custom and namespace tools, and the
error classes.

Expected answers follow the simulator's documented rule (README, "Simulator"):
`Simulated answer — 模拟回答: you said "<last line of the prompt>".`, the last non-empty line
with the `@@sim:` directives removed; after a tool result, the result's last line. A call
(`@@sim:call=NAME,ARGS_B64`) comes after the sentence `I will use a tool for this.`. Every
expected value below is computed here, never taken from the proxy's output.
"""

import asyncio
import base64
import json
import re
import urllib.request

import openai
import pytest
from openai import OpenAI
from pydantic import BaseModel

MODEL = "qwen3.7-plus"
SAID = "I will use a tool for this."
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city's name"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    # strict: the SDK's helpers parse the arguments of a strict tool (`parsed_arguments`).
    "strict": True,
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch to the workspace (the `*** Begin Patch` format).",
}
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+Hello, world — 你好\n*** End Patch"


def last_line(prompt):
    """The prompt's last non-empty line, trimmed, its `@@sim:` directives removed."""
    return [line.strip() for line in re.sub(r"@@sim:\S+", "", prompt).splitlines() if line.strip()][-1]


def expected(prompt):
    return f'Simulated answer — 模拟回答: you said "{last_line(prompt)}".'


def expected_thinking(prompt):
    return f'The user wrote: "{last_line(prompt)}".\n\nI will answer briefly — 简短回答。'


def b64(data):
    """base64url without padding (bytes, or anything else as JSON)."""
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def call(name, args):
    """`@@sim:call=NAME,ARGS_B64`: the simulated model calls NAME with these arguments."""
    return f"@@sim:call={name},{b64(args)}"


def fast(prompt):
    """No pacing (frames still 4 characters each) for the tests that need no realistic timing."""
    return prompt + " @@sim:delay=0 @@sim:ttft=0"


def sim_stats(demo):
    with urllib.request.urlopen(demo["sim_url"] + "/__sim/stats", timeout=10) as rsp:
        return json.load(rsp)


class Upstream:
    """The simulator's counters around a block: new upstream chats and completions."""

    def __init__(self, demo):
        self.demo = demo

    def __enter__(self):
        s = sim_stats(self.demo)
        self.chats0, self.completions0 = s["chats_used"], s["completions"]
        return self

    def __exit__(self, *exc):
        s = sim_stats(self.demo)
        self.chats = s["chats_used"] - self.chats0
        self.completions = s["completions"] - self.completions0


def make_client(base_url):
    # max_retries=0: each error class must surface as its exception, not be retried away.
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def client(base_url):
    return make_client(base_url)


def user(text):
    return {"role": "user", "content": text}


def check_usage(usage):
    for n in (usage.input_tokens, usage.output_tokens, usage.total_tokens):
        assert isinstance(n, int) and n > 0, usage
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def check_event_stream(events):
    """The stream's invariants: `response.created` first, one terminal event last,
    `sequence_number` strictly increasing from 0, every item event naming an item announced
    by `output_item.added` at its `output_index`."""
    types = [e.type for e in events]
    assert types[0] == "response.created", types
    assert types[1] == "response.in_progress", types
    terminal = {"response.completed", "response.incomplete", "response.failed"}
    assert types[-1] in terminal and not terminal & set(types[:-1]), types
    seq = [e.sequence_number for e in events]
    assert seq[0] == 0 and all(b > a for a, b in zip(seq, seq[1:])), seq
    added = {}
    for e in events:
        if e.type == "response.output_item.added":
            assert e.output_index not in added, "an output_index announced twice"
            assert e.output_index == len(added), "output indexes run 0, 1, …"
            added[e.output_index] = e.item.id
        elif getattr(e, "item_id", None) is not None:
            assert added.get(e.output_index) == e.item_id, (e.type, e.output_index, e.item_id, added)
        if e.type == "response.output_item.done":
            assert added.get(e.output_index) == e.item.id
    return added


# --- answers -------------------------------------------------------------------------------


def test_create_non_streamed(client):
    prompt = "First line\n  What is up?  "
    rsp = client.responses.create(model=MODEL, instructions="Be brief.", input=prompt)
    assert isinstance(rsp, openai.types.responses.Response)
    assert rsp.object == "response"
    assert rsp.id.startswith("resp_") and len(rsp.id) > len("resp_")
    assert rsp.status == "completed"
    assert rsp.error is None and rsp.incomplete_details is None
    assert rsp.model == MODEL
    assert rsp.output_text == expected(prompt)
    assert expected(prompt) == 'Simulated answer — 模拟回答: you said "What is up?".'
    [msg] = rsp.output
    assert msg.type == "message" and msg.role == "assistant" and msg.status == "completed"
    assert msg.id.startswith("msg_")
    assert [(c.type, c.text, c.annotations) for c in msg.content] == [("output_text", expected(prompt), [])]
    check_usage(rsp.usage)
    assert rsp.store is True, "store defaults to true"


def test_input_items_with_developer_and_history(client):
    # An easy-message list: a developer message, an earlier exchange, the new question.
    prompt = "And now the second question?"
    rsp = client.responses.create(
        model=MODEL,
        input=[
            {"role": "developer", "content": "Answer in one line."},
            user("The first question"),
            {"role": "assistant", "content": "The first answer"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": fast(prompt)}]},
        ],
    )
    assert rsp.output_text == expected(prompt)


def test_stream_helper_accumulates(client):
    # `@@sim:split`: the upstream's frames arrive cut at arbitrary bytes (inside UTF-8 too).
    prompt = "Hello, Responses @@sim:split"
    with client.responses.stream(model=MODEL, input=prompt) as stream:
        events = list(stream)
        final = stream.get_final_response()
    added = check_event_stream(events)
    assert events[-1].type == "response.completed"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1, "the answer streamed in several deltas"
    assert "".join(d.delta for d in deltas) == expected(prompt)
    # The helper's own `snapshot` is the text so far.
    assert deltas[-1].snapshot == expected(prompt)
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.text == expected(prompt)
    assert final.id == events[0].response.id and final.id.startswith("resp_")
    assert final.status == "completed"
    assert final.model == MODEL
    assert final.output_text == expected(prompt)
    assert [o.id for o in final.output] == [added[0]]
    check_usage(final.usage)


def test_async_client_stream_helper(base_url):
    prompt = "Async hello"

    async def run():
        async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30) as aclient:
            async with aclient.responses.stream(model=MODEL, input=prompt) as stream:
                events = [e async for e in stream]
                final = await stream.get_final_response()
            return events, final

    events, final = asyncio.run(run())
    check_event_stream(events)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected(prompt)
    assert final.output_text == expected(prompt) and final.status == "completed"


def test_raw_stream_events_in_order(client):
    prompt = "Raw events, please"
    stream = client.responses.create(model=MODEL, input=prompt, stream=True)
    events = list(stream)
    check_event_stream(events)
    types = [e.type for e in events]
    # One message: its events in the documented order.
    n = types.count("response.output_text.delta")
    assert n > 1
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * n,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    assert events[0].response.status == "in_progress"
    assert isinstance(events[-1], openai.types.responses.ResponseCompletedEvent)
    completed = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected(prompt)
    assert completed.output_text == text
    assert completed.status == "completed" and completed.id == events[0].response.id
    check_usage(completed.usage)
    item_done = events[-2].item
    assert item_done.type == "message" and item_done.content[0].text == text
    assert events[-3].part.text == text  # content_part.done


# --- tools ---------------------------------------------------------------------------------


def test_function_call_round_trip(client, demo):
    prompt = fast("What is the weather in Paris?\n" + call("get_weather", {"city": "Paris"}))
    result = "Paris, today:\nsunny, 21 °C"
    history = [user(prompt)]
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
        assert first.status == "completed"
        assert [o.type for o in first.output] == ["message", "function_call"]
        assert first.output[0].content[0].text.strip() == SAID
        fc = first.output[1]
        assert isinstance(fc, openai.types.responses.ResponseFunctionToolCall)
        assert fc.name == "get_weather"
        assert re.fullmatch(r"call_[A-Za-z0-9]+", fc.call_id), fc.call_id
        assert fc.id.startswith("fc_") and fc.status == "completed"
        assert json.loads(fc.arguments) == {"city": "Paris"}
        # The SDK's documented loop: the whole output goes back, then the tool's result.
        history += first.output
        history.append({"type": "function_call_output", "call_id": fc.call_id, "output": result})
        second = client.responses.create(model=MODEL, input=history, tools=[WEATHER])
    assert second.status == "completed"
    assert [o.type for o in second.output] == ["message"]
    assert second.output_text == expected(result)
    assert second.output_text == 'Simulated answer — 模拟回答: you said "sunny, 21 °C".'
    assert (up.chats, up.completions) == (1, 2), "both turns in one upstream chat"


def test_function_call_streamed_round_trip(client, demo):
    prompt = fast("Weather in Rome? " + call("get_weather", {"city": "Rome"}))
    result = "rain, 12 °C in Rome"
    with Upstream(demo) as up:
        with client.responses.stream(model=MODEL, input=prompt, tools=[WEATHER]) as stream:
            events = list(stream)
            first = stream.get_final_response()
        added = check_event_stream(events)
        [fc_added] = [e for e in events if e.type == "response.output_item.added" and e.item.type == "function_call"]
        assert fc_added.item.arguments == "" and fc_added.item.name == "get_weather"
        arg_deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
        assert arg_deltas and all(e.output_index == fc_added.output_index for e in arg_deltas)
        [args_done] = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert "".join(e.delta for e in arg_deltas) == args_done.arguments
        assert json.loads(args_done.arguments) == {"city": "Rome"}
        [fc_done] = [
            e for e in events if e.type == "response.output_item.done" and e.item.type == "function_call"
        ]
        # The done item is the whole call, as the final response holds it.
        assert fc_done.item.id == added[fc_done.output_index]
        assert (fc_done.item.name, fc_done.item.arguments, fc_done.item.status) == (
            "get_weather",
            args_done.arguments,
            "completed",
        )
        final_fc = first.output[-1]
        assert final_fc.type == "function_call"
        assert (final_fc.call_id, final_fc.id) == (fc_done.item.call_id, fc_done.item.id)
        # The helper parses a strict tool's arguments.
        assert final_fc.parsed_arguments == {"city": "Rome"}

        with client.responses.stream(
            model=MODEL,
            tools=[WEATHER],
            input=[
                user(prompt),
                *first.output,
                {"type": "function_call_output", "call_id": final_fc.call_id, "output": result},
            ],
        ) as stream:
            second = stream.get_final_response()
    assert second.output_text == expected(result)
    assert (up.chats, up.completions) == (1, 2), "both turns in one upstream chat"


def test_custom_tool_call_round_trip(client, demo):
    prompt = fast("Create hello.txt " + call("apply_patch", {"input": PATCH}))
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=prompt, tools=[APPLY_PATCH])
        ctc = first.output[-1]
        assert isinstance(ctc, openai.types.responses.ResponseCustomToolCall)
        assert ctc.type == "custom_tool_call"
        assert ctc.name == "apply_patch"
        assert ctc.input == PATCH, "the free-form input, not JSON"
        assert re.fullmatch(r"call_[A-Za-z0-9]+", ctc.call_id)
        second = client.responses.create(
            model=MODEL,
            tools=[APPLY_PATCH],
            input=[
                user(prompt),
                *first.output,
                {"type": "custom_tool_call_output", "call_id": ctc.call_id, "output": "Done!\nhello.txt created"},
            ],
        )
    assert second.output_text == expected("hello.txt created")
    assert (up.chats, up.completions) == (1, 2)


def test_custom_tool_call_streamed(client):
    prompt = fast("Patch it " + call("apply_patch", {"input": PATCH}))
    events = list(client.responses.create(model=MODEL, input=prompt, tools=[APPLY_PATCH], stream=True))
    check_event_stream(events)
    deltas = [e.delta for e in events if e.type == "response.custom_tool_call_input.delta"]
    [done] = [e for e in events if e.type == "response.custom_tool_call_input.done"]
    assert "".join(deltas) == done.input == PATCH
    [item] = [e.item for e in events if e.type == "response.output_item.done" and e.item.type == "custom_tool_call"]
    assert (item.name, item.input) == ("apply_patch", PATCH)
    assert events[-1].response.output[-1].input == PATCH


def test_namespace_tool_call_names_its_namespace(client):
    # Codex's MCP servers: a namespace of functions; the model knows `files__read_file`.
    files = {
        "type": "namespace",
        "name": "files",
        "description": "The workspace's files",
        "tools": [
            {
                "type": "function",
                "name": "read_file",
                "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
            }
        ],
    }
    rsp = client.responses.create(
        model=MODEL, input=fast("Read a.txt " + call("files__read_file", {"path": "a.txt"})), tools=[files]
    )
    fc = rsp.output[-1]
    assert fc.type == "function_call"
    assert (fc.namespace, fc.name) == ("files", "read_file")
    assert json.loads(fc.arguments) == {"path": "a.txt"}


def test_hosted_tools_are_ignored_and_named_in_a_header(client):
    prompt = fast("Just answer")
    raw = client.responses.with_raw_response.create(
        model=MODEL,
        input=prompt,
        tools=[
            WEATHER,
            {"type": "file_search", "vector_store_ids": ["vs_123"]},
            {"type": "code_interpreter", "container": {"type": "auto"}},
        ],
    )
    assert raw.headers["x-qwen-proxy-ignored-tools"] == "file_search, code_interpreter"
    assert raw.parse().output_text == expected(prompt)


def test_web_search_answers_with_url_citations(client):
    # The hosted `web_search` as the only tool: the upstream's own search (README "Simulator":
    # three sources, the answer cites 1 and 2 with `[[N]]` markers; "Search sources": each
    # marker is a `url_citation` over its characters, an uncited source an empty range at
    # the end).
    query = "news today"
    text = f'Simulated answer — 模拟回答[[1]]: you said "{query}".[[2]]'
    one, two = text.index("[[1]]"), text.index("[[2]]")
    want = [
        ("url_citation", one, one + 5, "https://example.com/search/1/news-today", f"Result 1: {query}"),
        ("url_citation", two, two + 5, "https://example.org/search/2/news-today", f"Result 2: {query}"),
        ("url_citation", len(text), len(text), "https://example.net/search/3/news-today", f"Result 3: {query}"),
    ]

    def annotations(anns):
        return [(a.type, a.start_index, a.end_index, a.url, a.title) for a in anns]

    rsp = client.responses.create(model=MODEL, input=fast(query), tools=[{"type": "web_search"}])
    assert rsp.output_text == text
    assert annotations(rsp.output[-1].content[0].annotations) == want

    events = list(client.responses.create(model=MODEL, input=fast(query), tools=[{"type": "web_search"}], stream=True))
    check_event_stream(events)
    added = [e for e in events if e.type == "response.output_text.annotation.added"]
    assert [e.annotation_index for e in added] == [0, 1, 2]
    assert annotations([e.annotation for e in added]) == want
    assert annotations(events[-1].response.output[-1].content[0].annotations) == want


# --- conversation state --------------------------------------------------------------------


def test_previous_response_id_continues_one_chat(client, demo):
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=fast("My name is Ada."))
        second = client.responses.create(
            model=MODEL, input=fast("What is my name?"), previous_response_id=first.id
        )
        third = client.responses.create(
            model=MODEL, input=[user(fast("And my surname?"))], previous_response_id=second.id
        )
    assert first.output_text == expected("My name is Ada.")
    assert second.output_text == expected("What is my name?")
    assert third.output_text == expected("And my surname?")
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    assert len({first.id, second.id, third.id}) == 3
    assert (up.chats, up.completions) == (1, 3), "the proxy rebuilt the history and continued the chat"


def test_previous_response_id_with_a_tool_result(client, demo):
    # The Responses API's own agent loop: only the call's output goes back.
    prompt = fast("Weather in Oslo? " + call("get_weather", {"city": "Oslo"}))
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=prompt, tools=[WEATHER])
        fc = first.output[-1]
        assert fc.type == "function_call"
        second = client.responses.create(
            model=MODEL,
            tools=[WEATHER],
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": fc.call_id, "output": "snow, -3 °C"}],
        )
    assert second.output_text == expected("snow, -3 °C")
    assert (up.chats, up.completions) == (1, 2)


def test_item_reference_resolves_a_stored_item(client, demo):
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=fast("Remember the number 7."))
        second = client.responses.create(
            model=MODEL,
            input=[
                user(fast("Remember the number 7.")),
                {"type": "item_reference", "id": first.output[0].id},
                user(fast("Which number?")),
            ],
        )
    assert second.output_text == expected("Which number?")
    assert (up.chats, up.completions) == (1, 2), "the referenced item made the same history"
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(
            model=MODEL, input=[{"type": "item_reference", "id": "msg_unknown"}, user("x")]
        )
    assert info.value.status_code == 400


def test_parallel_calls_sent_back_by_reference(client, demo):
    # Two calls in one answer; the next turn names the stored items (the message and both
    # calls) by `item_reference` and adds both results. The answer quotes the last result.
    lima, quito = call("get_weather", {"city": "Lima"}), call("get_weather", {"city": "Quito"})
    prompt = fast(f"Weather in Lima and Quito? {lima} {quito}")
    with Upstream(demo) as up:
        first = client.responses.create(model=MODEL, input=prompt, tools=[WEATHER])
        calls = [o for o in first.output if o.type == "function_call"]
        assert [json.loads(c.arguments) for c in calls] == [{"city": "Lima"}, {"city": "Quito"}]
        assert len({c.call_id for c in calls}) == 2
        second = client.responses.create(
            model=MODEL,
            tools=[WEATHER],
            input=[
                user(prompt),
                *[{"type": "item_reference", "id": o.id} for o in first.output],
                {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Lima: 19 °C"},
                {"type": "function_call_output", "call_id": calls[1].call_id, "output": "Quito: 14 °C"},
            ],
        )
    assert second.output_text == expected("Quito: 14 °C")
    assert (up.chats, up.completions) == (1, 2)


def test_unknown_previous_response_id_is_a_bad_request(client, demo):
    with Upstream(demo) as up, pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_doesnotexist")
    assert info.value.status_code == 400
    assert info.value.param == "previous_response_id"
    assert "resp_doesnotexist" in info.value.message
    assert up.completions == 0


def test_retrieve_and_delete_a_stored_response(client):
    prompt = fast("Keep this one")
    rsp = client.responses.create(model=MODEL, input=prompt)
    got = client.responses.retrieve(rsp.id)
    assert isinstance(got, openai.types.responses.Response)
    assert got.id == rsp.id and got.status == "completed"
    assert got.output_text == rsp.output_text == expected(prompt)
    assert [o.id for o in got.output] == [o.id for o in rsp.output]

    assert client.responses.delete(rsp.id) is None
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(rsp.id)
    assert info.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(rsp.id)
    # Its history is gone too.
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="again", previous_response_id=rsp.id)
    assert info.value.param == "previous_response_id"


def test_a_streamed_response_is_stored_too(client):
    prompt = fast("Streamed and kept")
    with client.responses.stream(model=MODEL, input=prompt) as stream:
        final = stream.get_final_response()
    got = client.responses.retrieve(final.id)
    assert got.status == "completed"
    assert got.output_text == expected(prompt)


def test_store_false_is_not_kept(client):
    rsp = client.responses.create(model=MODEL, input=fast("Forget this one"), store=False)
    assert rsp.output_text == expected("Forget this one")
    assert rsp.store is False
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.retrieve(rsp.id)
    assert info.value.status_code == 404
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="next", previous_response_id=rsp.id)
    assert info.value.param == "previous_response_id"


# --- options -------------------------------------------------------------------------------


class Forecast(BaseModel):
    city: str
    days: int


def test_json_schema_output_parses(client):
    # The simulated model fences its JSON (as real models do); JSON mode unfences it, and
    # the SDK's `parse` helper validates the text against the model class.
    fenced = '```json\n{"city": "Oslo", "days": 2}\n```'
    prompt = fast(f"Forecast as JSON. @@sim:reply={b64(fenced.encode())}")
    rsp = client.responses.parse(model=MODEL, input=prompt, text_format=Forecast)
    assert rsp.output_text == '{"city": "Oslo", "days": 2}'
    assert json.loads(rsp.output_text) == {"city": "Oslo", "days": 2}
    assert rsp.output_parsed == Forecast(city="Oslo", days=2)
    assert rsp.text.format.type == "json_schema"

    with client.responses.stream(model=MODEL, input=prompt, text_format=Forecast) as stream:
        events = list(stream)
        final = stream.get_final_response()
    [done] = [e for e in events if e.type == "response.output_text.done"]
    assert done.parsed == Forecast(city="Oslo", days=2)
    assert final.output_parsed == Forecast(city="Oslo", days=2)

    rsp = client.responses.create(model=MODEL, input=prompt, text={"format": {"type": "json_object"}})
    assert json.loads(rsp.output_text) == {"city": "Oslo", "days": 2}


def test_reasoning_effort_brings_a_reasoning_item(client):
    prompt = fast("Think about it")
    rsp = client.responses.create(model=MODEL, input=prompt, reasoning={"effort": "high"})
    assert [o.type for o in rsp.output] == ["reasoning", "message"]
    assert [s.text for s in rsp.output[0].summary] == [expected_thinking(prompt)]
    assert rsp.output_text == expected(prompt)
    assert rsp.reasoning.effort == "high"
    assert rsp.usage.output_tokens_details.reasoning_tokens > 0

    events = list(client.responses.create(model=MODEL, input=prompt, reasoning={"effort": "medium"}, stream=True))
    check_event_stream(events)
    summary = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert summary == expected_thinking(prompt)
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == expected(prompt)

    rsp = client.responses.create(model=MODEL, input=prompt, reasoning={"effort": "none"})
    assert [o.type for o in rsp.output] == ["message"]


def test_max_output_tokens_makes_an_incomplete_response(client):
    prompt = fast("Tell me everything @@sim:long=400")
    rsp = client.responses.create(model=MODEL, input=prompt, max_output_tokens=16)
    assert rsp.status == "incomplete"
    assert rsp.incomplete_details.reason == "max_output_tokens"
    assert rsp.max_output_tokens == 16
    assert 0 < rsp.usage.output_tokens <= 16
    assert rsp.output_text

    events = list(client.responses.create(model=MODEL, input=prompt, max_output_tokens=16, stream=True))
    check_event_stream(events)
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_not_found(client, stream):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input="x", stream=stream)
    assert info.value.status_code == 404
    assert info.value.param == "model"


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({}, "input"),
        ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "text": {"format": {"type": "json_schema", "name": "f"}}}, "text.format.schema"),
        ({"input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
    ],
)
def test_bad_fields_are_bad_requests(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, **kwargs)
    assert info.value.status_code == 400
    assert info.value.param == param


def test_upstream_failure_before_the_answer_raises(fresh_base_url):
    # A demo of its own (conftest): an upstream failure weighs on the demo's only account.
    client = make_client(fresh_base_url)
    with pytest.raises(openai.InternalServerError) as info:
        client.responses.create(model=MODEL, input="q @@sim:overload")
    assert info.value.status_code == 503


def test_failure_mid_stream_ends_with_response_failed(fresh_base_url):
    client = make_client(fresh_base_url)
    prompt = "go @@sim:internal_error"
    # Raw iteration: the stream ends with `response.failed`, no exception.
    events = list(client.responses.create(model=MODEL, input=prompt, stream=True))
    check_event_stream(events)
    types = [e.type for e in events]
    assert "response.output_text.delta" in types, "partial text came before the failure"
    assert types[-1] == "response.failed" and "response.completed" not in types
    failed = events[-1]
    assert isinstance(failed, openai.types.responses.ResponseFailedEvent)
    assert failed.response.status == "failed"
    assert failed.response.id == events[0].response.id
    assert failed.response.error.code and failed.response.error.message

    # The helper passes the event on; `get_final_response()` has no completed response to
    # give and raises (openai/lib/streaming/responses/_responses.py: "Didn't receive a
    # `response.completed` event.").
    with client.responses.stream(model=MODEL, input=prompt) as stream:
        events = list(stream)
        assert events[-1].type == "response.failed"
        assert events[-1].response.error.message
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()
