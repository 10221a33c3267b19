// Starts the real `qwen-proxy --demo` binary on a free port for the Node client suites,
// as tests/clients/conftest.py does for the Python one: no QWEN_* or API_KEYS variables
// from the caller's environment (the demo's in-process simulator answers, any API key is
// accepted), plus the settings a test file needs. One process per setting.

import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.QWEN_PROXY_BIN || join(here, '..', '..', 'target', 'debug', 'qwen-proxy');
export const FIXTURES = join(here, '..', 'fixtures', 'qwen');
export const MODEL = 'qwen3.7-plus';

/** The simulator's documented default answer (README, "Simulator"). */
export function expected(prompt) {
  const lines = prompt
    .replace(/@@sim:\S+/g, '')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l);
  return `Simulated answer — 模拟回答: you said "${lines[lines.length - 1]}".`;
}

export function fixture(name) {
  return readFileSync(join(FIXTURES, name));
}

const running = new Set();
function killAll() {
  for (const child of running) child.kill('SIGKILL');
}
// A test file that dies (uncaught error, runner timeout, Ctrl-C) takes its proxies along.
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll();
    process.exit(128 + (sig === 'SIGINT' ? 2 : 15));
  });
}

/**
 * Starts one proxy. `env` adds settings (e.g. { CHALLENGE_COOLDOWN: '0' }); `habits` (a seed)
 * makes the demo's simulated model write tool calls with a real model's habits
 * (`--habits SEED`, README "Simulator").
 * Returns { baseURL, simURL, stats(), completionRequests(), replay(bytes, chunk), stop() }.
 */
export async function startProxy(env = {}, { habits } = {}) {
  const childEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith('QWEN_') && !k.startsWith('API_KEYS')),
  );
  // The suites check that agent loops continue one upstream chat; the demo's simulator
  // creates chats instantly, so the default adaptive policy would rightly leave each busy chat
  // for a fresh one. `wait` keeps the chat (the adaptive choice: tests/conversations.rs).
  childEnv.BUSY_CHAT_POLICY = 'wait';
  Object.assign(childEnv, env);
  const args = ['--demo', '--port', '0', '--env-file', '/dev/null'];
  if (habits !== undefined) args.push('--habits', String(habits));
  const child = spawn(BIN, args, {
    env: childEnv,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const exited = new Promise((resolve) => child.once('exit', resolve));
  exited.then(() => running.delete(child));

  // The log goes to stderr; keep its tail for a startup failure, and keep both pipes drained.
  let errTail = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    errTail = (errTail + d).slice(-4000);
  });
  child.stdout.setEncoding('utf8');

  const addresses = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => fail('no banner within 30 s'), 30_000);
    const fail = (why) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`qwen-proxy --demo did not report its addresses (${why}); stdout: ${out}\nstderr: ${errTail}`));
    };
    const onError = (e) => fail(e.message);
    const onExit = (code, signal) => fail(`exited with ${code ?? signal}`);
    child.once('error', onError);
    child.once('exit', onExit);
    child.stdout.on('data', (d) => {
      out += d;
      const url = /listening on (http:\/\/[0-9.:]+)/.exec(out);
      const sim = /simulator at (http:\/\/[0-9.:]+)/.exec(out);
      if (url && sim) {
        clearTimeout(timer);
        child.off('exit', onExit);
        child.off('error', onError);
        resolve({ url: url[1], sim: sim[1] });
      }
    });
  });
  child.stdout.resume();

  const simURL = addresses.sim;
  async function stats() {
    const rsp = await fetch(`${simURL}/__sim/stats`);
    if (!rsp.ok) throw new Error(`GET /__sim/stats: HTTP ${rsp.status}`);
    return rsp.json();
  }
  return {
    baseURL: `${addresses.url}/v1`,
    simURL,
    stats,
    /** Upstream completion calls so far (use deltas). */
    async completionRequests() {
      const n = (await stats()).completion_requests;
      if (!Number.isInteger(n)) throw new Error('/__sim/stats has no completion_requests counter');
      return n;
    },
    /** The NEXT upstream completion returns exactly `bytes`, in `chunk`-byte writes. */
    async replay(bytes, chunk) {
      const q = chunk === undefined ? '' : `?chunk=${chunk}`;
      const rsp = await fetch(`${simURL}/__sim/replay${q}`, { method: 'POST', body: bytes });
      if (!rsp.ok) throw new Error(`POST /__sim/replay: HTTP ${rsp.status} ${await rsp.text()}`);
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Runs `fn` and returns [its upstream completion-call delta, its result or error, ms taken]. */
export async function measure(proxy, fn) {
  const before = await proxy.completionRequests();
  const t0 = performance.now();
  let outcome;
  try {
    outcome = { value: await fn() };
  } catch (error) {
    outcome = { error };
  }
  const ms = performance.now() - t0;
  const delta = (await proxy.completionRequests()) - before;
  return { delta, ms, ...outcome };
}
