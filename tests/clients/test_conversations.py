"""Multi-turn conversations through the official `openai` SDK: the simulator's
/__sim/stats prove that later turns continue one upstream chat with the right parent chain."""

import concurrent.futures
import json
import urllib.request

import pytest
from openai import OpenAI

MODEL = "qwen3.7-plus"


def expected(prompt):
    last = [line.strip() for line in prompt.splitlines() if line.strip()][-1]
    return f'Simulated answer — 模拟回答: you said "{last}".'


def stats(sim_url):
    with urllib.request.urlopen(sim_url + "/__sim/stats", timeout=10) as r:
        return json.load(r)


def chat_of(before, after):
    """The one chat that is new or changed between two stats snapshots."""
    changed = [cid for cid, c in after["chats"].items() if c["turns"] and before["chats"].get(cid) != c]
    assert len(changed) == 1, changed
    return after["chats"][changed[0]]


@pytest.fixture()
def client(demo):
    return OpenAI(base_url=demo["base_url"], api_key="unused", max_retries=0, timeout=60)


def test_five_turns_reuse_one_chat(client, demo):
    before = stats(demo["sim_url"])
    messages = [{"role": "system", "content": "You are a test."}]
    for k in range(1, 6):
        question = f"five turns, question {k}"
        messages.append({"role": "user", "content": question})
        if k % 2:
            rsp = client.chat.completions.create(model=MODEL, messages=messages)
            answer = rsp.choices[0].message.content
        else:
            stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            answer = "".join(c.choices[0].delta.content or "" for c in stream)
        assert answer == expected(question)
        messages.append({"role": "assistant", "content": answer})
    after = stats(demo["sim_url"])
    assert after["chats_used"] - before["chats_used"] == 1, "turns 2-5 created no chat"
    turns = chat_of(before, after)["turns"]
    assert len(turns) == 5
    assert turns[0]["parent_id"] is None
    for k in range(1, 5):
        assert turns[k]["parent_id"] == turns[k - 1]["response_id"]
        assert turns[k]["content_chars"] == len(f"five turns, question {k + 1}")


def test_regenerate_and_edit(client, demo):
    first = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "regen one"}])
    a1 = first.choices[0].message.content
    history = [
        {"role": "user", "content": "regen one"},
        {"role": "assistant", "content": a1},
        {"role": "user", "content": "regen two"},
    ]
    before = stats(demo["sim_url"])
    for _ in range(2):  # answer, then regenerate
        rsp = client.chat.completions.create(model=MODEL, messages=history)
        assert rsp.choices[0].message.content == expected("regen two")
    after = stats(demo["sim_url"])
    assert after["chats_used"] == before["chats_used"], "regenerate continues the chat"
    turns = chat_of(before, after)["turns"]
    assert turns[-1]["parent_id"] == turns[-2]["parent_id"] == turns[0]["response_id"]

    edited = [dict(history[0], content="regen one, edited")] + history[1:]
    client.chat.completions.create(model=MODEL, messages=edited)
    assert stats(demo["sim_url"])["chats_used"] == after["chats_used"] + 1, "an edit gets a fresh chat"


def test_concurrent_requests_on_one_conversation(client, demo):
    first = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "busy one"}])
    history = [
        {"role": "user", "content": "busy one"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "busy two"},
    ]
    before = stats(demo["sim_url"])
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(model=MODEL, messages=history), range(3)))
    assert [a.choices[0].message.content for a in answers] == [expected("busy two")] * 3
    assert stats(demo["sim_url"])["chats_used"] == before["chats_used"], "queued on the same chat"
