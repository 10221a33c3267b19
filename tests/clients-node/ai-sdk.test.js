// The Vercel AI SDK (`ai` with `@ai-sdk/openai-compatible`, and `@ai-sdk/openai`) against
// the running `--demo` binary.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { APICallError, RetryError, generateText, streamText } from 'ai';

import { MODEL, expected, measure, startProxy } from './proxy.js';

describe('AI SDK: answers', () => {
  let proxy;
  before(async () => {
    proxy = await startProxy({ CHALLENGE_COOLDOWN: '0' });
  });
  after(async () => {
    await proxy?.stop();
  });
  const compatible = () => createOpenAICompatible({ baseURL: proxy.baseURL, name: 'qwen', apiKey: 'unused' });

  test('generateText (openai-compatible): the exact answer, finishReason stop, usage', async () => {
    const prompt = 'hello there';
    const r = await generateText({ model: compatible()(MODEL), prompt, maxRetries: 0 });
    assert.equal(r.text, expected(prompt));
    assert.equal(r.finishReason, 'stop');
    assert.ok(r.usage.inputTokens > 0 && r.usage.outputTokens > 0);
    assert.equal(r.usage.totalTokens, r.usage.inputTokens + r.usage.outputTokens);
  });

  test('streamText (openai-compatible): the text stream is the exact answer, finishReason stop', async () => {
    const prompt = 'stream it\n  please  ';
    const errors = [];
    const result = streamText({
      model: compatible()(MODEL),
      prompt,
      maxRetries: 0,
      onError: ({ error }) => errors.push(error),
    });
    const parts = [];
    for await (const t of result.textStream) parts.push(t);
    assert.deepEqual(errors, []);
    assert.ok(parts.length > 1, `${parts.length} text parts`);
    assert.equal(parts.join(''), expected(prompt));
    assert.equal(parts.join(''), 'Simulated answer — 模拟回答: you said "please".');
    assert.equal(await result.finishReason, 'stop');
  });

  test('generateText (@ai-sdk/openai, createOpenAI(...).chat(model)): the exact answer', async () => {
    const prompt = 'via the chat API';
    const openai = createOpenAI({ baseURL: proxy.baseURL, apiKey: 'unused' });
    const r = await generateText({ model: openai.chat(MODEL), prompt, maxRetries: 0 });
    assert.equal(r.text, expected(prompt));
    assert.equal(r.finishReason, 'stop');
  });
  // `createOpenAI(...)(model)` (no `.chat`) speaks the Responses API: responses.test.js.
});

describe('AI SDK: an anti-bot challenge with the proxy cooldown on', () => {
  // A real pause after a challenge. 600 s rather than 60 s: the AI SDK waits out a
  // Retry-After below 60 s, so with a 60 s pause its retries would sit out the pause (about a
  // minute) — and the last one could land after it and reach the upstream again. Above 60 s
  // it uses its own backoff (2 s, 4 s), and both retries meet the pause.
  let proxy;
  before(async () => {
    proxy = await startProxy({ CHALLENGE_COOLDOWN: '600000' });
  });
  after(async () => {
    await proxy?.stop();
  });

  test('generateText retries the 503s (default maxRetries 2), but the upstream sees one call', { timeout: 60_000 }, async () => {
    const provider = createOpenAICompatible({ baseURL: proxy.baseURL, name: 'qwen', apiKey: 'unused' });
    const r = await measure(proxy, () => generateText({ model: provider(MODEL), prompt: 'q @@sim:punish' }));

    // The AI SDK does not honour x-should-retry: it retried twice and then gave up.
    assert.ok(RetryError.isInstance(r.error), `expected a RetryError, got ${r.error ?? 'no error'}`);
    assert.equal(r.error.reason, 'maxRetriesExceeded');
    assert.equal(r.error.errors.length, 3);
    const codes = r.error.errors.map((e) => {
      assert.ok(APICallError.isInstance(e));
      assert.equal(e.statusCode, 503);
      assert.equal(e.isRetryable, true);
      assert.equal(e.responseHeaders['x-should-retry'], 'false');
      return JSON.parse(e.responseBody).error.code;
    });
    // The first answer is the challenge itself; the retries met the cooldown.
    assert.deepEqual(codes, ['upstream_challenge', 'upstream_challenge_cooldown', 'upstream_challenge_cooldown']);
    assert.equal(r.error.lastError, r.error.errors[2]);
    assert.match(r.error.lastError.message, /CHALLENGE_COOLDOWN/);
    const left = Number(r.error.lastError.responseHeaders['retry-after']);
    assert.ok(left > 60 && left <= 600, `retry-after ${left}`);
    // Only the first attempt reached the upstream.
    assert.equal(r.delta, 1, `upstream completion calls: ${r.delta}`);
  });

  test('streamText during the cooldown: the error reaches onError, no upstream call', { timeout: 60_000 }, async () => {
    const provider = createOpenAICompatible({ baseURL: proxy.baseURL, name: 'qwen', apiKey: 'unused' });
    const errors = [];
    let text = '';
    const r = await measure(proxy, async () => {
      const result = streamText({
        model: provider(MODEL),
        prompt: 'an ordinary question',
        onError: ({ error }) => errors.push(error),
      });
      for await (const t of result.textStream) text += t;
    });
    assert.equal(text, '');
    assert.equal(errors.length, 1, `errors: ${errors}`);
    const [error] = errors;
    assert.ok(RetryError.isInstance(error), `expected a RetryError, got ${error}`);
    assert.equal(error.errors.length, 3);
    for (const e of error.errors) {
      assert.equal(e.statusCode, 503);
      assert.equal(JSON.parse(e.responseBody).error.code, 'upstream_challenge_cooldown');
    }
    assert.equal(r.delta, 0, `upstream completion calls: ${r.delta}`);
  });
});
