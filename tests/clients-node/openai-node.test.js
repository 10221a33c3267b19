// The official `openai` npm package (openai-node) against the running `--demo` binary.
// Expected answers follow the simulator's documented rule (README, "Simulator").

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import OpenAI from 'openai';

import { MODEL, expected, fixture, measure, startProxy } from './proxy.js';

let proxy;
before(async () => {
  // The pause after a simulated challenge would turn every later challenge test into a
  // cooldown answer; this file checks the error mapping, so it is off here (the AI SDK
  // file runs its own proxy with the pause on).
  proxy = await startProxy({ CHALLENGE_COOLDOWN: '0' });
});
after(async () => {
  await proxy?.stop();
});

const user = (content) => [{ role: 'user', content }];
// maxRetries 0 where a test is not about retries, so a failure shows as itself.
const plainClient = () => new OpenAI({ baseURL: proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

describe('openai-node: answers', () => {
  test('non-streaming: the exact answer, finish_reason stop, usage', async () => {
    const prompt = 'What is up?';
    const rsp = await plainClient().chat.completions.create({ model: MODEL, messages: user(prompt) });
    assert.equal(rsp.object, 'chat.completion');
    assert.equal(rsp.choices.length, 1);
    assert.equal(rsp.choices[0].message.role, 'assistant');
    assert.equal(rsp.choices[0].message.content, expected(prompt));
    assert.equal(rsp.choices[0].finish_reason, 'stop');
    assert.ok(rsp.usage.prompt_tokens > 0 && rsp.usage.completion_tokens > 0);
    assert.equal(rsp.usage.total_tokens, rsp.usage.prompt_tokens + rsp.usage.completion_tokens);
  });

  test('streaming: the chunks concatenate to the exact answer, finish_reason stop, no usage chunk', async () => {
    const prompt = 'Hello, SDK\n  and the last line  ';
    const stream = await plainClient().chat.completions.create({ model: MODEL, stream: true, messages: user(prompt) });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    assert.ok(chunks.length > 2, `only ${chunks.length} chunks`);
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
    assert.equal(new Set(chunks.map((c) => c.id)).size, 1);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.equal(chunks.map((c) => c.choices[0].delta.content ?? '').join(''), expected(prompt));
    assert.equal(expected(prompt), 'Simulated answer — 模拟回答: you said "and the last line".');
    assert.deepEqual(
      chunks.map((c) => c.choices[0].finish_reason),
      [...Array(chunks.length - 1).fill(null), 'stop'],
    );
    assert.ok(chunks.every((c) => c.usage == null));
  });

  test('streaming with stream_options.include_usage: a final usage chunk', async () => {
    const prompt = 'usage please';
    const stream = await plainClient().chat.completions.create({
      model: MODEL,
      stream: true,
      stream_options: { include_usage: true },
      messages: user(prompt),
    });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.ok(last.usage.prompt_tokens > 0 && last.usage.completion_tokens > 0);
    assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
    const body = chunks.slice(0, -1);
    assert.ok(body.every((c) => c.usage == null));
    assert.equal(body.map((c) => c.choices[0].delta.content ?? '').join(''), expected(prompt));
    assert.equal(body.at(-1).choices[0].finish_reason, 'stop');
  });
});

describe('openai-node: retries with the default settings (maxRetries 2)', () => {
  // The default client: the point is what openai-node does on its own.
  const defaultClient = () => new OpenAI({ baseURL: proxy.baseURL, apiKey: 'unused' });

  test('the default client retries twice', () => {
    assert.equal(defaultClient().maxRetries, 2);
  });

  // The proxy marks account-level failures `x-should-retry: false`; openai-node obeys the
  // header before its own rules (which would retry 429 and 5xx). One upstream call each.
  // (401 is not retried by openai-node anyway; it is here to pin the one call.)
  const final = [
    { directive: 'rate_limited=2', cls: OpenAI.RateLimitError, status: 429, code: 'upstream_rate_limited', retryAfter: '7200' },
    { directive: 'unauthorized', cls: OpenAI.AuthenticationError, status: 401, code: 'upstream_auth_failed', retryAfter: null },
    { directive: 'punish', cls: OpenAI.InternalServerError, status: 503, code: 'upstream_challenge', retryAfter: null },
  ];
  for (const { directive, cls, status, code, retryAfter } of final) {
    for (const stream of [false, true]) {
      test(`@@sim:${directive} (stream ${stream}): ${cls.name} ${status} at once, one upstream call`, async () => {
        // A proxy of its own: a spent quota or a refused token takes its only account out
        // of rotation, and later requests would meet the pool's answer (tests/accounts.rs).
        const own = await startProxy({ CHALLENGE_COOLDOWN: '0' });
        let r;
        try {
          r = await measure(own, async () => {
            const client = new OpenAI({ baseURL: own.baseURL, apiKey: 'unused' });
            const rsp = await client.chat.completions.create({
              model: MODEL,
              stream,
              messages: user(`q @@sim:${directive}`),
            });
            if (stream) for await (const _ of rsp);
            return rsp;
          });
        } finally {
          await own.stop();
        }
        assert.ok(r.error instanceof cls, `expected ${cls.name}, got ${r.error ?? 'no error'}`);
        assert.equal(r.error.status, status);
        assert.equal(r.error.code, code);
        assert.equal(r.error.headers.get('x-should-retry'), 'false');
        if (retryAfter !== null) assert.equal(r.error.headers.get('retry-after'), retryAfter);
        assert.equal(r.delta, 1, `upstream completion calls: ${r.delta}`);
        // Without the header openai-node would back off (it ignores a Retry-After over 60 s)
        // and call twice more; with a 7200 s Retry-After nothing may wait for it either.
        assert.ok(r.ms < 10_000, `took ${Math.round(r.ms)} ms`);
      });
    }
  }
});

describe('openai-node: contrast, a transient overload is retried', () => {
  // A proxy whose own retries are off (RETRY_MAX_ATTEMPTS=1; by default it retries an
  // overload itself, 3 attempts, so one SDK call with 2 retries would make 9 upstream
  // calls): each SDK attempt is then exactly one upstream call.
  let single;
  before(async () => {
    single = await startProxy({ CHALLENGE_COOLDOWN: '0', RETRY_MAX_ATTEMPTS: '1' });
  });
  after(async () => {
    await single?.stop();
  });

  // A transient overload says a retry can help (x-should-retry: true): openai-node waits the
  // proxy's short Retry-After and tries twice more, 1 + 2 upstream calls. Together with the
  // one-call tests above: the header is what stops or allows the retries.
  test('@@sim:overload (x-should-retry: true): three upstream calls with the default client', { timeout: 60_000 }, async () => {
    const client = new OpenAI({ baseURL: single.baseURL, apiKey: 'unused' });
    const r = await measure(single, () =>
      client.chat.completions.create({ model: MODEL, messages: user('q @@sim:overload') }),
    );
    assert.ok(r.error instanceof OpenAI.InternalServerError, `got ${r.error ?? 'no error'}`);
    assert.equal(r.error.status, 503);
    assert.equal(r.error.code, 'upstream_overloaded');
    assert.equal(r.error.headers.get('x-should-retry'), 'true');
    const retryAfter = Number(r.error.headers.get('retry-after'));
    assert.ok(retryAfter > 0 && retryAfter <= 10, `retry-after ${retryAfter}`);
    assert.equal(r.delta, 3, `upstream completion calls: ${r.delta}`);
    // The two waits honoured the Retry-After.
    assert.ok(r.ms >= 2 * retryAfter * 1000 - 500, `took ${Math.round(r.ms)} ms`);
  });
});

describe('openai-node: a truncated upstream stream', () => {
  test('is not reported as complete: "Hi", then the SDK throws upstream_incomplete_response', async () => {
    // The first 672 bytes of the capture end inside the event after the one carrying "Hi".
    const bytes = fixture('plain-answer.sse').subarray(0, 672);
    const text = bytes.toString('utf8');
    assert.ok(text.includes('"content": "Hi"'));
    assert.ok(!text.includes('"content": "!"'));
    assert.ok(!text.endsWith('\n\n'), 'the cut is inside an event');

    await proxy.replay(bytes, 0);
    let received = '';
    const r = await measure(proxy, async () => {
      const stream = await plainClient().chat.completions.create({ model: MODEL, stream: true, messages: user('hi') });
      for await (const c of stream) received += c.choices[0]?.delta?.content ?? '';
    });
    assert.equal(received, 'Hi');
    // openai-node turns a `data: {"error": …}` event into an APIError (no HTTP status: the
    // response itself was a 200).
    assert.ok(r.error instanceof OpenAI.APIError, `expected an APIError, got ${r.error ?? 'no error'}`);
    assert.equal(r.error.status, undefined);
    assert.equal(r.error.code, 'upstream_incomplete_response');
    assert.equal(r.error.type, 'server_error');
    assert.equal(r.delta, 1);
  });
});

describe('openai-node: the stream helper on a thinking answer', () => {
  test('finalChatCompletion() keeps only the LAST reasoning_content delta', async () => {
    const prompt = 'Think about it @@sim:think';
    const wantReasoning = 'The user wrote: "Think about it".\n\nI will answer briefly — 简短回答。';
    const stream = plainClient().chat.completions.stream({ model: `${MODEL}-thinking`, messages: user(prompt) });
    const deltas = [];
    let content = '';
    for await (const c of stream) {
      const d = c.choices[0]?.delta ?? {};
      if (typeof d.reasoning_content === 'string') deltas.push(d.reasoning_content);
      content += d.content ?? '';
    }
    const final = await stream.finalChatCompletion();
    const message = final.choices[0].message;

    // What the proxy streamed: the whole reasoning, in more than one delta.
    assert.ok(deltas.length >= 2, `${deltas.length} reasoning deltas`);
    assert.equal(deltas.join(''), wantReasoning);
    assert.equal(content, expected(prompt));
    assert.equal(message.content, expected(prompt));

    // What openai-node's accumulator makes of it: `reasoning_content` is not a field it
    // knows, so it copies each delta's unknown keys over the message (Object.assign) and
    // the last delta wins. Users who need the whole reasoning from the stream helper must
    // concatenate the deltas themselves (or use a plain `create({stream: true})` loop, or
    // a non-streaming call, whose message.reasoning_content is complete).
    assert.equal(message.reasoning_content, deltas.at(-1));
    assert.notEqual(message.reasoning_content, wantReasoning);

    // The non-streaming answer carries the whole reasoning.
    const rsp = await plainClient().chat.completions.create({ model: `${MODEL}-thinking`, messages: user(prompt) });
    assert.equal(rsp.choices[0].message.reasoning_content, wantReasoning);
    assert.equal(rsp.choices[0].message.content, expected(prompt));
  });
});
