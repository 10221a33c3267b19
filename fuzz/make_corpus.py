#!/usr/bin/env python3
"""Write the seed corpora (fuzz/corpus/<target>/) from the repository's captures.

Seeds: the upstream captures (tests/fixtures/qwen/*.sse) behind the chunking targets'
8-byte header, their data payloads for the frame reader, synthetic upstream streams and
answer texts with tool calls (the marker, XML, tag and bare forms, intercepted native
calls, a call written while thinking), the client request captures
(tests/fixtures/clients/*.json) plus small hand-written requests, and accounts files.
Run from anywhere; it rewrites the seeds it owns and nothing else (the `regression-*` inputs
of fixed findings stay). The files are committed: run it again only when the captures
change.
"""

import hashlib
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN = os.path.join(ROOT, "tests", "fixtures", "qwen")
CLIENTS = os.path.join(ROOT, "tests", "fixtures", "clients")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def header(c0=0, c1=0, a=(3, 7), b=(2, 0)):
    """The chunking targets' header: config bytes, then chunkings A and B (mode, seed)."""
    return bytes([c0, c1, a[0]]) + struct.pack("<H", a[1]) + bytes([b[0]]) + struct.pack("<H", b[1])


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def reset(target):
    """Remove the seeds this script wrote; the inputs of fixed findings (`regression-*`,
    moved here from known-crashes/) stay."""
    d = os.path.join(OUT, target)
    if os.path.isdir(d):
        for n in os.listdir(d):
            if not n.startswith("regression-"):
                os.remove(os.path.join(d, n))


# Upstream frames in the captured wire format (src/sim/wire.rs).
def ev(obj_text):
    return "data: " + obj_text + "\n\n"


def created(rid="r", index=0):
    return ('data: {"response.created":{"chat_id": "c", "parent_id": "u", "response_id":"%s", '
            '"response_index": "%d"}} \n\n' % (rid, index))


def delta(content, phase="answer", rid="r", out=1):
    return ev('{"choices": [{"delta": {"role": "assistant", "content": %s, "phase": "%s", '
              '"status": "typing"}}], "response_id": "%s", "usage": {"input_tokens": 12, '
              '"output_tokens": %d}, "timestamp": 1}' % (json.dumps(content, ensure_ascii=False), phase, rid, out))


def thinking(thoughts, rid="r"):
    return ev('{"choices": [{"delta": {"role": "assistant", "content": "", "phase": "thinking_summary", '
              '"extra": {"summary_thought": {"content": %s}}, "status": "typing"}}], "response_id": "%s"}'
              % (json.dumps(thoughts, ensure_ascii=False), rid))


def finished(phase="answer", rid="r"):
    return ev('{"choices": [{"delta": {"content": "", "role": "assistant", "status": "finished", '
              '"phase": "%s"}}], "response_id": "%s"}' % (phase, rid))


def intercepted_call(name, args, rid="r"):
    return ev('{"choices": [{"delta": {"role": "assistant", "content": "", "phase": "answer", '
              '"status": "typing", "function_call": {"name": %s, "arguments": %s}}}], "response_id": "%s"}'
              % (json.dumps(name), json.dumps(args), rid))


def intercepted_result(name, rid="r"):
    return ev('{"choices": [{"delta": {"role": "function", "content": "Tool %s does not exists.", '
              '"phase": "answer", "status": "typing", "name": %s}}], "response_id": "%s"}'
              % (name, json.dumps(name), rid))


def stream(pieces, phase="answer"):
    s = created()
    for i, p in enumerate(pieces):
        s += delta(p, phase, out=i + 1)
    return s + finished()


PARIS = '[TOOL CALL]\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n[END TOOL CALL]'
ANSWERS = {
    "marker-call": ["Let me check.\n", PARIS[:9], PARIS[9:40], PARIS[40:]],
    "two-calls": [PARIS + "\n", '[TOOL CALL]\n{"name": "write_file", "arguments": {"path": "a", "content": "b\\n"}}\n[END TOOL CALL]'],
    "xml-call": ["<function=get_weather>\n<parameter=city>\nBesançon é\n</parameter>\n</function>"],
    "tag-call": ['<tool_call>\n{"name":"Write","arguments":{"path":"x"}}\n</tool_call>'],
    "bare-call": ['{"name":"get_weather","arguments":{"city":"Rome"}}\n[END TOOL CALL]'],
    "fenced-markers": ["See `[TOOL CALL]` here:\n```\n", PARIS, "\n```\nDone. [[1]] and [[2]]"],
    "json-fence": ["```json\n", '{"a": 1}', "\n```"],
    "prose": ["Hi", "! 通义", "千问 ", "[not a call] <b>x</b> {\"k\": 1}\n\nEND"],
    "unknown-name": ['[TOOL CALL]\n{"name": "rm_rf", "arguments": {}}\n[END TOOL CALL]'],
    "control-chars": ['[TOOL CALL]\n{"name": "write_file", "arguments": {"path": "a", "content": "line1\nline2\t\u0001"}}\n[END TOOL CALL]'],
}


def main():
    fixtures = sorted(n for n in os.listdir(QWEN) if n.endswith(".sse"))
    captures = {n[:-4]: open(os.path.join(QWEN, n), "rb").read() for n in fixtures}
    for t in ["sse_decoder", "frame_scan", "pipeline", "tool_scan", "request_openai",
              "request_anthropic", "request_responses", "accounts_file"]:
        reset(t)

    # sse_decoder: every capture (also with CRLF) under a few headers; framing edge cases.
    edge = [
        b"data: a\r\rdata: b\r\rdata: c\r\r",
        b": keep-alive\n\nevent: x\nid: 7\nretry: 10\ndata: {\"a\":1}\n\n",
        b"data: {\"a\":\ndata:1}\ndata\n\n",
        b"\xef\xbb\xbfdata:  x\n\n\n\n\r\ndata: [DONE]\n\n",
        b'{"ret":["FAIL_SYS_USER_VALIDATE"],"data":{"url":"x"}}',
        b"{\n  \"success\": false\n}\n",
        b"<!doctypehtml><title></title>",
        b"data: a\n\ndata: b",
    ]
    for name, data in captures.items():
        write("sse_decoder", name, header(0, 0, (3, 11), (2, 0)) + data)
        write("sse_decoder", name + "-crlf-lazy", header(1, 0, (1, 97), (4, 5)) + data.replace(b"\n", b"\r\n"))
        write("sse_decoder", name + "-cap", header(2, 40, (5, 3), (6, 200)) + data)
    for i, data in enumerate(edge):
        write("sse_decoder", "edge-%d" % i, header(i & 3, 2, (i % 7, i * 13), ((i + 3) % 7, i)) + data)

    # frame_scan: every payload of every capture, and the reader's edge cases.
    seen = set()
    for name, data in captures.items():
        for n, line in enumerate(data.split(b"\n")):
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if payload not in seen:
                    seen.add(payload)
                    write("frame_scan", "%s-%d" % (name, n), payload)
    for i, s in enumerate([
        '{"choices":null,"usage":null,"response_id":null,"response.created":null}',
        '{"choices":[{"delta":null},{"delta":{"content":"second"}}]}',
        '{"choices":[{"delta":{"extra":{"image_list":[{"image":"u1"},{"image":null},{}],"reasoning_content":"x","summary_thought":{"content":[]}}}}]}',
        '{"usage":{"input_tokens":0,"output_tokens":18446744073709551615,"output_tokens_details":null,"prompt_tokens_details":{"cached_tokens":null}}}',
        '{"choices":[{"delta":{"content":"\\u00e9\\ud83d\\ude00\\b\\f\\r\\t\\/\\\\\\""}}]}',
        '{"choices":[{"delta":{"content":"a"}}],"response_id":"r","timestamp":-1.5E-3}',
        '\t{ "response_id" :\r\n"x" }\n',
        '{"choices":[{"delta":{"role":"function","function_call":{"name":"f","arguments":"{}"},"function_id":"x","name":"f"}}]}',
    ]):
        write("frame_scan", "edge-%d" % i, s)

    # pipeline: the captures under several stage configurations; synthetic streams with calls.
    configs = {
        "plain": (0x00, 0x40),
        "tools": (0x01 | 0x08 | 0x20, 0x40),
        "required-retry": (0x01 | 0x02 | 0x10, 0x00),
        "fence-limits": (0x40 | 0x80, 0x04 | 0x08 | 0x20),
    }
    for name, data in captures.items():
        for cname, (c0, c1) in configs.items():
            write("pipeline", "%s-%s" % (name, cname), header(c0, c1, (3, 5), (1, 300)) + data.replace(b"\r\n", b"\n"))
    for name, pieces in ANSWERS.items():
        c0 = 0x01 | 0x08 | (0x40 if name == "json-fence" else 0) | (0x80 if "fenced" in name else 0)
        write("pipeline", "synthetic-" + name, header(c0, 0x40, (4, 9), (6, 77)) + stream(pieces).encode())
    native = (created() + delta("Checking.") + intercepted_call("get_weather", '{"city": "Par')
              + intercepted_call("get_weather", '{"city": "Paris"}') + intercepted_result("get_weather")
              + delta("The tool does not exist.") + finished())
    write("pipeline", "synthetic-native-call", header(0x01 | 0x08, 0x40, (3, 1), (2, 0)) + native.encode())
    in_thinking = (created() + thinking(["I will call it:\n" + PARIS]) + finished("thinking_summary")
                   + finished())
    write("pipeline", "synthetic-call-in-thinking", header(0x01 | 0x10, 0, (3, 2), (5, 8)) + in_thinking.encode())
    dual = created("r0", 0) + created("r1", 1) + delta("zero", rid="r0") + delta("one", rid="r1") + finished(rid="r0")
    write("pipeline", "synthetic-dual-response", header(0, 0x40, (3, 4), (1, 150)) + dual.encode())

    # tool_scan: answer texts (and one with thinking) under several tool configurations.
    for name, pieces in ANSWERS.items():
        text = "".join(pieces)
        write("tool_scan", name, header(0x04, 0, (3, 21), (2, 0)) + text.encode())
        write("tool_scan", name + "-required", header(0x01 | 0x08 | 0x10, 0, (4, 3), (6, 40)) + text.encode())
    write("tool_scan", "thinking-call", header(0x20 | 0x01 | 0x08, 0, (3, 1), (5, 2)) + ("I should call:\n" + PARIS + "\0").encode())
    write("tool_scan", "named-write", header(0x03 | 0x04, 0, (3, 1), (2, 0)) + '[TOOL CALL]\n{"name": "u_Write", "arguments": {"path": "p"}}\n[END TOOL CALL]'.encode())

    # Request parsers: the client captures, small hand-written requests, structured seeds.
    for n in sorted(os.listdir(CLIENTS)):
        if not n.endswith(".json"):
            continue
        data = open(os.path.join(CLIENTS, n), "rb").read()
        body = json.loads(data)
        if "input" in body:
            target = "request_responses"
        elif "max_tokens" in body and body.get("model", "").startswith("claude"):
            target = "request_anthropic"
        else:
            target = "request_openai"
        write(target, n[:-5], data)
    openai = [
        {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "Hi"}]},
        {"model": "qwen3.7-plus", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [
             {"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
         "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "parallel_tool_calls": False,
         "max_tokens": 10, "stop": ["\n\n", "END"], "response_format": {"type": "json_object"}},
        {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "a"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "Read", "arguments": "{\"path\":\"x\"}"}}]},
         {"role": "tool", "tool_call_id": "call_1", "content": "file"}],
         "tools": [{"type": "function", "function": {"name": "Read", "parameters": {}}}], "tool_choice": "required"},
        {"model": "qwen3.7-plus", "messages": [{"role": "user", "content": "a"}], "functions": [{"name": "f", "parameters": {}}], "function_call": "auto"},
        {"model": " ", "messages": []},
    ]
    for i, body in enumerate(openai):
        write("request_openai", "small-%d" % i, json.dumps(body))
    anthropic = [
        {"model": "claude-opus-5-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hi"}]},
        {"model": "claude-opus-5-5", "max_tokens": 64, "stream": True, "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1;\nYou are"}],
         "thinking": {"type": "enabled", "budget_tokens": 1024}, "stop_sequences": ["END"],
         "metadata": {"user_id": "user_abc_account_def_session_0a1b"},
         "tools": [{"name": "Read", "input_schema": {"type": "object"}}, {"name": "web_search", "type": "web_search_20250305"}],
         "tool_choice": {"type": "tool", "name": "Read", "disable_parallel_tool_use": True},
         "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]},
                      {"role": "assistant", "content": [{"type": "thinking", "thinking": "t", "signature": "s"}, {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"path": "a"}}]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "is_error": True, "content": [{"type": "text", "text": "no"}]}]}]},
    ]
    for i, body in enumerate(anthropic):
        write("request_anthropic", "small-%d" % i, json.dumps(body))
    responses = [
        {"model": "qwen3.7-plus", "input": "Hi"},
        {"model": "qwen3.7-plus", "instructions": "be brief", "stream": True, "store": False,
         "reasoning": {"effort": "high", "summary": "auto"}, "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
         "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}, {"type": "web_search"}, {"type": "custom", "name": "apply_patch"}],
         "tool_choice": "auto", "max_output_tokens": 100, "prompt_cache_key": "s1",
         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "q"}, {"type": "input_image", "image_url": "https://example.com/a.png"}]},
                   {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                   {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                   {"type": "item_reference", "id": "msg_1"}, {"type": "reasoning", "encrypted_content": "zz"}]},
        {"model": "qwen3.7-plus", "previous_response_id": "resp_1", "input": [{"type": "custom_tool_call_output", "call_id": "c", "output": "ok"}]},
    ]
    for i, body in enumerate(responses):
        write("request_responses", "small-%d" % i, json.dumps(body))
    for t in ["request_openai", "request_anthropic", "request_responses"]:
        for i in range(3):
            write(t, "structured-%d" % i, b"\0" + hashlib.sha256((t + str(i)).encode()).digest() * 8)

    # Accounts files: valid, each kind of problem, and secrets marked as the target checks.
    k, a = "\U0001F511", "SeKrIt"
    accounts = [
        [{"name": "a", "cookies": "x=1; token=tok-%s" % k},
         {"name": "b", "email": "b@x.io", "password": "pw" + k, "proxy": "http://u:%s@127.0.0.1:8080" % a,
          "max_inflight": 1, "min_interval_ms": 3000, "user_agent": "UA", "bx_ua": "231!" + k, "bx_umidtoken": "T2gA" + k}],
        [{"name": "a", "cookies": "nothing-here-" + k},
         {"name": "b", "email": "b@x.io"},
         {"name": "c", "email": "c@x.io", "password": k, "cookies": "token=" + k},
         {"name": "d", "cookies": "token=x", "proxy": "socks5://%s@h:1" % a},
         {"name": "e", "cookies": "token=x", "colour": "blue" + k},
         {"name": "e", "cookies": "token=y", "max_inflight": 0},
         {"name": "f", "cookies": 7},
         {"name": "bad name", "cookies": "token=z"},
         {"name": "g", "cookies": "token=" + k + "\n"},
         {"name": "h", "email": "h@x", "password": "p", "token": k}],
    ]
    for i, doc in enumerate(accounts):
        write("accounts_file", "file-%d" % i, json.dumps(doc, ensure_ascii=False, indent=2))
    for i, text in enumerate(["{}", "[]", "[", '[{"name": "x", "cookies": "token=t"}]', "[1, null, \"s\"]",
                                  '[["x", "token=t"]]']):
        write("accounts_file", "edge-%d" % i, text)
    for i in range(4):
        write("accounts_file", "structured-%d" % i, b"\0" + hashlib.sha256(b"accounts" + bytes([i])).digest() * 6)

    total = 0
    for t in os.listdir(OUT):
        for n in os.listdir(os.path.join(OUT, t)):
            total += os.path.getsize(os.path.join(OUT, t, n))
    print("seed corpora: %d bytes" % total, file=sys.stderr)


if __name__ == "__main__":
    main()
