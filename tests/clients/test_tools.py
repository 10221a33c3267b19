"""Function calling through real clients against the running `--demo` binary: the `openai`
SDK's own stream accumulators and parsers, a hand-written agent loop, LangChain (and
LangGraph's prebuilt ReAct agent) and the OpenAI Agents SDK.

The simulated model is scripted by directives in the last user turn or, in an agent loop, in
the newest tool result (README, "Simulator"): `@@sim:call=NAME,ARGS_B64` calls a tool,
`@@sim:call=NAME` builds the arguments from the tool's schema, `@@sim:reply=` replaces the
sentence said before the calls. Without a directive the model answers
`Simulated answer — 模拟回答: you said "<last line>".`, the last line of a tool result after a
tool step. Every expected value below is written out, never taken from the proxy's output.
"""

import asyncio
import base64
import json
import urllib.request
import warnings
from typing import Literal

import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel

MODEL = "qwen3.7-plus"
SAID = "I will use a tool for this."

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "default": "Berlin"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}, "precise": {"type": "boolean"}},
            "required": ["tz", "precise"],
        },
    },
}
TOOLS = [WEATHER, TIME]


def b64(args):
    """base64url, no padding, of the arguments as JSON with spaces (the proxy compacts them)."""
    return base64.urlsafe_b64encode(json.dumps(args).encode()).decode().rstrip("=")


def fast(prompt):
    """No pacing (frames still 4 characters each): most tests need no realistic timing; the
    streaming tests without it keep the demo's 150 ms to the first token, 25 ms per frame."""
    return prompt + " @@sim:delay=0 @@sim:ttft=0"


def call(name, args=None):
    return f"@@sim:call={name}" + ("" if args is None else f",{b64(args)}")


def sim_stats(demo):
    with urllib.request.urlopen(demo["sim_url"] + "/__sim/stats", timeout=10) as r:
        return json.load(r)


def accumulate(stream, tools):
    """The SDK's own accumulator over a raw `create(stream=True)`; also returns the chunks."""
    state = ChatCompletionStreamState(input_tools=tools)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        state.handle_chunk(chunk)
    return state.get_final_completion(), chunks


def sdk_helper(client, name):
    """`client.chat.completions.stream/parse`, or their `beta` home in older SDKs."""
    return getattr(client.chat.completions, name, None) or getattr(client.beta.chat.completions, name)


@pytest.fixture()
def client(base_url):
    return OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=30)


# --- the openai SDK ----------------------------------------------------------------------


def test_stream_single_call_accumulated_by_the_sdk(client):
    prompt = "What is the weather in Paris?\n" + call("get_weather", {"city": "Paris", "unit": "celsius"})
    stream = client.chat.completions.create(
        model=MODEL, stream=True, tools=TOOLS, messages=[{"role": "user", "content": prompt}]
    )
    final, chunks = accumulate(stream, TOOLS)

    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content.strip() == SAID
    [tc] = choice.message.tool_calls
    assert tc.type == "function"
    assert tc.id.startswith("call_") and len(tc.id) == len("call_") + 24
    assert tc.function.name == "get_weather"
    assert tc.function.arguments == '{"city":"Paris","unit":"celsius"}'
    assert json.loads(tc.function.arguments) == {"city": "Paris", "unit": "celsius"}

    # The wire shape: one opening delta with id/type/name and empty arguments, then argument
    # deltas carrying only index and function.arguments.
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) >= 2
    first, rest = deltas[0], deltas[1:]
    assert (first.index, first.id, first.type, first.function.name, first.function.arguments) == (
        0, tc.id, "function", "get_weather", ""
    )
    for d in rest:
        assert d.index == 0 and d.id is None and d.type is None and d.function.name is None
    assert "".join(d.function.arguments for d in rest) == '{"city":"Paris","unit":"celsius"}'
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stream_parallel_calls(client):
    prompt = (
        "Weather in Paris and the time in Tokyo, please. "
        + call("get_weather", {"city": "Paris", "unit": "fahrenheit"})
        + " "
        + call("get_time", {"tz": "Asia/Tokyo", "precise": False})
    )
    stream = client.chat.completions.create(
        model=MODEL, stream=True, tools=TOOLS, messages=[{"role": "user", "content": prompt}]
    )
    final, chunks = accumulate(stream, TOOLS)

    assert final.choices[0].finish_reason == "tool_calls"
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "fahrenheit"}),
        ("get_time", {"tz": "Asia/Tokyo", "precise": False}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)
    opening = [d for c in chunks for d in (c.choices[0].delta.tool_calls or []) if d.id is not None]
    assert [(d.index, d.function.name) for d in opening] == [(0, "get_weather"), (1, "get_time")]


@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls_false_keeps_the_first(client, stream):
    prompt = fast("two calls " + call("get_time", {"tz": "UTC", "precise": True}) + " " + call("get_weather"))
    rsp = client.chat.completions.create(
        model=MODEL, stream=stream, tools=TOOLS, parallel_tool_calls=False,
        messages=[{"role": "user", "content": prompt}],
    )
    final = accumulate(rsp, TOOLS)[0] if stream else rsp
    assert final.choices[0].finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.choices[0].message.tool_calls] == [
        ("get_time", {"tz": "UTC", "precise": True})
    ]


def test_non_stream_call_has_null_content(client):
    prompt = fast("Weather in Lima? @@sim:reply= " + call("get_weather", {"city": "Lima", "unit": "celsius"}))
    rsp = client.chat.completions.create(model=MODEL, tools=TOOLS, messages=[{"role": "user", "content": prompt}])
    choice = rsp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.function_call is None
    [tc] = choice.message.tool_calls
    assert tc.id.startswith("call_")
    assert tc.function.name == "get_weather"
    assert json.loads(tc.function.arguments) == {"city": "Lima", "unit": "celsius"}


class GetForecast(BaseModel):
    city: str
    unit: Literal["celsius", "fahrenheit"]
    days: int


def test_stream_helper_with_a_strict_pydantic_tool(client):
    tool = openai.pydantic_function_tool(GetForecast)
    assert tool["function"]["strict"] is True
    prompt = "Forecast for Oslo. " + call("GetForecast", {"city": "Oslo", "unit": "fahrenheit", "days": 3})
    with sdk_helper(client, "stream")(
        model=MODEL, tools=[tool], messages=[{"role": "user", "content": prompt}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    arg_deltas = [e for e in events if e.type == "tool_calls.function.arguments.delta"]
    done = [e for e in events if e.type == "tool_calls.function.arguments.done"]
    assert len(done) == 1
    assert (done[0].index, done[0].name) == (0, "GetForecast")
    assert json.loads(done[0].arguments) == {"city": "Oslo", "unit": "fahrenheit", "days": 3}
    assert done[0].parsed_arguments == GetForecast(city="Oslo", unit="fahrenheit", days=3)
    assert "".join(e.arguments_delta for e in arg_deltas) == done[0].arguments

    assert final.choices[0].finish_reason == "tool_calls"
    [tc] = final.choices[0].message.tool_calls
    assert tc.id.startswith("call_")
    parsed = tc.function.parsed_arguments
    assert isinstance(parsed, GetForecast)
    assert (parsed.city, parsed.unit, parsed.days) == ("Oslo", "fahrenheit", 3)


def test_parse_with_a_pydantic_tool_and_schema_built_arguments(client):
    # No arguments in the directive: the simulated model builds them from the strict schema
    # (first enum value, "sim" for a string, 1 for an integer).
    rsp = sdk_helper(client, "parse")(
        model=MODEL,
        tools=[openai.pydantic_function_tool(GetForecast)],
        messages=[{"role": "user", "content": fast("Any forecast. " + call("GetForecast"))}],
    )
    assert rsp.choices[0].finish_reason == "tool_calls"
    [tc] = rsp.choices[0].message.tool_calls
    assert tc.function.name == "GetForecast"
    assert tc.function.parsed_arguments == GetForecast(city="sim", unit="celsius", days=1)


def test_stream_helper_with_a_response_format_model_gets_unfenced_json(client):
    # tool-calling.md §6 test 45: the model fences its JSON; the SDK parses every prefix of
    # the content while streaming and the whole of it at the end.
    fenced = '```json\n{"city": "Oslo", "unit": "celsius", "days": 2}\n```'
    reply = base64.urlsafe_b64encode(fenced.encode()).decode().rstrip("=")
    prompt = fast(f"Forecast as JSON. @@sim:reply={reply}")
    with sdk_helper(client, "stream")(
        model=MODEL, response_format=GetForecast, messages=[{"role": "user", "content": prompt}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()

    content = "".join(e.delta for e in events if e.type == "content.delta")
    assert content == '{"city": "Oslo", "unit": "celsius", "days": 2}'
    [done] = [e for e in events if e.type == "content.done"]
    assert done.parsed == GetForecast(city="Oslo", unit="celsius", days=2)
    assert final.choices[0].message.parsed == GetForecast(city="Oslo", unit="celsius", days=2)
    assert final.choices[0].finish_reason == "stop"


# --- tool_choice -------------------------------------------------------------------------


def test_tool_choice_required_retries_with_a_hint(client, demo):
    before = sim_stats(demo)
    rsp = client.chat.completions.create(
        model=MODEL, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": fast("Tell me something nice.")}],
    )
    after = sim_stats(demo)
    assert after["completions"] - before["completions"] == 2, "one answer without a call, one retry"
    assert rsp.choices[0].finish_reason == "tool_calls"
    # The first tool, its arguments from the schema: the default city and the first enum unit.
    assert [(c.function.name, json.loads(c.function.arguments)) for c in rsp.choices[0].message.tool_calls] == [
        ("get_weather", {"city": "Berlin", "unit": "celsius"})
    ]


def test_tool_choice_named_streams_the_named_tool(client):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        messages=[{"role": "user", "content": fast("Just chatting.")}],
    )
    final, _ = accumulate(stream, TOOLS)
    assert final.choices[0].finish_reason == "tool_calls"
    [tc] = final.choices[0].message.tool_calls
    assert tc.function.name == "get_time"
    assert json.loads(tc.function.arguments) == {"tz": "sim", "precise": True}


def test_tool_choice_allowed_tools_required(client):
    rsp = client.chat.completions.create(
        model=MODEL, tools=TOOLS,
        tool_choice={
            "type": "allowed_tools",
            "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_time"}}]},
        },
        messages=[{"role": "user", "content": fast("Only the clock.")}],
    )
    assert [c.function.name for c in rsp.choices[0].message.tool_calls] == ["get_time"]


def test_tool_choice_required_with_a_stubborn_model_streams_the_prose_once(client):
    stream = client.chat.completions.create(
        model=MODEL, stream=True, tools=TOOLS, tool_choice="required",
        messages=[{"role": "user", "content": "I refuse tools @@sim:stubborn"}],
    )
    final, chunks = accumulate(stream, TOOLS)
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == 'Simulated answer — 模拟回答: you said "I refuse tools".'


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_none_answers_in_plain_text(client, stream):
    rsp = client.chat.completions.create(
        model=MODEL, stream=stream, tools=TOOLS, tool_choice="none",
        messages=[{"role": "user", "content": fast("No tools today.")}],
    )
    final = accumulate(rsp, TOOLS)[0] if stream else rsp
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == 'Simulated answer — 模拟回答: you said "No tools today.".'


def test_deprecated_functions_get_function_call(client):
    rsp = client.chat.completions.create(
        model=MODEL,
        functions=[WEATHER["function"], TIME["function"]],
        function_call={"name": "get_time"},
        messages=[{"role": "user", "content": fast("Clock? @@sim:reply= " + call("get_time", {"tz": "UTC", "precise": True}))}],
    )
    choice = rsp.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.content is None
    assert choice.message.function_call.name == "get_time"
    assert json.loads(choice.message.function_call.arguments) == {"tz": "UTC", "precise": True}


# --- agent loops -------------------------------------------------------------------------


def test_manual_agent_loop_stays_on_one_upstream_chat(client, demo):
    """Four model steps (one parallel): each tool result scripts the next step."""
    tools = [
        {"type": "function", "function": {"name": n, "description": n, "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
        for n in ("lookup", "compute", "store")
    ]
    # Per step: the calls the model must make, and the results the "tools" give back.
    script = [
        ([("lookup", {"q": "order 17"})],
         ["order 17: 2 items\n" + call("compute", {"q": "price a"}) + " " + call("compute", {"q": "price b"})]),
        ([("compute", {"q": "price a"}), ("compute", {"q": "price b"})],
         ["a costs 3", "b costs 4\n" + call("store", {"q": "total 7"})]),
        ([("store", {"q": "total 7"})],
         ["stored\n\n  total is 7, order closed  \n"]),
    ]
    messages = [
        {"role": "system", "content": "You are an order bot."},
        {"role": "user", "content": fast("Close order 17.\n" + call("lookup", {"q": "order 17"}))},
    ]
    before = sim_stats(demo)
    for step, (want_calls, results) in enumerate(script):
        if step % 2:
            message = accumulate(
                client.chat.completions.create(model=MODEL, stream=True, tools=tools, messages=messages), tools
            )[0].choices[0].message
        else:
            message = client.chat.completions.create(model=MODEL, tools=tools, messages=messages).choices[0].message
        calls = message.tool_calls or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == want_calls, f"step {step}"
        messages.append({
            "role": "assistant",
            # Agents send a calling turn's prose back as they like (Roo Code sends ""): the
            # proxy must recognise the turn by its calls alone.
            "content": message.content if step % 2 == 0 else "",
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        })
        messages += [{"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(calls, results)]

    final = client.chat.completions.create(model=MODEL, tools=tools, messages=messages)
    after = sim_stats(demo)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content == 'Simulated answer — 模拟回答: you said "total is 7, order closed".'
    assert after["chats_used"] - before["chats_used"] == 1, "the whole loop continued one chat"
    assert after["completions"] - before["completions"] == 4


# --- LangChain ---------------------------------------------------------------------------


def _langchain_add_tool(ran):
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> str:
        """Add two integers."""
        ran.append((a, b))
        return f"adding {a} and {b}\nthe sum is {a + b}"

    return add


def test_langchain_invoke_agent_loop(demo):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    ran = []
    add = _langchain_add_tool(ran)
    llm = ChatOpenAI(base_url=demo["base_url"], api_key="k", model=MODEL, max_retries=0, timeout=30).bind_tools([add])
    messages = [HumanMessage(fast("Add 2+3 and 10+20. " + call("add", {"a": 2, "b": 3}) + " " + call("add", {"a": 10, "b": 20})))]
    before = sim_stats(demo)
    for _ in range(4):
        ai = llm.invoke(messages)
        messages.append(ai)
        if not ai.tool_calls:
            break
        for tc in ai.tool_calls:
            result = add.invoke(tc)  # a ToolCall in, a ToolMessage with its id out
            assert isinstance(result, ToolMessage) and result.tool_call_id == tc["id"]
            messages.append(result)
    after = sim_stats(demo)

    assert ran == [(2, 3), (10, 20)]
    first = messages[1]
    assert isinstance(first, AIMessage)
    assert [(tc["name"], tc["args"]) for tc in first.tool_calls] == [("add", {"a": 2, "b": 3}), ("add", {"a": 10, "b": 20})]
    assert all(tc["id"].startswith("call_") for tc in first.tool_calls)
    assert first.response_metadata["finish_reason"] == "tool_calls"
    last = messages[-1]
    assert isinstance(last, AIMessage) and last.tool_calls == []
    assert last.content == 'Simulated answer — 模拟回答: you said "the sum is 30".'
    assert len(messages) == 5  # human, ai(2 calls), tool, tool, ai
    assert after["chats_used"] - before["chats_used"] == 1


def test_langchain_stream_agent_loop(demo):
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    ran = []
    add = _langchain_add_tool(ran)
    llm = ChatOpenAI(base_url=demo["base_url"], api_key="k", model=MODEL, max_retries=0, timeout=30).bind_tools([add])

    def streamed(messages):
        total = None
        for chunk in llm.stream(messages):
            total = chunk if total is None else total + chunk
        return total

    messages = [HumanMessage("Add 7 and 8. " + call("add", {"a": 7, "b": 8}))]
    ai = streamed(messages)
    assert len(ai.tool_calls) == 1
    tc = ai.tool_calls[0]
    assert (tc["name"], tc["args"]) == ("add", {"a": 7, "b": 8})
    assert tc["id"].startswith("call_")
    assert ai.invalid_tool_calls == []
    assert ai.content.strip() == SAID
    assert ai.response_metadata["finish_reason"] == "tool_calls"

    messages += [ai, add.invoke(tc)]
    answer = streamed(messages)
    assert ran == [(7, 8)]
    assert answer.tool_calls == []
    assert answer.content == 'Simulated answer — 模拟回答: you said "the sum is 15".'
    assert answer.response_metadata["finish_reason"] == "stop"


def test_langgraph_prebuilt_react_agent(demo):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of langchain.agents.create_agent
        try:
            from langgraph.prebuilt import create_react_agent
        except ImportError as e:  # pragma: no cover - only when langgraph is missing
            pytest.skip(f"langgraph prebuilt agent unavailable: {e}")

    ran = []

    @tool
    def multiply(a: int, b: int) -> str:
        """Multiply two integers."""
        ran.append((a, b))
        return f"the product is {a * b}"

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(
            ChatOpenAI(base_url=demo["base_url"], api_key="k", model=MODEL, max_retries=0, timeout=30), [multiply]
        )
    out = agent.invoke({"messages": [("user", fast("6 times 7? " + call("multiply", {"a": 6, "b": 7})))]})
    msgs = out["messages"]
    assert [type(m) for m in msgs] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert [(tc["name"], tc["args"]) for tc in msgs[1].tool_calls] == [("multiply", {"a": 6, "b": 7})]
    assert msgs[2].content == "the product is 42"
    assert ran == [(6, 7)]
    assert msgs[3].content == 'Simulated answer — 模拟回答: you said "the product is 42".'


# --- OpenAI Agents SDK -------------------------------------------------------------------


def test_openai_agents_sdk_runner(demo):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    ran = []

    @function_tool
    def get_capital(country: str) -> str:
        """Return the capital of a country."""
        ran.append(country)
        return f"The capital of {country} is Canberra."

    agent = Agent(
        name="geo",
        instructions="Answer with the tools you have.",
        tools=[get_capital],
        model=OpenAIChatCompletionsModel(
            model=MODEL,
            openai_client=openai.AsyncOpenAI(base_url=demo["base_url"], api_key="k", max_retries=0, timeout=30),
        ),
    )
    result = asyncio.run(
        Runner.run(agent, fast("Capital of Australia? " + call("get_capital", {"country": "Australia"})), max_turns=4)
    )
    assert ran == ["Australia"]
    assert result.final_output == 'Simulated answer — 模拟回答: you said "The capital of Australia is Canberra.".'
    kinds = [type(item).__name__ for item in result.new_items]
    assert "ToolCallItem" in kinds and "ToolCallOutputItem" in kinds
