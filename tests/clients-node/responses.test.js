// OpenAI's Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`) through
// real clients against the running `--demo` binary: openai-node (`responses.create`, its
// `responses.stream` helper, `responses.parse`, stored responses, `previous_response_id`,
// function and custom tools, the error classes) and the Vercel AI SDK's default
// `createOpenAI(...)(model)`, which speaks this API (`generateText` / `streamText`, executed
// tools over several steps with the `item_reference`s it sends for stored items).
//
// Expected answers follow the simulator's documented rule (README, "Simulator", `expected()`
// in proxy.js); after a tool result the answer quotes the result's last line, and a call
// (`@@sim:call=NAME,ARGS_B64`) comes after the sentence `I will use a tool for this.`. Every
// expected value is computed here, never taken from the proxy's output.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import OpenAI from 'openai';

import { MODEL, expected, startProxy } from './proxy.js';

/** `@@sim:call=NAME,ARGS_B64`: the simulated model calls NAME with these arguments. */
const call = (name, args) => `@@sim:call=${name},${Buffer.from(JSON.stringify(args)).toString('base64url')}`;
/** No pacing (frames still 4 characters each), for the tests that need no realistic timing. */
const fast = (prompt) => `${prompt} @@sim:delay=0 @@sim:ttft=0`;
const user = (content) => ({ role: 'user', content });

const SENTENCE = 'I will use a tool for this.';
const CALL_ID = /^call_[A-Za-z0-9]+$/;
const WEATHER = {
  type: 'function',
  name: 'get_weather',
  description: 'The current weather in a city',
  parameters: {
    type: 'object',
    properties: { city: { type: 'string', description: "The city's name" } },
    required: ['city'],
    additionalProperties: false,
  },
  // strict: the SDK's helpers parse a strict tool's arguments (`parsed_arguments`).
  strict: true,
};
const APPLY_PATCH = {
  type: 'custom',
  name: 'apply_patch',
  description: 'Apply a patch to the workspace (the `*** Begin Patch` format).',
};
const PATCH = '*** Begin Patch\n*** Add File: hello.txt\n+Hello, world — 你好\n*** End Patch';

const client = (proxy) => new OpenAI({ baseURL: proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

/** The simulator's counters around `fn`: new upstream chats, completions answered. */
async function upstream(proxy, fn) {
  const s0 = await proxy.stats();
  const value = await fn();
  const s1 = await proxy.stats();
  assert.ok(Number.isInteger(s0.chats_used) && Number.isInteger(s0.completions), 'no /__sim/stats counters');
  return { value, chats: s1.chats_used - s0.chats_used, completions: s1.completions - s0.completions };
}

function checkUsage(usage) {
  for (const n of [usage.input_tokens, usage.output_tokens, usage.total_tokens]) {
    assert.ok(Number.isInteger(n) && n > 0, JSON.stringify(usage));
  }
  assert.equal(usage.total_tokens, usage.input_tokens + usage.output_tokens);
}

/**
 * The stream's invariants: `response.created` then `response.in_progress` first, one terminal
 * event last, `sequence_number` strictly increasing from 0, every item event naming an item
 * announced by `output_item.added` at its `output_index`. Returns output_index → item id.
 */
function checkEvents(events) {
  const types = events.map((e) => e.type);
  assert.deepEqual(types.slice(0, 2), ['response.created', 'response.in_progress']);
  const terminal = new Set(['response.completed', 'response.incomplete', 'response.failed']);
  assert.ok(terminal.has(types.at(-1)), types.join());
  assert.ok(!types.slice(0, -1).some((t) => terminal.has(t)), types.join());
  const seq = events.map((e) => e.sequence_number);
  assert.equal(seq[0], 0);
  assert.ok(seq.every((n, i) => i === 0 || n > seq[i - 1]), seq.join());
  const added = new Map();
  for (const e of events) {
    if (e.type === 'response.output_item.added') {
      assert.equal(e.output_index, added.size, 'output indexes run 0, 1, …');
      added.set(e.output_index, e.item.id);
    } else if (e.item_id !== undefined) {
      assert.equal(added.get(e.output_index), e.item_id, `${e.type} at ${e.output_index}`);
    }
    if (e.type === 'response.output_item.done') assert.equal(added.get(e.output_index), e.item.id);
  }
  return added;
}

async function collect(iterable) {
  const out = [];
  for await (const e of iterable) out.push(e);
  return out;
}

let proxy;
before(async () => {
  proxy = await startProxy();
});
after(async () => {
  await proxy?.stop();
});

describe('openai-node: responses', () => {
  test('responses.create: the exact answer, completed, model, usage, resp_ id (with instructions)', async () => {
    const prompt = 'First line\n  What is up?  ';
    const rsp = await client(proxy).responses.create({ model: MODEL, instructions: 'Be brief.', input: prompt });
    assert.equal(rsp.object, 'response');
    assert.match(rsp.id, /^resp_[A-Za-z0-9]+$/);
    assert.equal(rsp.status, 'completed');
    assert.equal(rsp.error, null);
    assert.equal(rsp.model, MODEL);
    assert.equal(rsp.output_text, expected(prompt));
    assert.equal(expected(prompt), 'Simulated answer — 模拟回答: you said "What is up?".');
    assert.equal(rsp.output.length, 1);
    const [msg] = rsp.output;
    assert.equal(msg.type, 'message');
    assert.equal(msg.role, 'assistant');
    assert.match(msg.id, /^msg_/);
    assert.deepEqual(
      msg.content.map((c) => [c.type, c.text]),
      [['output_text', expected(prompt)]],
    );
    checkUsage(rsp.usage);
  });

  test('responses.stream: events in order, deltas make the text, finalResponse()', async () => {
    // `@@sim:split`: the upstream's frames arrive cut at arbitrary bytes (inside UTF-8 too).
    const prompt = 'Hello, Responses @@sim:split';
    const stream = client(proxy).responses.stream({ model: MODEL, input: prompt });
    const snapshots = [];
    stream.on('response.output_text.delta', (e) => snapshots.push(e.snapshot));
    const events = await collect(stream);
    const final = await stream.finalResponse();
    const added = checkEvents(events);
    assert.equal(events.at(-1).type, 'response.completed');
    const deltas = events.filter((e) => e.type === 'response.output_text.delta');
    assert.ok(deltas.length > 1, `${deltas.length} deltas`);
    assert.equal(deltas.map((d) => d.delta).join(''), expected(prompt));
    // The helper's own snapshot is the text so far.
    assert.equal(snapshots.at(-1), expected(prompt));
    assert.equal(final.id, events[0].response.id);
    assert.equal(final.status, 'completed');
    assert.equal(final.model, MODEL);
    assert.equal(final.output_text, expected(prompt));
    assert.deepEqual(final.output.map((o) => o.id), [added.get(0)]);
    checkUsage(final.usage);
  });

  test('responses.create({stream: true}): the raw events in the documented order', async () => {
    const prompt = 'Raw events, please';
    const events = await collect(await client(proxy).responses.create({ model: MODEL, input: prompt, stream: true }));
    checkEvents(events);
    const types = events.map((e) => e.type);
    const n = types.filter((t) => t === 'response.output_text.delta').length;
    assert.ok(n > 1);
    assert.deepEqual(types, [
      'response.created',
      'response.in_progress',
      'response.output_item.added',
      'response.content_part.added',
      ...Array(n).fill('response.output_text.delta'),
      'response.output_text.done',
      'response.content_part.done',
      'response.output_item.done',
      'response.completed',
    ]);
    const text = events
      .filter((e) => e.type === 'response.output_text.delta')
      .map((e) => e.delta)
      .join('');
    assert.equal(text, expected(prompt));
    const completed = events.at(-1).response;
    assert.equal(completed.status, 'completed');
    assert.equal(completed.id, events[0].response.id);
    assert.equal(completed.output[0].content[0].text, text);
    checkUsage(completed.usage);
  });
});

describe('openai-node: tools', () => {
  test('a function call round trip: function_call item, then the answer on the result; one upstream chat', async () => {
    const prompt = fast(`What is the weather in Paris?\n${call('get_weather', { city: 'Paris' })}`);
    const result = 'Paris, today:\nsunny, 21 °C';
    const c = client(proxy);
    const { value: [first, second], chats, completions } = await upstream(proxy, async () => {
      const first = await c.responses.create({ model: MODEL, input: [user(prompt)], tools: [WEATHER] });
      const fc = first.output.at(-1);
      const second = await c.responses.create({
        model: MODEL,
        tools: [WEATHER],
        input: [user(prompt), ...first.output, { type: 'function_call_output', call_id: fc.call_id, output: result }],
      });
      return [first, second];
    });
    assert.equal(first.status, 'completed');
    assert.deepEqual(first.output.map((o) => o.type), ['message', 'function_call']);
    assert.equal(first.output[0].content[0].text.trim(), SENTENCE);
    const fc = first.output[1];
    assert.equal(fc.name, 'get_weather');
    assert.match(fc.call_id, CALL_ID);
    assert.match(fc.id, /^fc_/);
    assert.deepEqual(JSON.parse(fc.arguments), { city: 'Paris' });
    assert.equal(second.status, 'completed');
    assert.equal(second.output_text, expected(result));
    assert.equal(second.output_text, 'Simulated answer — 模拟回答: you said "sunny, 21 °C".');
    assert.deepEqual([chats, completions], [1, 2], 'both turns in one upstream chat');
  });

  test('a streamed function call: argument deltas, done, output_item.done with the whole item; round trip', async () => {
    const prompt = fast(`Weather in Rome? ${call('get_weather', { city: 'Rome' })}`);
    const result = 'rain, 12 °C in Rome';
    const c = client(proxy);
    const { value, chats, completions } = await upstream(proxy, async () => {
      const stream = c.responses.stream({ model: MODEL, input: prompt, tools: [WEATHER] });
      const events = await collect(stream);
      const first = await stream.finalResponse();
      const fc = first.output.at(-1);
      const second = await c.responses
        .stream({
          model: MODEL,
          tools: [WEATHER],
          input: [user(prompt), ...first.output, { type: 'function_call_output', call_id: fc.call_id, output: result }],
        })
        .finalResponse();
      return { events, first, second };
    });
    const { events, first, second } = value;
    checkEvents(events);
    const [fcAdded] = events.filter((e) => e.type === 'response.output_item.added' && e.item.type === 'function_call');
    assert.equal(fcAdded.item.name, 'get_weather');
    assert.equal(fcAdded.item.arguments, '');
    const argDeltas = events.filter((e) => e.type === 'response.function_call_arguments.delta');
    assert.ok(argDeltas.length > 0 && argDeltas.every((e) => e.output_index === fcAdded.output_index));
    const [argsDone] = events.filter((e) => e.type === 'response.function_call_arguments.done');
    assert.equal(argDeltas.map((e) => e.delta).join(''), argsDone.arguments);
    assert.deepEqual(JSON.parse(argsDone.arguments), { city: 'Rome' });
    const [fcDone] = events.filter((e) => e.type === 'response.output_item.done' && e.item.type === 'function_call');
    assert.deepEqual(
      [fcDone.item.id, fcDone.item.name, fcDone.item.arguments, fcDone.item.status],
      [fcAdded.item.id, 'get_weather', argsDone.arguments, 'completed'],
    );
    assert.match(fcDone.item.call_id, CALL_ID);
    const finalFc = first.output.at(-1);
    assert.equal(finalFc.call_id, fcDone.item.call_id);
    // The helper parses a strict tool's arguments.
    assert.deepEqual(finalFc.parsed_arguments, { city: 'Rome' });
    assert.equal(second.output_text, expected(result));
    assert.deepEqual([chats, completions], [1, 2], 'both turns in one upstream chat');
  });

  test('a custom tool: custom_tool_call with the free-form input (whole and streamed), then its output', async () => {
    const prompt = fast(`Create hello.txt ${call('apply_patch', { input: PATCH })}`);
    const c = client(proxy);
    const { value: [first, second], chats } = await upstream(proxy, async () => {
      const first = await c.responses.create({ model: MODEL, input: prompt, tools: [APPLY_PATCH] });
      const ctc = first.output.at(-1);
      const second = await c.responses.create({
        model: MODEL,
        tools: [APPLY_PATCH],
        input: [
          user(prompt),
          ...first.output,
          { type: 'custom_tool_call_output', call_id: ctc.call_id, output: 'Done!\nhello.txt created' },
        ],
      });
      return [first, second];
    });
    const ctc = first.output.at(-1);
    assert.deepEqual([ctc.type, ctc.name, ctc.input], ['custom_tool_call', 'apply_patch', PATCH]);
    assert.match(ctc.call_id, CALL_ID);
    assert.equal(second.output_text, expected('hello.txt created'));
    assert.equal(chats, 1);

    const events = await collect(
      await c.responses.create({
        model: MODEL,
        input: fast(`Again ${call('apply_patch', { input: PATCH })}`),
        tools: [APPLY_PATCH],
        stream: true,
      }),
    );
    checkEvents(events);
    const deltas = events.filter((e) => e.type === 'response.custom_tool_call_input.delta').map((e) => e.delta);
    const [done] = events.filter((e) => e.type === 'response.custom_tool_call_input.done');
    assert.equal(deltas.join(''), PATCH);
    assert.equal(done.input, PATCH);
    assert.equal(events.at(-1).response.output.at(-1).input, PATCH);
  });
});

describe('openai-node: stored responses', () => {
  test('previous_response_id: only the new input goes, the answer is right, one upstream chat', async () => {
    const c = client(proxy);
    const { value: [first, second], chats, completions } = await upstream(proxy, async () => {
      const first = await c.responses.create({ model: MODEL, input: fast('My name is Ada.') });
      const second = await c.responses.create({
        model: MODEL,
        input: fast('What is my name?'),
        previous_response_id: first.id,
      });
      return [first, second];
    });
    assert.equal(first.output_text, expected('My name is Ada.'));
    assert.equal(second.output_text, expected('What is my name?'));
    assert.equal(second.previous_response_id, first.id);
    assert.deepEqual([chats, completions], [1, 2], 'the proxy rebuilt the history and continued the chat');
  });

  test('an unknown previous_response_id is a BadRequestError naming the parameter', async () => {
    await assert.rejects(
      client(proxy).responses.create({ model: MODEL, input: 'hi', previous_response_id: 'resp_doesnotexist' }),
      (e) => {
        assert.ok(e instanceof OpenAI.BadRequestError, `got ${e}`);
        assert.equal(e.status, 400);
        assert.equal(e.param, 'previous_response_id');
        return true;
      },
    );
  });

  test('retrieve returns the stored response; delete, then retrieve is a NotFoundError', async () => {
    const c = client(proxy);
    const prompt = fast('Keep this one');
    const rsp = await c.responses.create({ model: MODEL, input: prompt });
    const got = await c.responses.retrieve(rsp.id);
    assert.equal(got.id, rsp.id);
    assert.equal(got.status, 'completed');
    assert.equal(got.output_text, expected(prompt));
    assert.deepEqual(got.output.map((o) => o.id), rsp.output.map((o) => o.id));
    await c.responses.delete(rsp.id);
    await assert.rejects(c.responses.retrieve(rsp.id), OpenAI.NotFoundError);
    await assert.rejects(c.responses.delete(rsp.id), OpenAI.NotFoundError);
  });

  test('store: false is answered but not kept', async () => {
    const c = client(proxy);
    const rsp = await c.responses.create({ model: MODEL, input: fast('Forget this one'), store: false });
    assert.equal(rsp.output_text, expected('Forget this one'));
    assert.equal(rsp.store, false);
    await assert.rejects(c.responses.retrieve(rsp.id), (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  });
});

describe('openai-node: options and errors', () => {
  test('text.format json_schema: responses.parse gives output_parsed', async () => {
    // The simulated model fences its JSON (as real models do); JSON mode unfences it.
    const fenced = '```json\n{"city": "Oslo", "days": 2}\n```';
    const prompt = fast(`Forecast as JSON. @@sim:reply=${Buffer.from(fenced).toString('base64url')}`);
    const schema = {
      type: 'object',
      properties: { city: { type: 'string' }, days: { type: 'integer' } },
      required: ['city', 'days'],
      additionalProperties: false,
    };
    const rsp = await client(proxy).responses.parse({
      model: MODEL,
      input: prompt,
      text: { format: { type: 'json_schema', name: 'forecast', schema, strict: true } },
    });
    assert.equal(rsp.output_text, '{"city": "Oslo", "days": 2}');
    assert.deepEqual(rsp.output_parsed, { city: 'Oslo', days: 2 });
  });

  test('unknown model: NotFoundError; bad fields: BadRequestError naming the parameter', async () => {
    const c = client(proxy);
    await assert.rejects(c.responses.create({ model: 'no-such-model', input: 'x' }), (e) => {
      assert.ok(e instanceof OpenAI.NotFoundError, `got ${e}`);
      assert.equal(e.status, 404);
      return true;
    });
    for (const [body, param] of [
      [{}, 'input'],
      [{ input: 'x', reasoning: { effort: 'extreme' } }, 'reasoning.effort'],
      [{ input: 'x', stream: true, max_output_tokens: 0 }, 'max_output_tokens'],
    ]) {
      await assert.rejects(c.responses.create({ model: MODEL, ...body }), (e) => {
        assert.ok(e instanceof OpenAI.BadRequestError, `${JSON.stringify(body)}: got ${e}`);
        assert.equal(e.param, param);
        return true;
      });
    }
  });
});

describe('failures: openai-node and the AI SDK', () => {
  // A proxy of its own: an upstream failure weighs on the demo's only account.
  let own;
  before(async () => {
    own = await startProxy();
  });
  after(async () => {
    await own?.stop();
  });

  test('the raw stream ends with response.failed; the helper emits it and finalResponse() is the failed response', async () => {
    const prompt = 'go @@sim:internal_error';
    const c = client(own);
    const events = await collect(await c.responses.create({ model: MODEL, input: prompt, stream: true }));
    checkEvents(events);
    const types = events.map((e) => e.type);
    assert.ok(types.includes('response.output_text.delta'), 'partial text came before the failure');
    assert.equal(types.at(-1), 'response.failed');
    assert.ok(!types.includes('response.completed'));
    const failed = events.at(-1).response;
    assert.equal(failed.status, 'failed');
    assert.equal(failed.id, events[0].response.id);
    assert.ok(failed.error.code && failed.error.message, JSON.stringify(failed.error));

    // openai-node's ResponseStream applies `response.failed` like any lifecycle event
    // (src/lib/responses/ResponseAccumulator.ts: the snapshot becomes `event.response`), so
    // `finalResponse()` resolves with the failed response rather than rejecting.
    const stream = c.responses.stream({ model: MODEL, input: prompt });
    const seen = [];
    stream.on('response.failed', (e) => seen.push(e));
    const final = await stream.finalResponse();
    assert.equal(seen.length, 1);
    assert.equal(final.status, 'failed');
    assert.ok(final.error.message);
  });

  test('AI SDK streamText: response.failed becomes an error part and onError, finishReason error', async () => {
    const errors = [];
    const result = streamText({
      model: createOpenAI({ baseURL: own.baseURL, apiKey: 'unused' })(MODEL),
      prompt: 'go @@sim:internal_error',
      maxRetries: 0,
      onError: ({ error }) => errors.push(error),
    });
    const parts = await collect(result.fullStream);
    const text = parts.filter((p) => p.type === 'text-delta').map((p) => p.text).join('');
    assert.ok(text.length > 0 && expected('go').startsWith(text), `partial text: ${JSON.stringify(text)}`);
    const errorParts = parts.filter((p) => p.type === 'error');
    assert.equal(errorParts.length, 1, parts.map((p) => p.type).join());
    assert.equal(errors.length, 1);
    assert.equal(parts.find((p) => p.type === 'finish').finishReason, 'error');
  });

  test('AI SDK generateText: an unknown model is a non-retryable APICallError 404', async () => {
    await assert.rejects(
      generateText({
        model: createOpenAI({ baseURL: own.baseURL, apiKey: 'unused' })('no-such-model'),
        prompt: 'x',
        maxRetries: 0,
      }),
      (e) => {
        assert.equal(e.name, 'AI_APICallError', `got ${e}`);
        assert.equal(e.statusCode, 404);
        assert.equal(e.isRetryable, false);
        assert.equal(new URL(e.url).pathname, '/v1/responses');
        return true;
      },
    );
  });
});

describe('AI SDK: createOpenAI(...)(model), the Responses API', () => {
  /** A provider whose requests to /responses are recorded (parsed bodies). */
  function recorded() {
    const bodies = [];
    const provider = createOpenAI({
      baseURL: proxy.baseURL,
      apiKey: 'unused',
      fetch: async (url, init) => {
        if (new URL(url).pathname === '/v1/responses') bodies.push(JSON.parse(init.body));
        return fetch(url, init);
      },
    });
    return { provider, bodies };
  }

  const RESULT = 'Berlin: cloudy\n17 °C and dry';
  function weatherTool(executed) {
    return {
      get_weather: tool({
        description: 'The current weather in a city',
        inputSchema: jsonSchema(WEATHER.parameters),
        execute: async (input, { toolCallId }) => {
          executed.push({ input, toolCallId });
          return RESULT;
        },
      }),
    };
  }

  /** The second request of a tool loop: the prior message by reference, the call, its output. */
  function checkToolLoopRequests(bodies, steps) {
    assert.equal(bodies.length, 2);
    const callId = steps[0].toolCalls[0].toolCallId;
    const second = bodies[1].input;
    assert.deepEqual(
      second.map((i) => i.type ?? i.role),
      ['user', 'item_reference', 'function_call', 'function_call_output'],
      JSON.stringify(second),
    );
    assert.match(second[1].id, /^msg_/);
    assert.equal(second[2].call_id, callId);
    assert.equal(second[3].call_id, callId);
  }

  test('generateText: the exact answer, finishReason stop, usage, the resp_ id', async () => {
    const prompt = 'Hello from the AI SDK';
    const { provider, bodies } = recorded();
    const r = await generateText({ model: provider(MODEL), prompt, maxRetries: 0 });
    assert.equal(bodies.length, 1, 'the default model called /v1/responses');
    assert.equal(r.text, expected(prompt));
    assert.equal(r.finishReason, 'stop');
    assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0);
    assert.match(r.response.id, /^resp_/);
    assert.equal(r.providerMetadata.openai.responseId, r.response.id);
  });

  test('streamText: the text stream is the exact answer, no error part', async () => {
    const prompt = 'stream it\n  please  ';
    const errors = [];
    const result = streamText({
      model: recorded().provider(MODEL),
      prompt,
      maxRetries: 0,
      onError: ({ error }) => errors.push(error),
    });
    const parts = await collect(result.textStream);
    assert.deepEqual(errors, []);
    assert.ok(parts.length > 1, `${parts.length} text parts`);
    assert.equal(parts.join(''), expected(prompt));
    assert.equal(await result.finishReason, 'stop');
    assert.ok((await result.usage).outputTokens > 0);
  });

  test('generateText with an executed tool, stopWhen stepCountIs(3): item_reference resolves; one upstream chat', async () => {
    const { provider, bodies } = recorded();
    const executed = [];
    const { value: r, chats } = await upstream(proxy, () =>
      generateText({
        model: provider(MODEL),
        tools: weatherTool(executed),
        stopWhen: stepCountIs(3),
        maxRetries: 0,
        prompt: fast(`Weather in Berlin? ${call('get_weather', { city: 'Berlin' })}`),
      }),
    );
    assert.deepEqual(r.steps.map((s) => s.finishReason), ['tool-calls', 'stop']);
    assert.deepEqual(r.steps[0].toolCalls.map((c) => [c.toolName, c.input]), [['get_weather', { city: 'Berlin' }]]);
    assert.match(r.steps[0].toolCalls[0].toolCallId, CALL_ID);
    assert.deepEqual(executed, [{ input: { city: 'Berlin' }, toolCallId: r.steps[0].toolCalls[0].toolCallId }]);
    assert.equal(r.steps[0].text.trim(), SENTENCE);
    assert.equal(r.text, expected(RESULT));
    assert.equal(r.text, 'Simulated answer — 模拟回答: you said "17 °C and dry".');
    checkToolLoopRequests(bodies, r.steps);
    assert.equal(chats, 1);
  });

  test('streamText with an executed tool, stopWhen stepCountIs(3): the final text; one upstream chat', async () => {
    const { provider, bodies } = recorded();
    const executed = [];
    const errors = [];
    const { value, chats } = await upstream(proxy, async () => {
      const result = streamText({
        model: provider(MODEL),
        tools: weatherTool(executed),
        stopWhen: stepCountIs(3),
        maxRetries: 0,
        prompt: fast(`Weather in Berlin, streamed? ${call('get_weather', { city: 'Berlin' })}`),
        onError: ({ error }) => errors.push(error),
      });
      const parts = await collect(result.fullStream);
      return { parts, steps: await result.steps, text: await result.text };
    });
    assert.deepEqual(errors, []);
    assert.ok(!value.parts.some((p) => p.type === 'error'));
    assert.deepEqual(value.steps.map((s) => s.finishReason), ['tool-calls', 'stop']);
    assert.deepEqual(executed.map((e) => e.input), [{ city: 'Berlin' }]);
    assert.equal(value.text, expected(RESULT));
    checkToolLoopRequests(bodies, value.steps);
    assert.equal(chats, 1);
  });

  test('providerOptions store: false sends the items themselves; the loop still works', async () => {
    const { provider, bodies } = recorded();
    const executed = [];
    const r = await generateText({
      model: provider(MODEL),
      tools: weatherTool(executed),
      stopWhen: stepCountIs(3),
      maxRetries: 0,
      providerOptions: { openai: { store: false } },
      prompt: fast(`Weather, unstored? ${call('get_weather', { city: 'Berlin' })}`),
    });
    assert.equal(r.text, expected(RESULT));
    assert.equal(bodies.length, 2);
    assert.ok(bodies.every((b) => b.store === false));
    assert.ok(!bodies[1].input.some((i) => i.type === 'item_reference'), JSON.stringify(bodies[1].input));
  });

  test('providerOptions previousResponseId: the next turn on the stored one; one upstream chat', async () => {
    const { provider } = recorded();
    const { value: [first, second], chats } = await upstream(proxy, async () => {
      const first = await generateText({ model: provider(MODEL), prompt: fast('My name is Grace.'), maxRetries: 0 });
      const second = await generateText({
        model: provider(MODEL),
        prompt: fast('What is my name?'),
        maxRetries: 0,
        providerOptions: { openai: { previousResponseId: first.providerMetadata.openai.responseId } },
      });
      return [first, second];
    });
    assert.equal(first.text, expected('My name is Grace.'));
    assert.equal(second.text, expected('What is my name?'));
    assert.equal(chats, 1);
  });
});
