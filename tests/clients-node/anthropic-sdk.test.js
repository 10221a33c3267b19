// The official `@anthropic-ai/sdk` npm package against the running `--demo` binary's
// Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`, `GET /v1/models`;
// README "Anthropic Messages API"). Expected answers follow the simulator's documented rule
// (README, "Simulator"): the last non-empty line of the prompt, directives removed; after a
// tool result, the result's last line.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';

import Anthropic from '@anthropic-ai/sdk';

import { MODEL, expected, startProxy } from './proxy.js';

// A Claude name the default MODEL_ALIASES maps (sonnet → qwen3.7-plus); answers carry it.
const CLAUDE = 'claude-sonnet-4-5-20250929';
const WEATHER = {
  name: 'get_weather',
  description: 'The current weather in a city',
  input_schema: {
    type: 'object',
    properties: { city: { type: 'string', description: "The city's name" } },
    required: ['city'],
  },
};

let proxy;
before(async () => {
  proxy = await startProxy({ CHALLENGE_COOLDOWN: '0' });
});
after(async () => {
  await proxy?.stop();
});

// The SDK appends /v1/messages itself. maxRetries 0: each error class must show as itself.
const clientFor = (p) =>
  new Anthropic({ baseURL: p.baseURL.replace(/\/v1$/, ''), apiKey: 'unused', maxRetries: 0, timeout: 30_000 });
const client = () => clientFor(proxy);
const user = (content) => [{ role: 'user', content }];

/** The simulator's thinking for a prompt (README, "Simulator"). */
function expectedThinking(prompt) {
  const last = expected(prompt).match(/you said "(.*)"\.$/)[1];
  return `The user wrote: "${last}".\n\nI will answer briefly — 简短回答。`;
}

/** `@@sim:call=NAME,ARGS_B64`: the simulated model calls NAME with these arguments. */
const callDirective = (name, args) => `@@sim:call=${name},${Buffer.from(JSON.stringify(args)).toString('base64url')}`;

/** A valid 1×1 RGB PNG, built here (signature, IHDR, IDAT, IEND with their CRCs). */
function tinyPng() {
  const crc32 = (buf) => {
    let c = ~0;
    for (const b of buf) {
      c ^= b;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return ~c >>> 0;
  };
  const chunk = (kind, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(kind, 'latin1'), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(body));
    return Buffer.concat([len, body, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(1, 0);
  ihdr.writeUInt32BE(1, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(Buffer.from([0, 0xff, 0x80, 0]))),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Runs the stream helper to its end: [its events, the accumulated final message]. */
async function streamed(c, params) {
  const stream = c.messages.stream(params);
  const events = [];
  for await (const e of stream) events.push(e);
  return [events, await stream.finalMessage()];
}

/** Checks the event order a strict client expects and returns the event types. */
function checkOrder(events) {
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'message_start', types.join(' '));
  assert.equal(types.at(-1), 'message_stop', types.join(' '));
  assert.equal(types.filter((t) => t === 'message_start').length, 1);
  assert.equal(types.filter((t) => t === 'message_delta').length, 1);
  assert.equal(types.at(-2), 'message_delta', types.join(' '));
  return types;
}

const deltas = (events, kind, field) =>
  events.filter((e) => e.type === 'content_block_delta' && e.delta.type === kind).map((e) => e.delta[field]);

describe('anthropic-sdk: answers', () => {
  for (const model of [MODEL, CLAUDE]) {
    test(`messages.create (${model}): type, role, model, the exact answer, end_turn, usage`, async () => {
      const prompt = 'First line\n  What is up?  ';
      const msg = await client().messages.create({ model, max_tokens: 1024, system: 'Be brief.', messages: user(prompt) });
      assert.equal(msg.type, 'message');
      assert.equal(msg.role, 'assistant');
      assert.equal(msg.model, model);
      assert.match(msg.id, /^msg_./);
      assert.deepEqual(msg.content.map((b) => b.type), ['text']);
      assert.equal(msg.content[0].text, expected(prompt));
      assert.equal(expected(prompt), 'Simulated answer — 模拟回答: you said "What is up?".');
      assert.equal(msg.stop_reason, 'end_turn');
      assert.equal(msg.stop_sequence, null);
      assert.ok(Number.isInteger(msg.usage.input_tokens) && msg.usage.input_tokens > 0);
      assert.ok(Number.isInteger(msg.usage.output_tokens) && msg.usage.output_tokens > 0);
    });

    test(`messages.stream (${model}): event order, text deltas, finalMessage()`, async () => {
      // `@@sim:split`: the upstream's frames arrive cut at arbitrary bytes (inside UTF-8 too).
      const prompt = 'Hello, Claude @@sim:split';
      const stream = client().messages.stream({ model, max_tokens: 1024, messages: user(prompt) });
      let fromTextEvents = '';
      stream.on('text', (delta) => {
        fromTextEvents += delta;
      });
      const events = [];
      for await (const e of stream) events.push(e);
      const final = await stream.finalMessage();
      const types = checkOrder(events);
      assert.equal(types[1], 'content_block_start');
      assert.equal(types.at(-3), 'content_block_stop');
      assert.equal(events[0].message.model, model);
      const texts = deltas(events, 'text_delta', 'text');
      assert.ok(texts.length > 1, 'the answer streamed in several deltas');
      assert.equal(texts.join(''), expected(prompt));
      assert.equal(fromTextEvents, expected(prompt));
      assert.equal(final.model, model);
      assert.deepEqual(final.content.map((b) => b.type), ['text']);
      assert.equal(final.content[0].text, expected(prompt));
      assert.equal(final.stop_reason, 'end_turn');
      assert.ok(final.usage.input_tokens > 0 && final.usage.output_tokens > 0);
    });
  }

  test('messages.create with stream: true: the raw events', async () => {
    const prompt = 'raw events';
    const events = [];
    for await (const e of await client().messages.create({ model: MODEL, max_tokens: 256, stream: true, messages: user(prompt) }))
      events.push(e);
    checkOrder(events);
    assert.ok(events[0].message.usage.input_tokens > 0);
    const delta = events.find((e) => e.type === 'message_delta');
    assert.equal(delta.delta.stop_reason, 'end_turn');
    assert.ok(delta.usage.output_tokens > 0);
    assert.equal(deltas(events, 'text_delta', 'text').join(''), expected(prompt));
  });

  test('finalText()', async () => {
    const prompt = 'Only the words, please';
    const text = await client().messages.stream({ model: MODEL, max_tokens: 256, messages: user(prompt) }).finalText();
    assert.equal(text, expected(prompt));
  });
});

describe('anthropic-sdk: tool use', () => {
  for (const stream of [false, true]) {
    test(`round trip (stream ${stream}): tool_use, tool_result, the answer, one upstream chat`, async () => {
      const c = client();
      const city = stream ? 'Paris' : 'Tokyo';
      const args = { city };
      const first = { role: 'user', content: `What is the weather in ${city}? ${callDirective('get_weather', args)}` };
      const chatsBefore = (await proxy.stats()).chats_used;
      const ask = async (messages) => {
        const params = { model: MODEL, max_tokens: 1024, tools: [WEATHER], messages };
        if (!stream) return c.messages.create(params);
        const [events, final] = await streamed(c, params);
        checkOrder(events);
        if (final.content.some((b) => b.type === 'tool_use')) {
          // The input arrived as input_json deltas that add up to the accumulated input.
          assert.deepEqual(JSON.parse(deltas(events, 'input_json_delta', 'partial_json').join('')), args);
        }
        return final;
      };

      const callMsg = await ask([first]);
      assert.equal(callMsg.stop_reason, 'tool_use');
      const calls = callMsg.content.filter((b) => b.type === 'tool_use');
      assert.equal(calls.length, 1, JSON.stringify(callMsg.content));
      const [call] = calls;
      assert.match(call.id, /^toolu_./);
      assert.equal(call.name, 'get_weather');
      assert.deepEqual(call.input, args);
      assert.equal(callMsg.content.at(-1).type, 'tool_use', 'the call ends the answer');

      const result = `Weather report for ${city}\nsunny, 21 °C`;
      const answer = await ask([
        first,
        { role: 'assistant', content: callMsg.content },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: call.id, content: result }] },
      ]);
      assert.equal(answer.stop_reason, 'end_turn');
      assert.deepEqual(answer.content.map((b) => b.type), ['text']);
      // The simulated model answers with the tool result's last line.
      assert.equal(answer.content[0].text, expected(result));
      assert.equal(expected(result), 'Simulated answer — 模拟回答: you said "sunny, 21 °C".');
      assert.equal((await proxy.stats()).chats_used - chatsBefore, 1, 'the result continued the call\'s chat');
    });

    // Under tool_choice `any` (OpenAI's `required`) a call to a tool the request does not
    // offer is asked again with a hint while the client has seen nothing of the answer —
    // always for a whole message, for a stream too since its prose is held (README "Function
    // calling"). The simulated model obeys the hint with its first tool, arguments built from
    // the schema: a string without default or enum is "sim" (README "Simulator").
    test(`tool_choice any (stream ${stream}): a call to an unoffered tool is asked again`, async () => {
      const params = {
        model: MODEL,
        max_tokens: 1024,
        tools: [WEATHER],
        tool_choice: { type: 'any' },
        messages: user(`Weather in Bern? ${callDirective('delete_everything', { path: '/' })}`),
      };
      let msg;
      if (stream) {
        const [events, final] = await streamed(client(), params);
        assert.equal(events.filter((e) => e.type === 'message_start').length, 1);
        msg = final;
      } else {
        msg = await client().messages.create(params);
      }
      assert.equal(msg.stop_reason, 'tool_use', JSON.stringify(msg.content));
      const call = msg.content.find((b) => b.type === 'tool_use');
      assert.equal(call?.name, 'get_weather');
      assert.deepEqual(call.input, { city: 'sim' });
    });
  }
});

describe('anthropic-sdk: thinking', () => {
  const thinking = { type: 'enabled', budget_tokens: 1024 };

  test('a signed thinking block before the text, replayed in the next request; none without thinking', async () => {
    const c = client();
    const prompt = 'Why is the sky blue?';
    const msg = await c.messages.create({ model: MODEL, max_tokens: 2048, thinking, messages: user(prompt) });
    assert.deepEqual(msg.content.map((b) => b.type), ['thinking', 'text']);
    assert.equal(msg.content[0].thinking, expectedThinking(prompt));
    assert.equal(typeof msg.content[0].signature, 'string');
    assert.ok(msg.content[0].signature.length > 0);
    assert.equal(msg.content[1].text, expected(prompt));

    // The assistant message goes back as it came, thinking block and signature included.
    const followUp = 'And why are sunsets red?';
    const again = await c.messages.create({
      model: MODEL,
      max_tokens: 2048,
      thinking,
      messages: [...user(prompt), { role: 'assistant', content: msg.content }, ...user(followUp)],
    });
    assert.deepEqual(again.content.map((b) => b.type), ['thinking', 'text']);
    assert.ok(again.content[0].signature);
    assert.equal(again.content[1].text, expected(followUp));

    const plain = await c.messages.create({ model: MODEL, max_tokens: 2048, messages: user(prompt) });
    assert.deepEqual(plain.content.map((b) => b.type), ['text']);
    const disabled = await c.messages.create({ model: MODEL, max_tokens: 2048, thinking: { type: 'disabled' }, messages: user(prompt) });
    assert.deepEqual(disabled.content.map((b) => b.type), ['text']);
    assert.equal(disabled.content[0].text, expected(prompt));
  });

  test('streamed: thinking deltas, one signature closing the block, finalMessage() has both blocks', async () => {
    const prompt = 'Think it through';
    const [events, final] = await streamed(client(), { model: MODEL, max_tokens: 2048, thinking, messages: user(prompt) });
    checkOrder(events);
    assert.equal(deltas(events, 'thinking_delta', 'thinking').join(''), expectedThinking(prompt));
    const signatures = deltas(events, 'signature_delta', 'signature');
    assert.equal(signatures.length, 1);
    assert.ok(signatures[0]);
    const at = events.findIndex((e) => e.type === 'content_block_delta' && e.delta.type === 'signature_delta');
    assert.equal(events[at + 1].type, 'content_block_stop');
    assert.equal(events[at + 1].index, 0);
    assert.deepEqual(final.content.map((b) => b.type), ['thinking', 'text']);
    assert.equal(final.content[0].thinking, expectedThinking(prompt));
    assert.equal(final.content[0].signature, signatures[0]);
    assert.equal(final.content[1].text, expected(prompt));
  });
});

describe('anthropic-sdk: images', () => {
  const imageMessage = (png, text) => [
    {
      role: 'user',
      content: [
        { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png.toString('base64') } },
        { type: 'text', text },
      ],
    },
  ];

  test('a base64 PNG reaches a vision model', async () => {
    const png = tinyPng();
    // `@@sim:files`: the simulated model lists the files its message carried, one line each
    // (`NAME: MEDIA_TYPE, N bytes, sha256 HEX`).
    const msg = await client().messages.create({
      model: MODEL,
      max_tokens: 512,
      messages: imageMessage(png, 'What is in this picture? @@sim:files'),
    });
    const text = msg.content[0].text;
    assert.ok(text.includes('image/png'), text);
    const sha = createHash('sha256').update(png).digest('hex');
    assert.ok(text.includes(`image/png, ${png.length} bytes, sha256 ${sha}`), text);
    assert.equal(msg.stop_reason, 'end_turn');
  });

  test('an image to a model without vision: BadRequestError naming the models that see', async () => {
    // qwen3.8-max has no `capabilities.vision` in the simulator's catalogue (README, "Images").
    await assert.rejects(
      client().messages.create({ model: 'qwen3.8-max', max_tokens: 512, messages: imageMessage(tinyPng(), 'What is this?') }),
      (e) => {
        assert.ok(e instanceof Anthropic.BadRequestError, String(e));
        assert.equal(e.status, 400);
        assert.equal(e.error.type, 'error');
        assert.equal(e.type, 'invalid_request_error');
        assert.ok(e.error.error.message.includes('qwen3.7-plus'), e.error.error.message);
        return true;
      },
    );
  });
});

describe('anthropic-sdk: errors', () => {
  test('unknown model: NotFoundError 404, not_found_error', async () => {
    await assert.rejects(client().messages.create({ model: 'no-such-model', max_tokens: 16, messages: user('hi') }), (e) => {
      assert.ok(e instanceof Anthropic.NotFoundError, String(e));
      assert.equal(e.status, 404);
      assert.equal(e.error.type, 'error');
      assert.equal(e.type, 'not_found_error');
      assert.ok(e.error.error.message.includes('no-such-model'));
      return true;
    });
  });

  test('missing max_tokens (the SDK\'s raw post): BadRequestError 400, invalid_request_error', async () => {
    await assert.rejects(client().post('/v1/messages', { body: { model: MODEL, messages: user('hi') } }), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError, String(e));
      assert.equal(e.status, 400);
      assert.equal(e.error.type, 'error');
      assert.equal(e.error.error.type, 'invalid_request_error');
      assert.ok(e.error.error.message.includes('max_tokens'), e.error.error.message);
      return true;
    });
  });

  test('a server tool and an empty conversation: BadRequestError 400', async () => {
    await assert.rejects(
      client().messages.create({
        model: MODEL,
        max_tokens: 64,
        tools: [{ type: 'web_search_20250305', name: 'web_search' }],
        messages: user('search the web'),
      }),
      (e) => {
        assert.ok(e instanceof Anthropic.BadRequestError, String(e));
        assert.equal(e.type, 'invalid_request_error');
        assert.ok(e.error.error.message.includes('web_search'), e.error.error.message);
        return true;
      },
    );
    await assert.rejects(client().messages.create({ model: MODEL, max_tokens: 64, messages: [] }), (e) => {
      assert.ok(e instanceof Anthropic.BadRequestError, String(e));
      assert.equal(e.type, 'invalid_request_error');
      return true;
    });
  });

  test('a prompt too long: ContentTooLargeError 413, "prompt is too long"', async () => {
    // A tools section that cannot fit the upstream request even with the history as
    // documents (tests/anthropic.rs): 60 tools of 2,500 characters each.
    const tools = Array.from({ length: 60 }, (_, i) => ({
      name: `tool_${i}`,
      description: 'd'.repeat(2_500),
      input_schema: { type: 'object' },
    }));
    await assert.rejects(client().messages.create({ model: MODEL, max_tokens: 16, tools, messages: user('hi') }), (e) => {
      assert.ok(e instanceof Anthropic.ContentTooLargeError, String(e));
      assert.ok(e instanceof Anthropic.APIError);
      assert.equal(e.status, 413);
      assert.equal(e.type, 'request_too_large');
      assert.ok(e.error.error.message.startsWith('prompt is too long'), e.error.error.message);
      return true;
    });
  });

  for (const stream of [false, true]) {
    test(`upstream rate limit (stream ${stream}): RateLimitError 429, Retry-After`, async () => {
      // A proxy of its own: a spent quota takes its only account out of rotation.
      const own = await startProxy({ CHALLENGE_COOLDOWN: '0' });
      try {
        const params = { model: MODEL, max_tokens: 64, messages: user('q @@sim:rate_limited=2') };
        const c = clientFor(own);
        const run = stream ? streamed(c, params) : c.messages.create(params);
        await assert.rejects(run, (e) => {
          assert.ok(e instanceof Anthropic.RateLimitError, String(e));
          assert.equal(e.status, 429);
          assert.equal(e.type, 'rate_limit_error');
          // `rate_limited=2`: the upstream's wait of 2 hours.
          assert.equal(e.headers.get('retry-after'), String(2 * 3600));
          return true;
        });
      } finally {
        await own.stop();
      }
    });
  }

  const midstream = [
    ['internal_error', 'api_error'],
    ['reset', 'api_error'],
    ['moderation_output', 'invalid_request_error'],
  ];
  for (const [directive, type] of midstream) {
    test(`an error after the stream began (@@sim:${directive}): APIError of type ${type}, after some text`, async () => {
      const own = await startProxy({ CHALLENGE_COOLDOWN: '0' });
      try {
        const stream = clientFor(own).messages.stream({ model: MODEL, max_tokens: 64, messages: user(`go @@sim:${directive}`) });
        let received = '';
        stream.on('text', (d) => {
          received += d;
        });
        await assert.rejects(stream.finalMessage(), (e) => {
          assert.ok(e instanceof Anthropic.APIError, String(e));
          // The status was 200 and is gone: the failure came as an `error` event.
          assert.equal(e.status, undefined);
          assert.equal(e.type, type);
          assert.equal(e.error.type, 'error');
          return true;
        });
        assert.ok(received, 'partial text arrived before the error');
        assert.ok(expected('go').startsWith(received) && received !== expected('go'), received);
      } finally {
        await own.stop();
      }
    });
  }
});

describe('anthropic-sdk: count_tokens and models', () => {
  test('count_tokens: positive, grows with tools and system text, no upstream call', async () => {
    const c = client();
    const before = await proxy.completionRequests();
    const messages = user('How many tokens is this?');
    const plain = await c.messages.countTokens({ model: MODEL, messages });
    assert.ok(Number.isInteger(plain.input_tokens) && plain.input_tokens > 0);
    const withTools = await c.messages.countTokens({ model: MODEL, messages, tools: [WEATHER] });
    assert.ok(withTools.input_tokens > plain.input_tokens, `${withTools.input_tokens} vs ${plain.input_tokens}`);
    // About four characters a token: 4,000 characters of system text add at least 800.
    const withSystem = await c.messages.countTokens({ model: MODEL, system: 's '.repeat(2_000), messages });
    assert.ok(withSystem.input_tokens >= plain.input_tokens + 800, `${withSystem.input_tokens}`);
    assert.equal(await proxy.completionRequests(), before, 'no upstream call');
  });

  test('models.list(): Anthropic\'s shape, the catalogue\'s ids', async () => {
    const models = [];
    for await (const m of client().models.list()) models.push(m);
    const ids = models.map((m) => m.id);
    for (const id of [MODEL, `${MODEL}-thinking`, 'qwen3.8-max']) assert.ok(ids.includes(id), ids.join(' '));
    assert.equal(new Set(ids).size, ids.length);
    assert.ok(models.every((m) => m.type === 'model'));
  });
});
