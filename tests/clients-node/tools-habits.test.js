// The agent loops of tools.test.js — openai-node's `runTools` and the Vercel AI SDK's
// multi-step `generateText` / `streamText` with executed tools (both providers) — against a
// simulated model with a real model's habits (`qwen-proxy --demo --habits SEED`, README
// "Simulator"): every completion that calls tools writes its calls with one habit (the
// agent's own name of an aliased tool, a case variant, a narrated batch without openers, the
// calls written only while thinking, text or an invented result after a call, a fenced
// example first, a garbled closer or opener, native function frames); the simulator's k-th
// such completion gets the habit SEED + k of its list, in cycles.
//
// The proxy recovers a habit at once, or by one retry with a hint (which the simulated model
// obeys), except in one case: a streamed request whose model wrote its calls only while
// thinking and answered "I'll do that with the tools now." — the reasoning already went out,
// so there is no retry and the client gets that sentence as the answer, without a call. So
// each loop either completes (every tool ran with the scripted arguments, in order, and the
// final answer is the simulator's default answer to the last tool result) or fails honestly
// (a streamed step answered exactly that sentence, with no call; the tools before it ran as
// scripted). Never does raw marker text reach the client as the model's words.
//
// One proxy per seed; the seeds' blocks run concurrently, the loops of a seed one by one (so
// each simulator's cycle of habits follows the same sequence of requests every run).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, jsonSchema, stepCountIs, streamText, tool } from 'ai';
import OpenAI from 'openai';

import { MODEL, startProxy } from './proxy.js';

// With these seeds some streamed loops meet the calls written only while thinking with the
// sentence as the answer (the honest failure), the others the recoveries.
const SEEDS = [10, 1];
const SENTENCE = "I'll do that with the tools now.\n\n(The model wrote its tool call while thinking, not in its answer; no tool was run.)";
const FAST = '@@sim:delay=0 @@sim:ttft=0';
// Marker text that must never reach the client as the model's words (outside code fences).
const MARKERS = ['[TOOL CALL', '[END TOOL', 'TOOL RESULT', '<tool_call', '{"name"', 'END_TOOL'];
const HABITS = [
  'own_name',
  'case_variant',
  'narrated_batch',
  'call_in_thinking',
  'trailing_text',
  'fenced_example',
  'mangled_closer',
  'mangled_opener',
  'native_frames',
];

const call = (name, args) => `@@sim:call=${name},${Buffer.from(JSON.stringify(args)).toString('base64url')}`;
/** A tool result that makes the model call `calls` next. */
const then = (text, ...calls) => `${text}\n${[...calls, FAST].join(' ')}`;
/** A tool result the model answers by quoting `text`. */
const last = (text) => `${FAST}\n${text}`;
/** The simulator's default answer after a tool result whose last line is `text`. */
const answer = (text) => `Simulated answer — 模拟回答: you said "${text}".`;
const outsideFences = (text) =>
  (text ?? '')
    .split('```')
    .filter((_, i) => i % 2 === 0)
    .join('');

const weatherSchema = {
  type: 'object',
  properties: {
    city: { type: 'string', description: 'City name' },
    unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
  },
  required: ['city', 'unit'],
  additionalProperties: false,
};
// `web_search` is a name the proxy shows the model under an alias: the model may write the
// agent's own name.
const searchSchema = {
  type: 'object',
  properties: { query: { type: 'string' } },
  required: ['query'],
  additionalProperties: false,
};

/**
 * The script of one loop: the prompt calls get_weather for `city`; its result makes the model
 * call web_search; that result is answered. `results(input)` gives a tool's result.
 */
function script(label, city) {
  const first = { city, unit: 'celsius' };
  const second = { query: `${city} umbrella` };
  const finalLine = `take an umbrella in ${city}`;
  return {
    prompt: `Weather in ${city}, and do I need an umbrella (${label})? ${call('get_weather', first)} ${FAST}`,
    want: [
      ['get_weather', first],
      ['web_search', second],
    ],
    results: {
      get_weather: (input) =>
        input.city === city ? then(`rain, 12 °C in ${city}`, call('web_search', second)) : 'no such city',
      web_search: (input) => (input.query === second.query ? last(finalLine) : 'nothing found'),
    },
    final: answer(finalLine),
  };
}

/** The habits the simulator wrote calls with since `before` (its stats then). */
function habitsSince(stats, before) {
  const met = {};
  for (const [h, n] of Object.entries(stats.habits)) {
    const d = n - (before.habits[h] ?? 0);
    if (d > 0) met[h] = d;
  }
  return met;
}

/**
 * Completed, or failed honestly (on a streamed loop only); never raw markers. `said`: every
 * text the client got as the model's words; `ran`: the tools run, as [name, input].
 */
function judge(loop, { said, ran, want, final, finalCalls, wantFinal, streamed }) {
  for (const text of said) {
    for (const m of MARKERS) {
      assert.ok(!outsideFences(text).includes(m), `${loop}: raw ${m} reached the client: ${JSON.stringify(text)}`);
    }
  }
  if (finalCalls === 0 && JSON.stringify(ran) === JSON.stringify(want) && final === wantFinal) return 'completed';
  assert.deepEqual(
    { final, finalCalls },
    { final: SENTENCE, finalCalls: 0 },
    `${loop}: neither completed nor failed honestly: ran ${JSON.stringify(ran)}`,
  );
  assert.ok(streamed, `${loop}: a non-streamed request has a retry left; it must not fail`);
  assert.ok(ran.length < want.length, `${loop}: ran ${JSON.stringify(ran)}`);
  assert.deepEqual(ran, want.slice(0, ran.length), `${loop}: the tools that ran`);
  return 'failed honestly';
}

const providers = [
  ['@ai-sdk/openai', (baseURL) => createOpenAI({ baseURL, apiKey: 'unused' }).chat(MODEL)],
  ['@ai-sdk/openai-compatible', (baseURL) => createOpenAICompatible({ name: 'qwen', baseURL, apiKey: 'unused' })(MODEL)],
];
const CITIES = ['Paris', 'Rome', 'Oslo', 'Lima', 'Kyiv', 'Quito'];

describe('agent loops against a model with habits', { concurrency: true }, () => {
  for (const seed of SEEDS) {
    describe(`--habits ${seed}`, { concurrency: false }, () => {
      const box = {};
      const outcomes = [];
      let loops = 0;
      before(async () => {
        box.proxy = await startProxy({}, { habits: seed });
      });
      after(async () => {
        await box.proxy?.stop();
      });

      /** Runs one loop, judges it and records its outcome with the habits it met. */
      function loop(name, streamed, run) {
        loops += 1;
        test(name, async () => {
          const start = await box.proxy.stats();
          const result = await run();
          const now = await box.proxy.stats();
          const met = habitsSince(now, start);
          const completions = now.completions - start.completions;
          const label = `${name} (seed ${seed}, habits ${JSON.stringify(met)}, ${completions} upstream completions)`;
          outcomes.push([label, judge(label, { ...result, streamed })]);
        });
      }

      let c = seed % CITIES.length;
      const city = () => CITIES[c++ % CITIES.length];

      for (const stream of [false, true]) {
        const s = script(`runTools ${stream}`, city());
        loop(`openai-node runTools (stream ${stream})`, stream, async () => {
          const ran = [];
          const fn = (name) => async (input) => {
            ran.push([name, input]);
            return s.results[name](input);
          };
          const client = new OpenAI({ baseURL: box.proxy.baseURL, apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
          const runner = client.chat.completions.runTools({
            model: MODEL,
            stream,
            tools: [
              {
                type: 'function',
                function: {
                  name: 'get_weather',
                  description: 'Current weather for a city',
                  parameters: weatherSchema,
                  parse: JSON.parse,
                  function: fn('get_weather'),
                },
              },
              {
                type: 'function',
                function: {
                  name: 'web_search',
                  description: 'Search the web',
                  parameters: searchSchema,
                  parse: JSON.parse,
                  function: fn('web_search'),
                },
              },
            ],
            messages: [{ role: 'user', content: s.prompt }],
            maxChatCompletions: 5,
          });
          const errors = [];
          runner.on('error', (e) => errors.push(e));
          const final = await runner.finalContent();
          assert.deepEqual(errors, []);
          const answers = runner.messages.filter((m) => m.role === 'assistant');
          return {
            said: answers.map((m) => m.content ?? ''),
            ran,
            want: s.want,
            final,
            finalCalls: answers.at(-1).tool_calls?.length ?? 0,
            wantFinal: s.final,
          };
        });
      }

      for (const [providerName, makeModel] of providers) {
        const tools = (s, ran) => ({
          get_weather: tool({
            description: 'Current weather for a city',
            inputSchema: jsonSchema(weatherSchema),
            execute: async (input) => {
              ran.push(['get_weather', input]);
              return s.results.get_weather(input);
            },
          }),
          web_search: tool({
            description: 'Search the web',
            inputSchema: jsonSchema(searchSchema),
            execute: async (input) => {
              ran.push(['web_search', input]);
              return s.results.web_search(input);
            },
          }),
        });

        const g = script(`${providerName} generateText`, city());
        loop(`AI SDK ${providerName}: generateText`, false, async () => {
          const ran = [];
          const r = await generateText({
            model: makeModel(box.proxy.baseURL),
            tools: tools(g, ran),
            stopWhen: stepCountIs(5),
            maxRetries: 0,
            prompt: g.prompt,
          });
          return {
            said: r.steps.map((st) => st.text),
            ran,
            want: g.want,
            final: r.text,
            finalCalls: r.steps.at(-1).toolCalls.length,
            wantFinal: g.final,
          };
        });

        const st = script(`${providerName} streamText`, city());
        loop(`AI SDK ${providerName}: streamText`, true, async () => {
          const ran = [];
          const errors = [];
          const result = streamText({
            model: makeModel(box.proxy.baseURL),
            tools: tools(st, ran),
            stopWhen: stepCountIs(5),
            maxRetries: 0,
            prompt: st.prompt,
            onError: ({ error }) => errors.push(error),
          });
          const parts = [];
          for await (const part of result.fullStream) parts.push(part);
          assert.deepEqual(errors, []);
          assert.deepEqual(
            parts.filter((p) => p.type === 'error' || p.type === 'abort'),
            [],
          );
          const steps = await result.steps;
          return {
            said: steps.map((x) => x.text),
            ran,
            want: st.want,
            final: await result.text,
            finalCalls: steps.at(-1).toolCalls.length,
            wantFinal: st.final,
          };
        });
      }

      test('the loops met the habits', async (t) => {
        if (outcomes.length < loops) {
          t.skip(`only ${outcomes.length} of the ${loops} loops ran`);
          return;
        }
        const { habits } = await box.proxy.stats();
        const completed = outcomes.filter(([, o]) => o === 'completed').length;
        t.diagnostic(`${loops} loops: ${completed} completed, ${loops - completed} failed honestly`);
        for (const [label, o] of outcomes) t.diagnostic(`${label}: ${o}`);
        t.diagnostic(`habits met: ${JSON.stringify(habits)}`);
        assert.ok(
          Object.keys(habits).every((h) => HABITS.includes(h)),
          JSON.stringify(habits),
        );
        const met = Object.entries(habits).filter(([, n]) => n > 0).length;
        assert.ok(met >= 5, `the loops met too few habits: ${JSON.stringify(habits)}`);
      });
    });
  }
});
