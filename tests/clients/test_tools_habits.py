"""The SDK agent loops of test_tools.py against a simulated model with a real model's habits
(`qwen-proxy --demo --habits SEED`, README "Simulator"): every completion that calls tools
writes its calls with one habit — the agent's own name of an aliased tool, a case variant,
a narrated batch without openers, the calls written only while thinking, text or an invented
result after a call, a fenced example first, a garbled closer or opener, native function
frames; the simulator's k-th such completion gets the habit SEED + k of its list, in cycles.

The proxy recovers a habit at once, or by one retry with a hint (which the simulated model
obeys), except in one case: a streamed request whose model wrote its calls only while
thinking and answered "I'll do that with the tools now." — the reasoning already went out,
so there is no retry, and the client gets that sentence as the answer, without a call, and a
note that no tool was run.

So each loop here either completes its task (every tool ran with the arguments the prompt
scripted, in order, and the final answer is the simulator's documented default answer to the
last tool result) or fails honestly (a streamed step answered exactly that sentence, with no
call; the tools that ran before it ran as scripted). Never does raw marker text reach the
client as the model's words. The last test checks from the simulator's `/__sim/stats` that
the loops really met the habits.

Tool results carry the next step's directives (`@@sim:call=…`) and `@@sim:delay=0
@@sim:ttft=0` (no pacing) on a line of their own; the default answer quotes the last line.
"""

import asyncio
import base64
import json
import urllib.request
import warnings

import openai
import pytest
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

MODEL = "qwen3.7-plus"
# The one answer a loop may end with instead of its task (the honest failure).
SENTENCE = "I'll do that with the tools now.\n\n(The model wrote its tool call while thinking, not in its answer; no tool was run.)"
FAST = "@@sim:delay=0 @@sim:ttft=0"
# Marker text that must never reach the client as the model's words (outside code fences).
MARKERS = ("[TOOL CALL", "[END TOOL", "TOOL RESULT", "<tool_call", '{"name"', "END_TOOL")
# Two simulators, each cycling through the habits from its own seed (every habit in nine
# completions with calls). With these seeds some streamed steps (of the manual loop,
# LangChain's stream, the Agents SDK's run_streamed) are written only while thinking with the
# sentence as the answer: the loops meet the honest failure as well as the recoveries.
SEEDS = (0, 10)
HABITS = {
    "own_name", "case_variant", "narrated_batch", "call_in_thinking", "trailing_text",
    "fenced_example", "mangled_closer", "mangled_opener", "native_frames",
}

# (loop id, outcome) of every loop that ran, for the summary at the end.
OUTCOMES = []
LOOPS = 0  # counted below, as the tests are defined


def b64(args):
    return base64.urlsafe_b64encode(json.dumps(args).encode()).decode().rstrip("=")


def call(name, args):
    return f"@@sim:call={name},{b64(args)}"


def then(text, *calls):
    """A tool result that makes the model call `calls` next."""
    return text + "\n" + " ".join([*calls, FAST])


def last(text):
    """A tool result the model answers by quoting `text`."""
    return FAST + "\n" + text


def answer(text):
    """The simulator's default answer after a tool result whose last line is `text`."""
    return f'Simulated answer — 模拟回答: you said "{text}".'


def sim_stats(demo):
    with urllib.request.urlopen(demo["sim_url"] + "/__sim/stats", timeout=10) as r:
        return json.load(r)


def outside_fences(text):
    return "".join(text.split("```")[::2])


def habits_met(demo, before):
    """The habits the simulator wrote calls with since `before` (its stats then), and the
    completions it answered since (retries included)."""
    now = sim_stats(demo)
    met = {h: n - before["habits"].get(h, 0) for h, n in now["habits"].items() if n > before["habits"].get(h, 0)}
    return met, now["completions"] - before["completions"]


def judge(loop, demo, before, *, said, ran, want_ran, final, final_calls, want_final, streamed):
    """Completed, or failed honestly (a streamed step only); never raw markers. `said`: every
    text the client got as the model's words; `ran`: the tools run, as (name, arguments);
    `before`: the simulator's stats before the loop."""
    met, completions = habits_met(demo, before)
    loop = f"{loop} (habits {json.dumps(met, sort_keys=True)}, {completions} upstream completions)"
    for text in said:
        for marker in MARKERS:
            assert marker not in outside_fences(text or ""), f"{loop}: raw {marker!r} reached the client: {text!r}"
    if not final_calls and ran == want_ran and final == want_final:
        outcome = "completed"
    else:
        assert (final, final_calls) == (SENTENCE, []), (
            f"{loop}: neither completed nor failed honestly: ran {ran}, final {final!r}, calls {final_calls}"
        )
        assert streamed, f"{loop}: a non-streamed request has a retry left; it must not fail"
        assert len(ran) < len(want_ran) and ran == want_ran[: len(ran)], f"{loop}: ran {ran}"
        outcome = "failed honestly"
    OUTCOMES.append((loop, outcome))


def cases(*variants):
    """(seed, variant) for every seed; counts the loops."""
    global LOOPS
    out = [pytest.param(seed, v, id=f"seed{seed}-{v}") for seed in SEEDS for v in variants]
    LOOPS += len(out)
    return out


def accumulate(stream, tools):
    state = ChatCompletionStreamState(input_tools=tools)
    for chunk in stream:
        state.handle_chunk(chunk)
    return state.get_final_completion()


# --- the openai SDK: a hand-written loop ------------------------------------------------


@pytest.mark.parametrize("seed,parity", cases(0, 1))
def test_manual_agent_loop(habits_demo, seed, parity):
    """Four model steps (one parallel), every other one streamed; `web_search` is a name the
    proxy shows under an alias (the model may write the agent's own name)."""
    demo = habits_demo(seed)
    client = OpenAI(base_url=demo["base_url"], api_key="unused", max_retries=0, timeout=30)
    tools = [
        {"type": "function", "function": {"name": n, "description": n, "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}}
        for n in ("web_search", "compute", "store")
    ]
    order = 17 + parity
    results = {
        ("web_search", f"order {order}"): then(
            f"order {order}: 2 items", call("compute", {"q": "price a"}), call("compute", {"q": "price b"})
        ),
        ("compute", "price a"): "a costs 3",
        ("compute", "price b"): then("b costs 4", call("store", {"q": "total 7"})),
        ("store", "total 7"): last(f"total is 7, order {order} closed"),
    }
    want_ran = [(name, {"q": q}) for name, q in results]
    messages = [
        {"role": "system", "content": "You are an order bot."},
        {"role": "user", "content": f"Close order {order}.\n" + call("web_search", {"q": f"order {order}"}) + " " + FAST},
    ]
    ran, said = [], []
    before = sim_stats(demo)
    for step in range(5):
        streamed = step % 2 == parity
        if streamed:
            stream = client.chat.completions.create(model=MODEL, stream=True, tools=tools, messages=messages)
            message = accumulate(stream, tools).choices[0].message
        else:
            message = client.chat.completions.create(model=MODEL, tools=tools, messages=messages).choices[0].message
        said.append(message.content)
        calls = message.tool_calls or []
        if not calls:
            break
        messages.append({
            "role": "assistant",
            "content": message.content or "",
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in calls
            ],
        })
        for c in calls:
            args = json.loads(c.function.arguments)
            ran.append((c.function.name, args))
            result = results.get((c.function.name, args.get("q")), "no such thing")
            messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    judge(
        f"manual loop, seed {seed}, parity {parity}", demo, before, said=said, ran=ran, want_ran=want_ran,
        final=message.content, final_calls=[c.function.name for c in calls],
        want_final=answer(f"total is 7, order {order} closed"), streamed=streamed,
    )


# --- LangChain ---------------------------------------------------------------------------


def langchain_tools(ran, results):
    """`add` and Claude Code's `Read` (shown to the model under an alias); their results
    come from `results`, by arguments."""
    from langchain_core.tools import tool

    @tool
    def add(a: int, b: int) -> str:
        """Add two integers."""
        ran.append(("add", {"a": a, "b": b}))
        return results.get(("add", a, b), f"adding {a} and {b}\n{FAST}\nthe sum is {a + b}")

    @tool("Read")
    def read(file_path: str) -> str:
        """Read a file."""
        ran.append(("Read", {"file_path": file_path}))
        return results.get(("Read", file_path), "no such file")

    return [add, read]


# Per variant: the prompt's calls, the results that script the next steps, the tools that
# must run and the final answer.
LANGCHAIN_SCRIPTS = {
    "parallel": (
        [("add", {"a": 2, "b": 3}), ("add", {"a": 10, "b": 20})],
        {},
        [("add", {"a": 2, "b": 3}), ("add", {"a": 10, "b": 20})],
        answer("the sum is 30"),
    ),
    "read then add": (
        [("Read", {"file_path": "/srv/notes.txt"})],
        {("Read", "/srv/notes.txt"): then("notes: add 4 and 5", call("add", {"a": 4, "b": 5}))},
        [("Read", {"file_path": "/srv/notes.txt"}), ("add", {"a": 4, "b": 5})],
        answer("the sum is 9"),
    ),
    "add twice": (
        [("add", {"a": 7, "b": 8})],
        {("add", 7, 8): then("the sum is 15", call("add", {"a": 15, "b": 1}))},
        [("add", {"a": 7, "b": 8}), ("add", {"a": 15, "b": 1})],
        answer("the sum is 16"),
    ),
}


def langchain_loop(demo, variant, step):
    """A LangChain agent loop: `step(llm, messages)` asks the model; tool calls run until an
    answer without calls (at most five steps)."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    first, results, want_ran, want_final = LANGCHAIN_SCRIPTS[variant]
    ran = []
    tools = {t.name: t for t in langchain_tools(ran, results)}
    llm = ChatOpenAI(base_url=demo["base_url"], api_key="k", model=MODEL, max_retries=0, timeout=30).bind_tools(
        list(tools.values())
    )
    prompt = f"Do this ({variant}). " + " ".join(call(n, a) for n, a in first) + " " + FAST
    messages = [HumanMessage(prompt)]
    said = []
    before = sim_stats(demo)
    for _ in range(5):
        ai = step(llm, messages)
        said.append(ai.content)
        assert ai.invalid_tool_calls == [], ai.invalid_tool_calls
        messages.append(ai)
        if not ai.tool_calls:
            break
        for tc in ai.tool_calls:
            if tc["name"] in tools:
                messages.append(tools[tc["name"]].invoke(tc))  # a ToolMessage with the call's id
            else:
                ran.append((tc["name"], tc["args"]))
                messages.append(ToolMessage("no such tool", tool_call_id=tc["id"]))
    return dict(
        demo=demo, before=before, said=said, ran=ran, want_ran=want_ran,
        final=ai.content, final_calls=ai.tool_calls, want_final=want_final,
    )


@pytest.mark.parametrize("seed,variant", cases("parallel", "read then add"))
def test_langchain_invoke_agent_loop(habits_demo, seed, variant):
    outcome = langchain_loop(habits_demo(seed), variant, lambda llm, messages: llm.invoke(messages))
    judge(f"LangChain invoke, seed {seed}, {variant}", streamed=False, **outcome)


def _streamed(llm, messages):
    total = None
    for chunk in llm.stream(messages):
        total = chunk if total is None else total + chunk
    return total


@pytest.mark.parametrize("seed,variant", cases("add twice", "read then add"))
def test_langchain_stream_agent_loop(habits_demo, seed, variant):
    outcome = langchain_loop(habits_demo(seed), variant, _streamed)
    judge(f"LangChain stream, seed {seed}, {variant}", streamed=True, **outcome)


@pytest.mark.parametrize("seed,mode", cases("invoke", "stream"))
def test_langgraph_prebuilt_react_agent(habits_demo, seed, mode):
    """LangGraph's prebuilt ReAct agent: two multiplications, then the answer; `stream` runs
    the graph with stream_mode messages (the model then streams)."""
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in favour of langchain.agents.create_agent
        from langgraph.prebuilt import create_react_agent

    demo = habits_demo(seed)
    ran = []
    a, b = (6, 7) if mode == "invoke" else (3, 5)

    @tool
    def multiply(a: int, b: int) -> str:
        """Multiply two integers."""
        ran.append(("multiply", {"a": a, "b": b}))
        if len(ran) == 1:
            return then(f"the product is {a * b}", call("multiply", {"a": a * b, "b": 2}))
        return last(f"the product is {a * b}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agent = create_react_agent(
            ChatOpenAI(base_url=demo["base_url"], api_key="k", model=MODEL, max_retries=0, timeout=30), [multiply]
        )
    inputs = {"messages": [("user", f"{a} times {b}, doubled? " + call("multiply", {"a": a, "b": b}) + " " + FAST)]}
    before = sim_stats(demo)
    if mode == "invoke":
        msgs = agent.invoke(inputs)["messages"]
    else:
        state = None
        for kind, chunk in agent.stream(inputs, stream_mode=["messages", "values"]):
            if kind == "values":
                state = chunk
        msgs = state["messages"]
    answers = [m for m in msgs if isinstance(m, AIMessage)]
    judge(
        f"LangGraph ReAct {mode}, seed {seed}", demo, before, said=[m.content for m in answers], ran=ran,
        want_ran=[("multiply", {"a": a, "b": b}), ("multiply", {"a": a * b, "b": 2})],
        final=answers[-1].content, final_calls=answers[-1].tool_calls,
        want_final=answer(f"the product is {a * b * 2}"), streamed=mode == "stream",
    )


# --- OpenAI Agents SDK -------------------------------------------------------------------


@pytest.mark.parametrize("seed,mode", cases("run", "run_streamed"))
def test_openai_agents_sdk_runner(habits_demo, seed, mode):
    """Runner.run / Runner.run_streamed: a capital, then a `web_search` (aliased), then the
    answer."""
    from agents import (
        Agent, ItemHelpers, MessageOutputItem, OpenAIChatCompletionsModel, Runner, function_tool,
        set_tracing_disabled,
    )

    set_tracing_disabled(True)
    demo = habits_demo(seed)
    ran = []
    country, capital = ("Australia", "Canberra") if mode == "run" else ("Canada", "Ottawa")

    @function_tool
    def get_capital(country: str) -> str:
        """Return the capital of a country."""
        ran.append(("get_capital", {"country": country}))
        return then(f"The capital of {country} is {capital}.", call("web_search", {"query": f"{capital} population"}))

    @function_tool
    def web_search(query: str) -> str:
        """Search the web."""
        ran.append(("web_search", {"query": query}))
        return last(f"{query}: about half a million.")

    agent = Agent(
        name="geo",
        instructions="Answer with the tools you have.",
        tools=[get_capital, web_search],
        model=OpenAIChatCompletionsModel(
            model=MODEL,
            openai_client=openai.AsyncOpenAI(base_url=demo["base_url"], api_key="k", max_retries=0, timeout=30),
        ),
    )
    prompt = f"Capital of {country}, and its size? " + call("get_capital", {"country": country}) + " " + FAST

    async def run():
        if mode == "run":
            return await Runner.run(agent, prompt, max_turns=5)
        result = Runner.run_streamed(agent, prompt, max_turns=5)
        async for _ in result.stream_events():
            pass
        return result

    before = sim_stats(demo)
    result = asyncio.run(run())
    said = [ItemHelpers.text_message_output(i) for i in result.new_items if isinstance(i, MessageOutputItem)]
    last_calls = []
    for item in reversed(result.new_items):
        if type(item).__name__ == "MessageOutputItem":
            break
        if type(item).__name__ == "ToolCallItem":
            last_calls.append(item)
    judge(
        f"Agents SDK {mode}, seed {seed}", demo, before, said=said, ran=ran,
        want_ran=[("get_capital", {"country": country}), ("web_search", {"query": f"{capital} population"})],
        final=result.final_output, final_calls=last_calls,
        want_final=answer(f"{capital} population: about half a million."), streamed=mode == "run_streamed",
    )


# --- what the loops met ------------------------------------------------------------------


def test_the_loops_met_the_habits(habits_demo):
    if len(OUTCOMES) < LOOPS:
        pytest.skip(f"only {len(OUTCOMES)} of the {LOOPS} loops ran (run the whole file)")
    met = {}
    for seed in SEEDS:
        for habit, n in sim_stats(habits_demo(seed))["habits"].items():
            met[habit] = met.get(habit, 0) + n
    completed = sum(1 for _, o in OUTCOMES if o == "completed")
    print(f"\n{LOOPS} loops: {completed} completed, {LOOPS - completed} failed honestly")
    for loop, outcome in OUTCOMES:
        print(f"  {loop}: {outcome}")
    print("habits met (completions written with each):", json.dumps(met, sort_keys=True))
    assert set(met) <= HABITS, met
    assert len([h for h, n in met.items() if n > 0]) >= 5, f"the loops met too few habits: {met}"
