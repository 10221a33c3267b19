// Function calling through real clients: openai-node (its stream helper, its `runTools`
// agent loop, the deprecated `functions` API) and the Vercel AI SDK (both providers,
// `generateText` / `streamText` with executed tools over several steps, `toolChoice`),
// against the running `--demo` binary.
//
// The simulated model is scripted by directives in the last user message (README,
// "Simulator"): `@@sim:call=NAME,ARGS_B64` calls NAME with these arguments (several for
// parallel calls), `@@sim:call=NAME` builds the arguments from the tool's schema,
// `@@sim:reply=` replaces the sentence before the call. A directive inside a tool's result
// is the next step of an agent loop. After a tool result the default answer quotes the last
// line of that result.
//
// The describe blocks run concurrently, each on its own proxy (so the simulator's
// `chats_used` counter belongs to one block); the tests inside a block run one by one.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import OpenAI from 'openai';

import { MODEL, startProxy } from './proxy.js';

/** `@@sim:call=NAME[,ARGS_B64]`: the simulated model calls NAME (with these arguments). */
const call = (name, args) =>
  args === undefined ? `@@sim:call=${name}` : `@@sim:call=${name},${Buffer.from(JSON.stringify(args)).toString('base64url')}`;

const user = (content) => [{ role: 'user', content }];

// The sentence the simulated model writes before its calls (README, "Simulator").
const SENTENCE = 'I will use a tool for this.';
const CALL_ID = /^call_[A-Za-z0-9]+$/;

const weatherSchema = {
  type: 'object',
  properties: {
    city: { type: 'string', description: 'City name' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  },
  required: ['city', 'unit'],
  additionalProperties: false,
};
const timeSchema = {
  type: 'object',
  properties: { zone: { type: 'string', default: 'UTC' } },
  required: ['zone'],
  additionalProperties: false,
};
const WEATHER = {
  type: 'function',
  function: { name: 'get_weather', description: 'Current weather for a city', parameters: weatherSchema },
};
const TIME = {
  type: 'function',
  function: { name: 'get_time', description: 'Current time in a time zone', parameters: timeSchema },
};

/** One proxy for the enclosing describe block. */
function useProxy() {
  const box = {};
  before(async () => {
    box.proxy = await startProxy();
  });
  after(async () => {
    await box.proxy?.stop();
  });
  return box;
}

async function chatsCreated(proxy) {
  const n = (await proxy.stats()).chats_used;
  assert.ok(Number.isInteger(n), '/__sim/stats has no chats_used counter');
  return n;
}

/**
 * Checks the tool-call chunk rules on raw `chat.completion.chunk`s (README, function
 * calling): a call opens with one chunk carrying index, id, type and the name with empty
 * arguments; its later chunks carry only index and function.arguments; one entry per chunk.
 * Returns the calls as a strict client assembles them.
 */
function assembleToolCalls(chunks) {
  const calls = [];
  for (const c of chunks) {
    const entries = c.choices[0]?.delta?.tool_calls;
    if (entries === undefined) continue;
    assert.equal(entries.length, 1, `one call entry per chunk: ${JSON.stringify(c)}`);
    const [e] = entries;
    if ('id' in e) {
      assert.deepEqual(Object.keys(e).sort(), ['function', 'id', 'index', 'type'], JSON.stringify(e));
      assert.equal(e.index, calls.length, 'indices are contiguous');
      assert.equal(e.type, 'function');
      assert.deepEqual(Object.keys(e.function).sort(), ['arguments', 'name']);
      assert.equal(e.function.arguments, '', 'a call opens with empty arguments');
      calls.push({ id: e.id, name: e.function.name, arguments: '' });
    } else {
      assert.deepEqual(Object.keys(e).sort(), ['function', 'index'], JSON.stringify(e));
      assert.deepEqual(Object.keys(e.function), ['arguments'], JSON.stringify(e));
      assert.ok(e.index < calls.length, `arguments for an unopened call: ${JSON.stringify(e)}`);
      calls[e.index].arguments += e.function.arguments;
    }
  }
  return calls;
}

/** The finish reasons of a chunk list, in order (nulls left out). */
const finishReasons = (chunks) => chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null);

describe('function calling through real clients', { concurrency: true }, () => {
  // ------------------------------------------------------------------------------------
  describe('openai-node: tool calls', { concurrency: false }, () => {
    const box = useProxy();
    const client = () => new OpenAI({ baseURL: box.proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

    test('stream helper: one call — its events, name, JSON arguments, call_ id, finish_reason tool_calls', async () => {
      // strict: the helper then parses the arguments itself (parsed_arguments).
      const strictWeather = { type: 'function', function: { ...WEATHER.function, strict: true } };
      const stream = client().chat.completions.stream({
        model: MODEL,
        tools: [strictWeather, TIME],
        messages: user(`What is the weather in Paris? ${call('get_weather', { city: 'Paris', unit: 'celsius' })}`),
      });
      const chunks = [];
      const argDeltas = [];
      const argDones = [];
      stream.on('chunk', (c) => chunks.push(structuredClone(c)));
      stream.on('tool_calls.function.arguments.delta', (e) => argDeltas.push(e));
      stream.on('tool_calls.function.arguments.done', (e) => argDones.push(e));
      const final = await stream.finalChatCompletion();

      // The wire: one call, opened then filled, then finish_reason tool_calls once.
      const wire = assembleToolCalls(chunks);
      assert.equal(wire.length, 1);
      assert.equal(wire[0].name, 'get_weather');
      assert.match(wire[0].id, CALL_ID);
      assert.deepEqual(finishReasons(chunks), ['tool_calls']);

      // The helper's events.
      assert.ok(argDeltas.length >= 1);
      assert.ok(argDeltas.every((e) => e.name === 'get_weather' && e.index === 0));
      assert.equal(argDeltas.map((e) => e.arguments_delta).join(''), wire[0].arguments);
      assert.equal(argDones.length, 1);
      assert.equal(argDones[0].name, 'get_weather');
      assert.equal(argDones[0].index, 0);
      assert.deepEqual(JSON.parse(argDones[0].arguments), { city: 'Paris', unit: 'celsius' });
      assert.deepEqual(argDones[0].parsed_arguments, { city: 'Paris', unit: 'celsius' });

      // The accumulated completion.
      const choice = final.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.role, 'assistant');
      assert.equal(choice.message.content.trimEnd(), SENTENCE);
      assert.equal(choice.message.tool_calls.length, 1);
      const [tc] = choice.message.tool_calls;
      assert.equal(tc.type, 'function');
      assert.equal(tc.id, wire[0].id);
      assert.equal(tc.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(tc.function.arguments), { city: 'Paris', unit: 'celsius' });
      assert.deepEqual(tc.function.parsed_arguments, { city: 'Paris', unit: 'celsius' });
    });

    test('stream helper: two directives → two parallel calls with their own index and id', async () => {
      const stream = client().chat.completions.stream({
        model: MODEL,
        tools: [WEATHER, TIME],
        // The second call's arguments come from get_time's schema: its default.
        messages: user(`Weather in Oslo and the time? ${call('get_weather', { city: 'Oslo', unit: 'fahrenheit' })} ${call('get_time')}`),
      });
      const chunks = [];
      const argDones = [];
      stream.on('chunk', (c) => chunks.push(structuredClone(c)));
      stream.on('tool_calls.function.arguments.done', (e) => argDones.push(e));
      const final = await stream.finalChatCompletion();

      const wire = assembleToolCalls(chunks);
      assert.deepEqual(
        wire.map((c) => [c.name, JSON.parse(c.arguments)]),
        [
          ['get_weather', { city: 'Oslo', unit: 'fahrenheit' }],
          ['get_time', { zone: 'UTC' }],
        ],
      );
      assert.deepEqual(finishReasons(chunks), ['tool_calls']);
      assert.deepEqual(
        argDones.map((e) => [e.index, e.name]),
        [
          [0, 'get_weather'],
          [1, 'get_time'],
        ],
      );

      const message = final.choices[0].message;
      assert.equal(final.choices[0].finish_reason, 'tool_calls');
      assert.equal(message.tool_calls.length, 2);
      const ids = message.tool_calls.map((c) => c.id);
      assert.ok(ids.every((id) => CALL_ID.test(id)), ids.join());
      assert.notEqual(ids[0], ids[1]);
      assert.deepEqual(ids, wire.map((c) => c.id));
      assert.deepEqual(
        message.tool_calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
        [
          ['get_weather', { city: 'Oslo', unit: 'fahrenheit' }],
          ['get_time', { zone: 'UTC' }],
        ],
      );
    });

    test('non-streaming: only a call → content null, tool_calls, finish_reason tool_calls', async () => {
      const rsp = await client().chat.completions.create({
        model: MODEL,
        tools: [WEATHER, TIME],
        // An empty reply: no sentence before the call.
        messages: user(`Weather in Oslo? ${call('get_weather', { city: 'Oslo', unit: 'celsius' })} @@sim:reply=`),
      });
      const choice = rsp.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.role, 'assistant');
      assert.equal(choice.message.content, null);
      assert.equal(choice.message.tool_calls.length, 1);
      const [tc] = choice.message.tool_calls;
      assert.match(tc.id, CALL_ID);
      assert.equal(tc.type, 'function');
      assert.equal(tc.function.name, 'get_weather');
      assert.deepEqual(JSON.parse(tc.function.arguments), { city: 'Oslo', unit: 'celsius' });
      assert.equal(choice.message.function_call, undefined);
    });

    test('non-streaming: parallel_tool_calls false → only the first of two calls', async () => {
      const rsp = await client().chat.completions.create({
        model: MODEL,
        tools: [WEATHER, TIME],
        parallel_tool_calls: false,
        messages: user(`Both? ${call('get_weather', { city: 'Rome', unit: 'celsius' })} ${call('get_time', { zone: 'Europe/Rome' })}`),
      });
      const choice = rsp.choices[0];
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.deepEqual(
        choice.message.tool_calls.map((c) => [c.function.name, JSON.parse(c.function.arguments)]),
        [['get_weather', { city: 'Rome', unit: 'celsius' }]],
      );
    });
  });

  // ------------------------------------------------------------------------------------
  describe('openai-node: runTools, the SDK agent loop, on one upstream chat', { concurrency: false }, () => {
    const box = useProxy();
    const client = () => new OpenAI({ baseURL: box.proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });

    // get_weather(Paris) answers with the next step (a call for Rome); get_weather(Rome)
    // answers plainly, so the model then answers quoting that result.
    const PARIS_RESULT = `sunny, 21 °C in Paris ${call('get_weather', { city: 'Rome', unit: 'celsius' })}`;
    const ROME_RESULT = 'rain, 12 °C in Rome';
    const FINAL = 'Simulated answer — 模拟回答: you said "rain, 12 °C in Rome".';

    function runnableTools(received) {
      return [
        {
          type: 'function',
          function: {
            name: 'get_weather',
            description: 'Current weather for a city',
            parameters: weatherSchema,
            parse: JSON.parse,
            function: async (args) => {
              received.push(args);
              return args.city === 'Paris' ? PARIS_RESULT : ROME_RESULT;
            },
          },
        },
        {
          type: 'function',
          function: {
            name: 'get_time',
            description: 'Current time in a time zone',
            parameters: timeSchema,
            parse: JSON.parse,
            function: async () => {
              throw new Error('get_time must not be called');
            },
          },
        },
      ];
    }

    for (const stream of [false, true]) {
      test(`runTools (stream ${stream}): two calls run the JS function, then the final answer; chats_used +1`, async () => {
        const before = await chatsCreated(box.proxy);
        const received = [];
        const runner = client().chat.completions.runTools({
          model: MODEL,
          stream,
          tools: runnableTools(received),
          messages: user(`Weather in Paris, then Rome? ${call('get_weather', { city: 'Paris', unit: 'celsius' })}`),
        });
        const errors = [];
        runner.on('error', (e) => errors.push(e));
        const content = await runner.finalContent();

        assert.deepEqual(errors, []);
        assert.deepEqual(received, [
          { city: 'Paris', unit: 'celsius' },
          { city: 'Rome', unit: 'celsius' },
        ]);
        assert.equal(content, FINAL);
        const last = await runner.finalFunctionToolCall();
        assert.equal(last.name, 'get_weather');
        assert.equal(last.arguments, '{"city":"Rome","unit":"celsius"}');
        assert.equal(await runner.finalFunctionToolCallResult(), ROME_RESULT);

        // The conversation the SDK built: user, (assistant call, tool result) × 2, answer.
        const msgs = runner.messages;
        assert.deepEqual(
          msgs.map((m) => m.role),
          ['user', 'assistant', 'tool', 'assistant', 'tool', 'assistant'],
        );
        for (const i of [1, 3]) {
          assert.equal(msgs[i].tool_calls.length, 1);
          assert.match(msgs[i].tool_calls[0].id, CALL_ID);
          assert.equal(msgs[i + 1].tool_call_id, msgs[i].tool_calls[0].id);
        }
        assert.notEqual(msgs[1].tool_calls[0].id, msgs[3].tool_calls[0].id);
        assert.equal(msgs[2].content, PARIS_RESULT);
        assert.equal(msgs[4].content, ROME_RESULT);
        assert.equal(msgs[5].content, FINAL);
        assert.equal((await runner.finalChatCompletion()).choices[0].finish_reason, 'stop');

        // Three requests, one upstream chat: each step continued the first.
        assert.equal((await chatsCreated(box.proxy)) - before, 1);
      });
    }
  });

  // ------------------------------------------------------------------------------------
  describe('openai-node: the deprecated functions / function_call API', { concurrency: false }, () => {
    const box = useProxy();
    const client = () => new OpenAI({ baseURL: box.proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
    const functions = [WEATHER.function, TIME.function];
    const prompt = `Weather in Lima? ${call('get_weather', { city: 'Lima', unit: 'celsius' })}`;

    test('non-streaming, function_call "auto": message.function_call, finish_reason function_call', async () => {
      const rsp = await client().chat.completions.create({
        model: MODEL,
        functions,
        function_call: 'auto',
        messages: user(prompt),
      });
      const choice = rsp.choices[0];
      assert.equal(choice.finish_reason, 'function_call');
      assert.equal(choice.message.tool_calls, undefined);
      assert.equal(choice.message.function_call.name, 'get_weather');
      assert.deepEqual(JSON.parse(choice.message.function_call.arguments), { city: 'Lima', unit: 'celsius' });
    });

    test('streaming, function_call named: delta.function_call chunks, finish_reason function_call', async () => {
      const stream = client().chat.completions.stream({
        model: MODEL,
        functions,
        function_call: { name: 'get_weather' },
        messages: user(prompt),
      });
      const chunks = [];
      // A copy as it arrives: the helper keeps the first delta.function_call object as its
      // snapshot and appends the later arguments to it, which would rewrite that chunk.
      stream.on('chunk', (c) => chunks.push(structuredClone(c)));
      const final = await stream.finalChatCompletion();

      const deltas = chunks.map((c) => c.choices[0]?.delta ?? {});
      assert.ok(deltas.every((d) => d.tool_calls === undefined), 'no tool_calls in the deprecated shape');
      const fc = deltas.filter((d) => d.function_call !== undefined).map((d) => d.function_call);
      assert.ok(fc.length >= 2, `${fc.length} function_call deltas`);
      // The name once, in the first function_call delta; then only arguments.
      assert.deepEqual(fc[0], { name: 'get_weather', arguments: '' });
      assert.ok(fc.slice(1).every((f) => f.name === undefined && typeof f.arguments === 'string'));
      assert.deepEqual(JSON.parse(fc.map((f) => f.arguments).join('')), { city: 'Lima', unit: 'celsius' });
      assert.deepEqual(finishReasons(chunks), ['function_call']);

      const choice = final.choices[0];
      assert.equal(choice.finish_reason, 'function_call');
      assert.equal(choice.message.tool_calls, undefined);
      assert.equal(choice.message.function_call.name, 'get_weather');
      assert.deepEqual(JSON.parse(choice.message.function_call.arguments), { city: 'Lima', unit: 'celsius' });
    });
  });

  // ------------------------------------------------------------------------------------
  const providers = [
    ['@ai-sdk/openai (createOpenAI(...).chat)', (baseURL) => createOpenAI({ baseURL, apiKey: 'unused' }).chat(MODEL)],
    [
      '@ai-sdk/openai-compatible',
      (baseURL) => createOpenAICompatible({ name: 'qwen', baseURL, apiKey: 'unused' })(MODEL),
    ],
  ];

  for (const [providerName, makeModel] of providers) {
    describe(`AI SDK, ${providerName}: executed tools over several steps`, { concurrency: false }, () => {
      const box = useProxy();

      const PARIS_INPUT = { city: 'Paris', unit: 'celsius' };
      const ROME_INPUT = { city: 'Rome', unit: 'fahrenheit' };
      const PARIS_RESULT = `sunny, 21 °C in Paris\n${call('get_weather', ROME_INPUT)}`;
      const ROME_RESULT = 'rain, 54 °F in Rome';
      const FINAL = 'Simulated answer — 模拟回答: you said "rain, 54 °F in Rome".';
      const prompt = `Weather in Paris, then Rome? ${call('get_weather', PARIS_INPUT)}`;

      function weatherTools(executed) {
        return {
          get_weather: tool({
            description: 'Current weather for a city',
            inputSchema: jsonSchema(weatherSchema),
            execute: async (input, { toolCallId }) => {
              executed.push({ input, toolCallId });
              return input.city === 'Paris' ? PARIS_RESULT : ROME_RESULT;
            },
          }),
          get_time: tool({
            description: 'Current time in a time zone',
            inputSchema: jsonSchema(timeSchema),
            execute: async () => {
              throw new Error('get_time must not be called');
            },
          }),
        };
      }

      /** The steps' calls and results, as the SDK recorded them. */
      function checkSteps(steps, executed) {
        assert.deepEqual(
          steps.map((s) => s.finishReason),
          ['tool-calls', 'tool-calls', 'stop'],
        );
        assert.deepEqual(
          steps.map((s) => s.toolCalls.map((c) => [c.toolName, c.input])),
          [[['get_weather', PARIS_INPUT]], [['get_weather', ROME_INPUT]], []],
        );
        assert.deepEqual(
          steps.map((s) => s.toolResults.map((r) => [r.toolName, r.output])),
          [[['get_weather', PARIS_RESULT]], [['get_weather', ROME_RESULT]], []],
        );
        // execute ran once per call, with the SDK's own call ids (the proxy's call_…).
        assert.deepEqual(
          executed.map((e) => e.input),
          [PARIS_INPUT, ROME_INPUT],
        );
        const ids = steps.slice(0, 2).map((s) => s.toolCalls[0].toolCallId);
        assert.deepEqual(executed.map((e) => e.toolCallId), ids);
        assert.ok(ids.every((id) => CALL_ID.test(id)), ids.join());
        assert.notEqual(ids[0], ids[1]);
        assert.deepEqual(steps.slice(0, 2).map((s) => s.toolResults[0].toolCallId), ids);
        assert.equal(steps[0].text.trimEnd(), SENTENCE);
        assert.equal(steps[2].text, FINAL);
      }

      test('generateText, stopWhen stepCountIs(5): three steps, execute ran twice, the final answer; one upstream chat', async () => {
        const before = await chatsCreated(box.proxy);
        const executed = [];
        const r = await generateText({
          model: makeModel(box.proxy.baseURL),
          tools: weatherTools(executed),
          stopWhen: stepCountIs(5),
          maxRetries: 0,
          prompt,
        });
        checkSteps(r.steps, executed);
        assert.equal(r.text, FINAL);
        assert.equal(r.finishReason, 'stop');
        assert.equal((await chatsCreated(box.proxy)) - before, 1);
      });

      test('streamText, stopWhen stepCountIs(5): the fullStream parts, no error part, the final answer; one upstream chat', async () => {
        const before = await chatsCreated(box.proxy);
        const executed = [];
        const errors = [];
        const result = streamText({
          model: makeModel(box.proxy.baseURL),
          tools: weatherTools(executed),
          stopWhen: stepCountIs(5),
          maxRetries: 0,
          prompt,
          onError: ({ error }) => errors.push(error),
        });
        const parts = [];
        for await (const part of result.fullStream) parts.push(part);

        assert.deepEqual(errors, []);
        assert.deepEqual(parts.filter((p) => p.type === 'error' || p.type === 'abort'), []);

        // The part types, runs of one type collapsed; text-start/-end are left out (where
        // the SDK closes a text block next to a call is its own business).
        const types = parts
          .map((p) => p.type)
          .filter((t) => t !== 'text-start' && t !== 'text-end')
          .filter((t, i, all) => t !== all[i - 1]);
        const callStep = [
          'start-step',
          'text-delta',
          'tool-input-start',
          'tool-input-delta',
          'tool-input-end',
          'tool-call',
          'tool-result',
          'finish-step',
        ];
        assert.deepEqual(types, [
          'start',
          ...callStep,
          ...callStep,
          'start-step',
          'text-delta',
          'finish-step',
          'finish',
        ]);

        // Each call's streamed input is its JSON arguments, under the id of its tool-call.
        const calls = parts.filter((p) => p.type === 'tool-call');
        assert.deepEqual(
          calls.map((c) => [c.toolName, c.input]),
          [
            ['get_weather', PARIS_INPUT],
            ['get_weather', ROME_INPUT],
          ],
        );
        for (const c of calls) {
          const starts = parts.filter((p) => p.type === 'tool-input-start' && p.id === c.toolCallId);
          assert.equal(starts.length, 1);
          assert.equal(starts[0].toolName, 'get_weather');
          const input = parts
            .filter((p) => p.type === 'tool-input-delta' && p.id === c.toolCallId)
            .map((p) => p.delta)
            .join('');
          assert.deepEqual(JSON.parse(input), c.input);
        }
        assert.deepEqual(
          parts.filter((p) => p.type === 'tool-result').map((p) => p.output),
          [PARIS_RESULT, ROME_RESULT],
        );
        const finishSteps = parts.filter((p) => p.type === 'finish-step');
        assert.deepEqual(
          finishSteps.map((p) => p.finishReason),
          ['tool-calls', 'tool-calls', 'stop'],
        );
        // The last step's text deltas are the answer.
        const lastStart = parts.findLastIndex((p) => p.type === 'start-step');
        const lastText = parts
          .slice(lastStart)
          .filter((p) => p.type === 'text-delta')
          .map((p) => p.text)
          .join('');
        assert.equal(lastText, FINAL);
        assert.equal(parts.at(-1).finishReason, 'stop');

        checkSteps(await result.steps, executed);
        assert.equal(await result.text, FINAL);
        assert.equal(await result.finishReason, 'stop');
        assert.equal((await chatsCreated(box.proxy)) - before, 1);
      });
    });

    describe(`AI SDK, ${providerName}: toolChoice`, { concurrency: false }, () => {
      const box = useProxy();

      function choiceTools(executed) {
        return {
          get_weather: tool({
            description: 'Current weather for a city',
            inputSchema: jsonSchema(weatherSchema),
            execute: async (input) => {
              executed.push(['get_weather', input]);
              return 'sunny';
            },
          }),
          get_time: tool({
            description: 'Current time in a time zone',
            inputSchema: jsonSchema(timeSchema),
            execute: async (input) => {
              executed.push(['get_time', input]);
              return '12:00';
            },
          }),
        };
      }

      test("generateText, toolChoice 'required' on a prompt the model would just answer: a call, no prose answer", async () => {
        const executed = [];
        const r = await generateText({
          model: makeModel(box.proxy.baseURL),
          tools: choiceTools(executed),
          toolChoice: 'required',
          maxRetries: 0,
          prompt: 'Just chat with me.',
        });
        // The proxy asked again; the model called its first tool with schema-built input
        // (city: "sim", unit: the first enum value).
        assert.equal(r.steps.length, 1);
        assert.equal(r.finishReason, 'tool-calls');
        assert.deepEqual(
          r.toolCalls.map((c) => [c.toolName, c.input]),
          [['get_weather', { city: 'sim', unit: 'celsius' }]],
        );
        assert.match(r.toolCalls[0].toolCallId, CALL_ID);
        assert.deepEqual(executed, [['get_weather', { city: 'sim', unit: 'celsius' }]]);
        assert.deepEqual(
          r.toolResults.map((t) => t.output),
          ['sunny'],
        );
        assert.ok(!r.text.includes('Simulated answer'), r.text);
      });

      test('streamText, a named toolChoice (get_time) while the model reaches for get_weather: get_time is called', async () => {
        const executed = [];
        const errors = [];
        const result = streamText({
          model: makeModel(box.proxy.baseURL),
          tools: choiceTools(executed),
          toolChoice: { type: 'tool', toolName: 'get_time' },
          maxRetries: 0,
          prompt: `What time is it in Paris? ${call('get_weather', { city: 'Paris', unit: 'celsius' })}`,
          onError: ({ error }) => errors.push(error),
        });
        const parts = [];
        for await (const part of result.fullStream) parts.push(part);

        assert.deepEqual(errors, []);
        assert.deepEqual(parts.filter((p) => p.type === 'error' || p.type === 'abort'), []);
        assert.deepEqual(
          parts.filter((p) => p.type === 'tool-call').map((c) => [c.toolName, c.input]),
          [['get_time', { zone: 'UTC' }]],
        );
        assert.deepEqual(
          parts.filter((p) => p.type === 'tool-input-start').map((p) => p.toolName),
          ['get_time'],
        );
        assert.deepEqual(
          parts.filter((p) => p.type === 'tool-result').map((p) => [p.toolName, p.output]),
          [['get_time', '12:00']],
        );
        assert.deepEqual(executed, [['get_time', { zone: 'UTC' }]]);
        assert.equal(await result.finishReason, 'tool-calls');
        assert.equal((await result.steps).length, 1);
      });
    });
  }
});
