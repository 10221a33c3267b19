// Real coding-agent CLIs, headless, against `qwen-proxy --demo` (proxy + in-process simulator).
//
// For each agent (Qwen Code, the Cline CLI, opencode, Claude Code, Codex): its own proxy, its
// own scratch HOME (the user's real configuration is never read or written), configuration
// through the agent's own mechanisms (settings files in the scratch HOME, environment, flags),
// telemetry and update checks off, proxy variables removed from the agent's environment (Qwen
// Code would route even loopback traffic through HTTPS_PROXY). The prompt carries an
// `@@sim:call=NAME,ARGS_B64` directive, so the simulated model calls one of the agent's real
// tools; the agent runs it, sends the result back, and the model answers with the last line of
// that result.
//
// Every process a test starts is found again by its scratch HOME (scanning /proc environ: the
// HOME is a fresh mkdtemp path, so nothing else can match) and stopped by pid — this includes
// the hub daemon that the Cline CLI leaves running after it exits.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import http from 'node:http';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { MODEL, startProxy } from '../clients-node/proxy.js';

const require = createRequire(import.meta.url);
const QWEN_CLI = path.join(path.dirname(require.resolve('@qwen-code/qwen-code/package.json')), 'cli.js');
const CLINE_CLI = path.join(path.dirname(require.resolve('cline/package.json')), 'bin', 'cline');
const OPENCODE_VERSION = require('opencode-ai/package.json').version;
// Codex's launcher: it picks the platform package's native binary (`@openai/codex-linux-x64`,
// …; ~420 MB, no install script) and runs it.
const CODEX_CLI = path.join(path.dirname(require.resolve('@openai/codex/package.json')), 'bin', 'codex.js');

/**
 * opencode's native binary. `opencode-ai`'s postinstall links the right platform package's
 * binary (AVX2 or baseline, glibc or musl) to bin/opencode.exe; where install scripts did not
 * run, that file is a small placeholder, so fall back to the plain platform package.
 */
function opencodeBin() {
  const linked = path.join(path.dirname(require.resolve('opencode-ai/package.json')), 'bin', 'opencode.exe');
  try {
    if (statSync(linked).size > 1_000_000) return linked;
  } catch {}
  const pkg = `opencode-${process.platform === 'win32' ? 'windows' : process.platform}-${process.arch}`;
  return path.join(path.dirname(require.resolve(`${pkg}/package.json`)), 'bin', 'opencode');
}

/**
 * Claude Code's native binary (~400 MB, one per platform package). `@anthropic-ai/claude-code`'s
 * postinstall copies the platform package's binary over its bin/claude.exe placeholder; where
 * install scripts did not run, the placeholder is a small stub, so fall back to the platform
 * package (`-musl` on a musl libc, as the package's own installer decides).
 */
function claudeBin() {
  const wrapper = path.dirname(require.resolve('@anthropic-ai/claude-code/package.json'));
  const linked = path.join(wrapper, 'bin', 'claude.exe'); // its name on every platform
  try {
    if (statSync(linked).size > 1_000_000) return linked;
  } catch {}
  const musl = process.platform === 'linux' && process.report?.getReport?.().header?.glibcVersionRuntime === undefined;
  const pkg = `@anthropic-ai/claude-code-${process.platform}-${process.arch}${musl ? '-musl' : ''}`;
  return path.join(path.dirname(require.resolve(`${pkg}/package.json`)), process.platform === 'win32' ? 'claude.exe' : 'claude');
}

const AGENT_TIMEOUT_MS = 120_000;
const API_KEY = 'sk-agent-test';
const PREFIX = 'Simulated answer — 模拟回答: you said "';

/**
 * `AGENT_SUITE_HABITS=SEED`: the suite runs against `qwen-proxy --demo --habits SEED`, whose
 * simulated model writes its tool calls with a real model's habits (README "Simulator"): its
 * own names, case variants, narration, calls written while thinking, text after a call,
 * fenced examples, garbled markers, native calls. Each agent's proxy starts the habit cycle
 * at its own offset, so the suite meets several. Every task must then complete, or fail
 * honestly: the one way the proxy cannot recover (a streamed answer whose calls the model
 * wrote only while thinking, followed by a sentence) ends with that sentence and the note
 * that no tool was run as the answer, and no tool runs.
 */
const HABITS = process.env.AGENT_SUITE_HABITS === undefined ? undefined : Number(process.env.AGENT_SUITE_HABITS);
const HONEST_END = "I'll do that with the tools now.\n\n(The model wrote its tool call while thinking, not in its answer; no tool was run.)";

/** The proxy for one agent's tests; in habits mode, the habit cycle from `offset`. */
function agentProxy(offset) {
  return startProxy({}, HABITS === undefined ? {} : { habits: HABITS + offset });
}

/**
 * The agent's final answer: never raw tool-call markup. In habits mode, whether the task
 * ended honestly without its tool (then no tool may have run: `toolRuns`).
 */
function endedHonestly(t, answer, toolRuns) {
  for (const marker of ['[TOOL CALL', '[END TOOL', 'TOOL RESULT', '<tool_call', '{"name"']) {
    assert.ok(!answer.includes(marker), `raw \`${marker}\` reached the agent as its answer: ${answer}`);
  }
  if (HABITS === undefined || answer.trim() !== HONEST_END) return false;
  assert.equal(toolRuns, 0, 'an honest end runs no tool');
  t.diagnostic(`habits: the model wrote its call only while thinking and said so; the answer stands: ${answer}`);
  return true;
}

/** The text outside Markdown code fences. */
function outsideFences(text) {
  return text.split('```').filter((_, i) => i % 2 === 0).join('');
}

/** Habits the simulator applied so far (habits mode). */
async function habitsMet(proxy) {
  return HABITS === undefined ? '' : `; habits met: ${JSON.stringify((await proxy.stats()).habits)}`;
}

/** base64url without padding, as the simulator's `@@sim:call=NAME,ARGS_B64` takes it. */
function b64(value) {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function token(label) {
  return `${label}-${randomBytes(4).toString('hex')}`;
}

/** A scratch dir with a HOME of its own and a workspace. */
async function scratch(label) {
  const root = await fs.mkdtemp(path.join(os.tmpdir(), `qwen-proxy-agent-${label}-`));
  const home = path.join(root, 'home');
  const ws = path.join(root, 'ws');
  await fs.mkdir(home, { recursive: true });
  await fs.mkdir(ws, { recursive: true });
  return { root, home, ws };
}

/**
 * The agent's environment: a short whitelist of the caller's (never a proxy variable, an API
 * key or another agent's setting), plus a HOME and XDG dirs inside the scratch dir.
 */
function agentEnv(s, extra) {
  const keep = ['PATH', 'LANG', 'LC_ALL', 'LC_CTYPE', 'TERM', 'TZ', 'SHELL', 'USER', 'LOGNAME', 'CI',
    'SSL_CERT_FILE', 'SSL_CERT_DIR', 'NODE_EXTRA_CA_CERTS'];
  const env = {};
  for (const k of keep) if (process.env[k] !== undefined) env[k] = process.env[k];
  Object.assign(env, {
    HOME: s.home,
    XDG_CONFIG_HOME: path.join(s.home, '.config'),
    XDG_DATA_HOME: path.join(s.home, '.local', 'share'),
    XDG_CACHE_HOME: path.join(s.home, '.cache'),
    XDG_STATE_HOME: path.join(s.home, '.local', 'state'),
    TMPDIR: path.join(s.root, 'tmp'),
    NO_COLOR: '1',
    ...extra,
  });
  for (const k of Object.keys(env)) if (/proxy/i.test(k)) delete env[k];
  return env;
}

/** Runs one agent command to its end (or the timeout); never throws for a non-zero exit. */
function run(cmd, args, { cwd, env, timeoutMs = AGENT_TIMEOUT_MS }) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    // Own process group, so a timeout can take the agent's children along.
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d) => (stderr += d));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid, 'SIGKILL'); // the leader is not reaped yet: the group is ours
      } catch {}
    }, timeoutMs);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, timedOut, stdout, stderr, ms: Math.round(performance.now() - t0) });
    });
  });
}

function describeRun(r) {
  return `exit ${r.code ?? r.signal}${r.timedOut ? ' (timed out)' : ''} after ${r.ms} ms\n` +
    `--- stdout (tail) ---\n${r.stdout.slice(-6000)}\n--- stderr (tail) ---\n${r.stderr.slice(-4000)}`;
}

/** Pids of live processes whose environment has HOME=<home> (only this test's can). */
async function processesWithHome(home) {
  const needle = `HOME=${home}`;
  const pids = [];
  for (const name of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    let environ;
    try {
      environ = await fs.readFile(`/proc/${pid}/environ`, 'utf8');
    } catch {
      continue; // gone, or a kernel thread
    }
    if (environ.split('\0').includes(needle)) pids.push(pid);
  }
  return pids;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Stops every process left with this scratch HOME, by pid: SIGTERM, then SIGKILL after 5 s.
 * Repeats until two scans 300 ms apart find nothing (a daemon may still be forking).
 * Returns the pids it stopped.
 */
async function stopLeftovers(home) {
  const stopped = [];
  let quiet = 0;
  for (let round = 0; round < 20 && quiet < 2; round++) {
    const pids = await processesWithHome(home);
    if (pids.length === 0) {
      quiet++;
      await sleep(300);
      continue;
    }
    quiet = 0;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGTERM');
        stopped.push(pid);
      } catch {}
    }
    const deadline = Date.now() + 5000;
    while (Date.now() < deadline) {
      const alive = (await processesWithHome(home)).filter((p) => pids.includes(p));
      if (alive.length === 0) break;
      await sleep(100);
    }
    for (const pid of (await processesWithHome(home)).filter((p) => pids.includes(p))) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {}
    }
  }
  return [...new Set(stopped)];
}

async function removeScratch(s) {
  if (s) await fs.rm(s.root, { recursive: true, force: true, maxRetries: 3 });
}

/** The simulator's first-turn body sizes, for the diagnostics. */
async function upstreamTurns(proxy) {
  const stats = await proxy.stats();
  return Object.values(stats.chats ?? {}).map((c) => (c.turns ?? []).map((t) => t.body_bytes)).filter((b) => b.length > 0);
}

// ---------------------------------------------------------------------------------------------
// Qwen Code
// ---------------------------------------------------------------------------------------------

describe('Qwen Code (@qwen-code/qwen-code) headless', () => {
  let proxy;
  let s;

  before(async () => {
    proxy = await agentProxy(0);
    s = await scratch('qwen');
    await fs.mkdir(path.join(s.root, 'tmp'));
    await fs.mkdir(path.join(s.home, '.qwen'));
    // User settings (~/.qwen/settings.json): the OpenAI-compatible auth type and model;
    // telemetry, usage statistics and auto-update (its update check) off. The "managed
    // auto-memory" feature stays at its default (on), so the first request is the real ~78 KB
    // one (its system prompt carries the memory instructions; after a plain answer, though not
    // in these tool runs, Qwen Code also makes an extractor call of its own).
    await fs.writeFile(
      path.join(s.home, '.qwen', 'settings.json'),
      JSON.stringify({
        security: { auth: { selectedType: 'openai' } },
        model: { name: MODEL },
        privacy: { usageStatisticsEnabled: false },
        telemetry: { enabled: false },
        general: { enableAutoUpdate: false },
      }, null, 2),
    );
  });

  after(async () => {
    try {
      if (s) {
        const left = await stopLeftovers(s.home);
        assert.deepEqual(await processesWithHome(s.home), [], 'a Qwen Code process survived');
        if (left.length) console.log(`# qwen: stopped leftover pids ${left.join(', ')}`);
      }
    } finally {
      await removeScratch(s);
      await proxy?.stop();
    }
  });

  function qwen(prompt) {
    const env = agentEnv(s, {
      OPENAI_BASE_URL: proxy.baseURL,
      OPENAI_API_KEY: API_KEY,
      OPENAI_MODEL: MODEL,
      QWEN_TELEMETRY_ENABLED: 'false',
      // No system-wide settings (/etc/qwen-code/...) either.
      QWEN_CODE_SYSTEM_SETTINGS_PATH: path.join(s.root, 'no-system-settings.json'),
      QWEN_CODE_SYSTEM_DEFAULTS_PATH: path.join(s.root, 'no-system-defaults.json'),
    });
    return run(process.execPath, [
      QWEN_CLI,
      '--auth-type', 'openai',
      '--model', MODEL,
      '--approval-mode', 'yolo',
      '--output-format', 'json',
      prompt,
    ], { cwd: s.ws, env });
  }

  /** Qwen Code's `--output-format json`: one JSON array of messages, printed at the end. */
  function parse(r) {
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('['));
    assert.ok(lines.length > 0, `no JSON array on stdout\n${describeRun(r)}`);
    return JSON.parse(lines[lines.length - 1]);
  }

  function toolEvents(messages, name) {
    const uses = messages.flatMap((m) => (m.type === 'assistant' ? m.message.content : []))
      .filter((c) => c.type === 'tool_use' && c.name === name);
    const results = messages.flatMap((m) => (m.type === 'user' && Array.isArray(m.message?.content) ? m.message.content : []))
      .filter((c) => c.type === 'tool_result' && uses.some((u) => u.id === c.tool_use_id));
    return { uses, results };
  }

  function finalResult(messages, r) {
    const result = messages.find((m) => m.type === 'result');
    assert.ok(result, `no result message\n${describeRun(r)}`);
    assert.equal(result.subtype, 'success', describeRun(r));
    assert.equal(result.is_error, false, describeRun(r));
    return result;
  }

  test('read_file: the model calls the real tool, then answers with the file\'s last line', async (t) => {
    const secret = token('qwen-read');
    const file = path.join(s.ws, 'notes.txt');
    await fs.writeFile(file, `Notes for the agent test\n${secret}\n`);
    const before = await proxy.completionRequests();

    const r = await qwen(`Read notes.txt @@sim:call=read_file,${b64({ file_path: file })}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const messages = parse(r);
    const { uses, results } = toolEvents(messages, 'read_file');
    if (endedHonestly(t, finalResult(messages, r).result, results.length)) return;
    assert.equal(uses.length, 1, `one read_file call expected\n${describeRun(r)}`);
    assert.deepEqual(uses[0].input, { file_path: file });
    assert.equal(results.length, 1, `no tool_result for read_file\n${describeRun(r)}`);
    assert.equal(results[0].is_error, false);
    assert.match(String(results[0].content), new RegExp(secret));
    const result = finalResult(messages, r);
    assert.equal(result.result.trim(), `${PREFIX}${secret}".`);
    assert.ok((await proxy.completionRequests()) - before >= 2, 'the tool turn and the answer turn both reached the simulator');
    t.diagnostic(`${r.ms} ms; upstream body bytes per chat turn: ${JSON.stringify(await upstreamTurns(proxy))}${await habitsMet(proxy)}`);
  });

  test('write_file: the model calls the real tool and the file appears in the workspace', async (t) => {
    const secret = token('qwen-write');
    const file = path.join(s.ws, 'created-by-qwen.txt');
    const content = `written by Qwen Code\n${secret}\n`;

    const r = await qwen(`Create the file @@sim:call=write_file,${b64({ file_path: file, content })}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const messages = parse(r);
    const { uses, results } = toolEvents(messages, 'write_file');
    if (endedHonestly(t, finalResult(messages, r).result, results.length)) return;
    assert.equal(uses.length, 1, `one write_file call expected\n${describeRun(r)}`);
    assert.equal(results.length, 1, `no tool_result for write_file\n${describeRun(r)}`);
    assert.equal(results[0].is_error, false, JSON.stringify(results[0]));
    assert.equal(await fs.readFile(file, 'utf8'), content);
    const result = finalResult(messages, r);
    // The answer quotes the last line of the tool's result text (Qwen Code's confirmation).
    assert.ok(result.result.startsWith(PREFIX), result.result);
    assert.match(result.result, /created-by-qwen\.txt/);
    t.diagnostic(`${r.ms} ms; answer: ${result.result}${await habitsMet(proxy)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Cline CLI
// ---------------------------------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

describe('Cline CLI (cline) headless', () => {
  let proxy;
  let s;
  let hubPort;

  before(async () => {
    proxy = await agentProxy(2);
    s = await scratch('cline');
    await fs.mkdir(path.join(s.root, 'tmp'));
    const settings = path.join(s.home, '.cline', 'data', 'settings');
    await fs.mkdir(settings, { recursive: true });
    // What `cline auth -p openai-compatible -k KEY -b URL -m MODEL` writes.
    await fs.writeFile(
      path.join(settings, 'providers.json'),
      JSON.stringify({
        version: 1,
        lastUsedProvider: 'openai-compatible',
        modes: {},
        providers: {
          'openai-compatible': {
            settings: { provider: 'openai-compatible', apiKey: API_KEY, model: MODEL, baseUrl: proxy.baseURL },
            updatedAt: new Date().toISOString(),
            tokenSource: 'manual',
          },
        },
      }, null, 2),
    );
    // Telemetry off, auto-update (and its check) off.
    await fs.writeFile(
      path.join(settings, 'global-settings.json'),
      JSON.stringify({ telemetryOptOut: true, autoUpdateEnabled: false }, null, 2),
    );
    // The hub daemon listens on a fixed port (25463) by default and a CLI may adopt any hub
    // it finds there; a port of its own keeps this run away from any other Cline on the host.
    hubPort = await freePort();
  });

  after(async () => {
    try {
      if (s) {
        // The CLI leaves its hub daemon running; its discovery record names the pid.
        let recorded;
        try {
          const rec = JSON.parse(await fs.readFile(path.join(s.home, '.cline', 'data', 'locks', 'hub', 'production.json'), 'utf8'));
          recorded = `${rec.pid} (${rec.url})`;
        } catch {}
        const left = await stopLeftovers(s.home);
        assert.deepEqual(await processesWithHome(s.home), [], 'a Cline process (hub daemon?) survived');
        console.log(`# cline: hub daemon pid from its record: ${recorded ?? 'none'}; stopped pids: ${left.join(', ') || 'none'}`);
      }
    } finally {
      await removeScratch(s);
      await proxy?.stop();
    }
  });

  function cline(prompt) {
    const env = agentEnv(s, { CLINE_HUB_PORT: String(hubPort) });
    return run(process.execPath, [
      CLINE_CLI,
      '--json',
      '--auto-approve', 'true',
      '--cwd', s.ws,
      '--provider', 'openai-compatible',
      '--model', MODEL,
      prompt,
    ], { cwd: s.ws, env });
  }

  /** `cline --json`: one JSON object per line. */
  function parse(r) {
    const events = [];
    for (const line of r.stdout.split('\n')) {
      const l = line.trim();
      if (!l.startsWith('{')) continue;
      try {
        events.push(JSON.parse(l));
      } catch {
        assert.fail(`unparsable --json line: ${l.slice(0, 300)}\n${describeRun(r)}`);
      }
    }
    return events;
  }

  /** How the last CLI run was routed, from Cline's own log: 'hub <url>' or 'local'. */
  async function lastRoute() {
    let log = '';
    try {
      log = await fs.readFile(path.join(s.home, '.cline', 'data', 'logs', 'cline.log'), 'utf8');
    } catch {}
    const routes = log.split('\n').filter((l) => l.includes('CLI core runtime routing selected'));
    const last = routes.length ? JSON.parse(routes[routes.length - 1]) : undefined;
    return last ? (last.rpcAddress ? `hub ${last.rpcAddress}` : 'local') : 'unknown';
  }

  function toolOutputs(events, name) {
    return events
      .filter((e) => e.type === 'agent_event' && e.event?.type === 'content_end' && e.event.contentType === 'tool' && e.event.toolName === name)
      .map((e) => e.event);
  }

  function finalResult(events, r) {
    const errors = events.filter((e) => e.type === 'error' || e.event?.type === 'error');
    assert.deepEqual(errors, [], `error events\n${describeRun(r)}`);
    const result = events.find((e) => e.type === 'run_result');
    assert.ok(result, `no run_result\n${describeRun(r)}`);
    assert.equal(result.finishReason, 'completed', describeRun(r));
    return result;
  }

  test('read_files: the model calls the real tool, then answers quoting its result', async (t) => {
    const secret = token('cline-read');
    const file = path.join(s.ws, 'notes.txt');
    await fs.writeFile(file, `Notes for the agent test\n${secret}\n`);
    const before = await proxy.completionRequests();

    const r = await cline(`Read notes.txt @@sim:call=read_files,${b64({ files: [{ path: file }] })}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const outputs = toolOutputs(events, 'read_files');
    if (endedHonestly(t, finalResult(events, r).text, outputs.length)) return;
    assert.equal(outputs.length, 1, `one read_files result expected\n${describeRun(r)}`);
    const out = outputs[0].output;
    assert.ok(Array.isArray(out) && out.length === 1 && out[0].success === true, JSON.stringify(out));
    assert.match(out[0].result, new RegExp(secret));
    const result = finalResult(events, r);
    // Cline sends the tool result as one line of JSON, so the answer quotes all of it.
    assert.ok(result.text.startsWith(PREFIX) && result.text.endsWith('".'), result.text);
    assert.match(result.text, new RegExp(secret));
    assert.ok((await proxy.completionRequests()) - before >= 2, 'the tool turn and the answer turn both reached the simulator');
    t.diagnostic(`${r.ms} ms; route: ${await lastRoute()}; upstream body bytes per chat turn: ${JSON.stringify(await upstreamTurns(proxy))}${await habitsMet(proxy)}`);
  });

  test('editor: the model creates a file with the real tool (second run: through the hub daemon when it is up)', async (t) => {
    // The first run leaves a hub daemon behind; give it a moment to publish itself, so this
    // run takes Cline's other route (the session runs inside the daemon).
    const record = path.join(s.home, '.cline', 'data', 'locks', 'hub', 'production.json');
    for (let i = 0; i < 30 && !existsSync(record); i++) await sleep(100);

    const secret = token('cline-write');
    const file = path.join(s.ws, 'created-by-cline.txt');
    const content = `written by Cline\n${secret}\n`;

    const r = await cline(`Create the file @@sim:call=editor,${b64({ path: file, new_text: content })}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const outputs = toolOutputs(events, 'editor');
    if (endedHonestly(t, finalResult(events, r).text, outputs.length)) return;
    assert.equal(outputs.length, 1, `one editor result expected\n${describeRun(r)}`);
    assert.equal(await fs.readFile(file, 'utf8'), content);
    const result = finalResult(events, r);
    assert.ok(result.text.startsWith(PREFIX) && result.text.endsWith('".'), result.text);
    t.diagnostic(`${r.ms} ms; route: ${await lastRoute()}; answer: ${result.text}${await habitsMet(proxy)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// opencode
// ---------------------------------------------------------------------------------------------

describe('opencode (opencode-ai) headless', () => {
  let proxy;
  let s;
  let OPENCODE;

  before(async () => {
    OPENCODE = opencodeBin();
    proxy = await agentProxy(4);
    s = await scratch('opencode');
    await fs.mkdir(path.join(s.root, 'tmp'));
    const config = path.join(s.home, '.config', 'opencode');
    await fs.mkdir(config, { recursive: true });
    // Global config ($XDG_CONFIG_HOME/opencode/opencode.json): one OpenAI-compatible provider
    // (the bundled @ai-sdk/openai-compatible) at the proxy, the only provider enabled; its model
    // also does the title generation (small_model); every tool permission allowed (`opencode
    // run` rejects any permission it would have to ask for); no auto-update, no sharing.
    await fs.writeFile(
      path.join(config, 'opencode.json'),
      JSON.stringify({
        provider: {
          'qwen-proxy': {
            npm: '@ai-sdk/openai-compatible',
            name: 'qwen-proxy',
            options: { baseURL: proxy.baseURL, apiKey: API_KEY },
            models: { [MODEL]: { name: MODEL } },
          },
        },
        model: `qwen-proxy/${MODEL}`,
        small_model: `qwen-proxy/${MODEL}`,
        enabled_providers: ['qwen-proxy'],
        permission: 'allow',
        autoupdate: false,
        share: 'disabled',
      }, null, 2),
    );
    // opencode installs @opencode-ai/plugin into each config dir in the background (a call to
    // the npm registry) unless node_modules exists and package-lock.json already lists what
    // package.json does: say it is there.
    const deps = { dependencies: { '@opencode-ai/plugin': OPENCODE_VERSION } };
    await fs.mkdir(path.join(config, 'node_modules'));
    await fs.writeFile(path.join(config, 'package.json'), JSON.stringify(deps, null, 2));
    await fs.writeFile(path.join(config, 'package-lock.json'), JSON.stringify({ lockfileVersion: 3, packages: { '': deps } }, null, 2));
  });

  after(async () => {
    try {
      if (s) {
        const left = await stopLeftovers(s.home);
        assert.deepEqual(await processesWithHome(s.home), [], 'an opencode process survived');
        if (left.length) console.log(`# opencode: stopped leftover pids ${left.join(', ')}`);
      }
    } finally {
      await removeScratch(s);
      await proxy?.stop();
    }
  });

  function opencode(prompt) {
    const env = agentEnv(s, {
      OPENCODE_DISABLE_MODELS_FETCH: '1', // no models.dev catalogue download (the built-in snapshot serves)
      OPENCODE_DISABLE_AUTOUPDATE: '1',
      OPENCODE_DISABLE_SHARE: '1',
      OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
      OPENCODE_DISABLE_DEFAULT_PLUGINS: '1',
      OPENCODE_DISABLE_CLAUDE_CODE: '1', // no ~/.claude prompt or skills scan
      OPENCODE_DISABLE_EXTERNAL_SKILLS: '1',
    });
    // One argument, as a shell passes a quoted prompt. `opencode run` wraps every argument that
    // contains a space in double quotes before sending it, so the model sees
    // `"Read notes.txt @@sim:call=…"` (the simulator leaves a closing quote out of a directive).
    return run(OPENCODE, ['run', '--format', 'json', '--model', `qwen-proxy/${MODEL}`, prompt], { cwd: s.ws, env });
  }

  /** `opencode run --format json`: one JSON event per line (step_start, tool_use, text, step_finish, error). */
  function parse(r) {
    const events = [];
    for (const line of r.stdout.split('\n')) {
      const l = line.trim();
      if (!l) continue;
      try {
        events.push(JSON.parse(l));
      } catch {
        assert.fail(`unparsable --format json line: ${l.slice(0, 300)}\n${describeRun(r)}`);
      }
    }
    return events;
  }

  test('read: the model calls the real tool, then answers quoting its result', async (t) => {
    const secret = token('opencode-read');
    const file = path.join(s.ws, 'notes.txt');
    await fs.writeFile(file, `Notes for the agent test\n${secret}\n`);
    const before = await proxy.completionRequests();

    const r = await opencode(`Read notes.txt @@sim:call=read,${b64({ filePath: file })}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    assert.deepEqual(events.filter((e) => e.type === 'error'), [], `error events\n${describeRun(r)}`);
    // The tool ran: opencode reports each finished tool part as a `tool_use` event.
    const uses = events.filter((e) => e.type === 'tool_use' && e.part?.tool === 'read');
    const said = events.filter((e) => e.type === 'text').map((e) => e.part.text);
    if (endedHonestly(t, said.length ? said[said.length - 1] : '', uses.length)) return;
    assert.equal(uses.length, 1, `one read call expected\n${describeRun(r)}`);
    const { state } = uses[0].part;
    assert.equal(state.status, 'completed', JSON.stringify(state));
    assert.deepEqual(state.input, { filePath: file });
    assert.match(state.output, new RegExp(`^2: ${secret}$`, 'm'));
    // The answer: read's result is the numbered lines inside <path>/<type>/<content> tags, so
    // its last line, which the simulated model quotes, is the closing `</content>`.
    const texts = events.filter((e) => e.type === 'text').map((e) => e.part.text);
    assert.ok(texts.length > 0, `no text events\n${describeRun(r)}`);
    // (A fenced example call is the model's prose; a block outside a fence never shows.)
    for (const text of texts) assert.ok(!outsideFences(text).includes('[TOOL CALL]'), `raw call block shown: ${text}`);
    assert.equal(texts[texts.length - 1].trim(), `${PREFIX}</content>".`);
    const finishes = events.filter((e) => e.type === 'step_finish').map((e) => e.part.reason);
    assert.deepEqual(finishes, ['tool-calls', 'stop'], describeRun(r));
    // (opencode also asks for a session title, without tools, in a chat of its own.)
    assert.ok((await proxy.completionRequests()) - before >= 2, 'the tool turn and the answer turn both reached the simulator');
    t.diagnostic(`${r.ms} ms; upstream body bytes per chat turn: ${JSON.stringify(await upstreamTurns(proxy))}${await habitsMet(proxy)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Claude Code
// ---------------------------------------------------------------------------------------------

/**
 * A pass-through between an agent (Claude Code, Codex) and its proxy that notes every request:
 * method, path, body size, the parsed JSON body, and the proxy's status (with the start of an
 * error's body). The proxy counts requests by route in /metrics, but not their sizes or models,
 * and these tests report what the agent sent. Bytes go through untouched (a stream as it comes).
 */
async function startRecorder(target) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const rec = { method: req.method, path: req.url, bytes: body.length };
      try {
        if (body.length) rec.body = JSON.parse(body);
      } catch {}
      requests.push(rec);
      const up = http.request(new URL(req.url, target), { method: req.method, headers: req.headers }, (ur) => {
        rec.status = ur.statusCode;
        if (ur.statusCode >= 400) {
          rec.error = '';
          ur.on('data', (d) => {
            if (rec.error.length < 2000) rec.error += d;
          });
        }
        res.writeHead(ur.statusCode, ur.headers);
        ur.pipe(res);
      });
      up.on('error', (e) => {
        rec.status ??= 502;
        rec.error = `relay: ${e.message}`;
        if (res.headersSent) res.destroy();
        else res.writeHead(502).end();
      });
      // The agent may drop a request it no longer needs: drop the proxy's too.
      res.on('close', () => {
        if (!res.writableFinished) up.destroy();
      });
      up.end(body);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    async stop() {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Every upstream chat and how many turns it holds now (`chatsSince` compares with it). */
async function chatSnapshot(proxy) {
  return new Map(Object.entries((await proxy.stats()).chats ?? {}).map(([id, c]) => [id, (c.turns ?? []).length]));
}

/**
 * The upstream chats that took turns since `known` (a `chatSnapshot`), each with those turns
 * only, in creation order. A chat made ahead before the run (the proxy's chat pool) counts by
 * the turns it took, not by when it was created.
 */
async function chatsSince(proxy, known) {
  return Object.entries((await proxy.stats()).chats ?? {})
    .map(([id, c]) => ({ id, turns: (c.turns ?? []).slice(known.get(id) ?? 0) }))
    .filter((c) => c.turns.length > 0);
}

/**
 * The loop's turns continued one upstream chat: one chat that took turns during the run
 * (`known`: the snapshot before it) holds a turn for each loop request, each turn's parent
 * the turn before (side requests, without the loop's history, may have chats of their own).
 */
async function oneChat(proxy, known, loop) {
  const chats = await chatsSince(proxy, known);
  const multi = chats.filter((c) => c.turns.length > 1);
  assert.equal(multi.length, 1, `one upstream chat should carry the loop: ${JSON.stringify(chats)}`);
  const { turns } = multi[0];
  assert.equal(turns.length, loop.length, `one upstream turn per loop request: ${JSON.stringify(turns)}`);
  assert.equal(turns[0].parent_id, null);
  for (let i = 1; i < turns.length; i++) assert.equal(turns[i].parent_id, turns[i - 1].response_id, `turn ${i} continues turn ${i - 1}`);
  return { chats: chats.length, upstreamBytes: turns.map((t) => t.body_bytes) };
}

/** An agent's JSON-lines output (`what`: its flag, for the failure message): one event per line. */
function jsonLines(r, what) {
  const events = [];
  for (const line of r.stdout.split('\n')) {
    const l = line.trim();
    if (!l) continue;
    try {
      events.push(JSON.parse(l));
    } catch {
      assert.fail(`unparsable ${what} line: ${l.slice(0, 300)}\n${describeRun(r)}`);
    }
  }
  return events;
}

/** The last non-empty line, trimmed: what the simulated model quotes (README "Simulator"). */
function lastLine(text) {
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l);
  return lines[lines.length - 1];
}

/** A tool_result's text (a string, or text blocks). */
function resultText(block) {
  return typeof block.content === 'string' ? block.content : block.content.map((c) => c.text ?? '').join('');
}

// Claude Code speaks Anthropic's Messages API (`POST /v1/messages?beta=true`, streamed) with its
// default model (claude-opus-5-5 in 2.1.337, which the proxy maps to qwen3.8-max) and about a
// dozen tools (Read, Write, Edit, Bash, …; ~49 KB first request). Headless (`-p`) with
// nonessential traffic off it sent nothing else in 2.1.337 — no haiku title or topic request,
// no count_tokens, no `HEAD /api/hello` probe; whatever a later version adds goes through the
// same relay, is reported as a side request and must not be refused.
describe('Claude Code (@anthropic-ai/claude-code) headless', () => {
  let proxy;
  let relay;
  let s;
  let CLAUDE;

  before(async () => {
    CLAUDE = claudeBin();
    // Habits mode: the cycle from offset 6 (the other agents' calls meet 3–7 with
    // AGENT_SUITE_HABITS=3), so these two calls meet own_name and case_variant.
    proxy = await agentProxy(6);
    relay = await startRecorder(new URL(proxy.baseURL).origin);
    s = await scratch('claude');
    await fs.mkdir(path.join(s.root, 'tmp'));
  });

  after(async () => {
    try {
      if (s) {
        const left = await stopLeftovers(s.home);
        assert.deepEqual(await processesWithHome(s.home), [], 'a Claude Code process survived');
        if (left.length) console.log(`# claude: stopped leftover pids ${left.join(', ')}`);
      }
    } finally {
      await removeScratch(s);
      await relay?.stop();
      await proxy?.stop();
    }
  });

  /**
   * `claude -p` with an API key needs no login. Its configuration lives in CLAUDE_CONFIG_DIR
   * (inside the scratch HOME); no update check, telemetry, error reports or other traffic
   * beyond the model's. `--dangerously-skip-permissions` refuses to run as root (as CI does), so
   * the task's tools are granted by name; any other tool would be denied, not asked for.
   */
  function claude(prompt, tools) {
    const env = agentEnv(s, {
      // The Anthropic SDK appends /v1/messages itself: the base URL has no /v1. It points at the
      // relay, which passes everything on to the proxy.
      ANTHROPIC_BASE_URL: relay.url,
      ANTHROPIC_API_KEY: API_KEY,
      CLAUDE_CONFIG_DIR: path.join(s.home, '.claude'),
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
      DISABLE_TELEMETRY: '1',
      DISABLE_ERROR_REPORTING: '1',
      DISABLE_AUTOUPDATER: '1',
    });
    // `--allowedTools` takes several values, so `--` ends it before the prompt (Claude Code
    // would otherwise read the prompt as a tool name and stop).
    return run(CLAUDE, [
      '-p',
      '--output-format', 'stream-json', '--verbose',
      '--allowedTools', tools.join(','),
      '--', prompt,
    ], { cwd: s.ws, env });
  }

  /** `--output-format stream-json --verbose`: one JSON event per line (system, assistant, user, result). */
  const parse = (r) => jsonLines(r, 'stream-json');

  function toolEvents(events, name) {
    const uses = events.filter((e) => e.type === 'assistant').flatMap((e) => e.message.content)
      .filter((c) => c.type === 'tool_use' && c.name === name);
    const results = events.filter((e) => e.type === 'user' && Array.isArray(e.message?.content))
      .flatMap((e) => e.message.content)
      .filter((c) => c.type === 'tool_result' && uses.some((u) => u.id === c.tool_use_id));
    return { uses, results };
  }

  function finalResult(events, r) {
    const result = events.find((e) => e.type === 'result');
    assert.ok(result, `no result event\n${describeRun(r)}`);
    assert.equal(result.subtype, 'success', describeRun(r));
    assert.equal(result.is_error, false, describeRun(r));
    assert.deepEqual(result.permission_denials, [], 'a tool the task needs was denied');
    return result;
  }

  /**
   * What Claude Code sent during one run (`from`: the relay's count before it): the agent loop —
   * the requests for the model it announced, with its tools — and everything else (side
   * requests: other models, count_tokens, probes). None may have been refused.
   */
  function traffic(events, from, tool) {
    const model = events.find((e) => e.type === 'system' && e.subtype === 'init')?.model;
    assert.ok(model, 'no init event naming the model');
    const sent = relay.requests.slice(from);
    const failed = sent.filter((q) => !(q.status < 400))
      .map(({ method, path: p, body, status, error }) => ({ method, path: p, model: body?.model, status, error }));
    assert.deepEqual(failed, [], 'the proxy refused or failed a request Claude Code sent');
    const isLoop = (q) => q.method === 'POST' && /^\/v1\/messages(\?|$)/.test(q.path) && q.body?.model === model && Array.isArray(q.body.tools);
    const loop = sent.filter(isLoop);
    assert.ok(loop.length >= 2, `the tool turn and the answer turn both reached the proxy: ${loop.length} request(s)`);
    // The directive's arguments are the ones Claude Code's own tool declares.
    const declared = loop[0].body.tools.find((d) => d.name === tool);
    assert.ok(declared, `Claude Code did not offer ${tool}: ${loop[0].body.tools.map((d) => d.name).join(', ')}`);
    assert.equal(declared.input_schema?.properties?.file_path?.type, 'string', JSON.stringify(declared.input_schema));
    const side = sent.filter((q) => !isLoop(q)).map((q) => `${q.method} ${q.path}${q.body?.model ? ` ${q.body.model}` : ''} ${q.bytes} B`);
    const summary = `loop: ${loop.length} × POST /v1/messages ${model} (${loop[0].body.tools.length} tools; first body ${loop[0].bytes} B, ` +
      `then ${loop.slice(1).map((q) => q.bytes).join(', ')} B); side requests: ${side.length ? side.join('; ') : 'none'}`;
    return { loop, summary };
  }

  test('Read: the model calls the real tool, then answers with the file\'s last line', async (t) => {
    const secret = token('claude-read');
    const file = path.join(s.ws, 'notes.txt');
    // No newline at the end: Read numbers a trailing newline as one more, empty line ("3\t"),
    // and the simulated model would quote its number.
    await fs.writeFile(file, `Notes for the agent test\n${secret}`);
    const from = relay.requests.length;
    const known = await chatSnapshot(proxy);

    const r = await claude(`Read notes.txt @@sim:call=Read,${b64({ file_path: file })}`, ['Read']);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const { uses, results } = toolEvents(events, 'Read');
    if (endedHonestly(t, finalResult(events, r).result, results.length)) return;
    assert.equal(uses.length, 1, `one Read call expected\n${describeRun(r)}`);
    assert.deepEqual(uses[0].input, { file_path: file });
    assert.equal(results.length, 1, `no tool_result for Read\n${describeRun(r)}`);
    assert.notEqual(results[0].is_error, true, JSON.stringify(results[0]));
    const { loop, summary } = traffic(events, from, 'Read');
    // The answer quotes the last line of the tool result as the model received it: the file's
    // last line, numbered by Read.
    const received = loop[loop.length - 1].body.messages.at(-1).content.find((c) => c.type === 'tool_result');
    assert.ok(received, 'the last request carries the tool result');
    const quoted = lastLine(resultText(received));
    assert.ok(quoted.endsWith(secret), `the tool result's last line is the file's: ${quoted}`);
    const result = finalResult(events, r);
    assert.equal(result.result.trim(), `${PREFIX}${quoted}".`);
    assert.equal(result.num_turns, loop.length, 'one Claude Code turn per loop request');
    const { chats, upstreamBytes } = await oneChat(proxy, known, loop);
    t.diagnostic(`${r.ms} ms; ${summary}; upstream chats: ${chats}, loop turns' upstream body bytes ${upstreamBytes.join(', ')}${await habitsMet(proxy)}`);
  });

  test('Write: the model creates a file with the real tool', async (t) => {
    const secret = token('claude-write');
    const file = path.join(s.ws, 'created-by-claude.txt');
    const content = `written by Claude Code\n${secret}\n`;
    const from = relay.requests.length;
    const known = await chatSnapshot(proxy);

    const r = await claude(`Create the file @@sim:call=Write,${b64({ file_path: file, content })}`, ['Write']);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const { uses, results } = toolEvents(events, 'Write');
    if (endedHonestly(t, finalResult(events, r).result, results.length)) return;
    assert.equal(uses.length, 1, `one Write call expected\n${describeRun(r)}`);
    assert.deepEqual(uses[0].input, { file_path: file, content });
    assert.equal(results.length, 1, `no tool_result for Write\n${describeRun(r)}`);
    assert.notEqual(results[0].is_error, true, JSON.stringify(results[0]));
    assert.equal(await fs.readFile(file, 'utf8'), content);
    const { loop, summary } = traffic(events, from, 'Write');
    const result = finalResult(events, r);
    // The answer quotes Claude Code's confirmation, which names the file.
    assert.ok(result.result.startsWith(PREFIX) && result.result.endsWith('".'), result.result);
    assert.ok(result.result.includes(file), result.result);
    assert.equal(result.num_turns, loop.length, 'one Claude Code turn per loop request');
    const { chats } = await oneChat(proxy, known, loop);
    t.diagnostic(`${r.ms} ms; ${summary}; upstream chats: ${chats}; answer: ${result.result}${await habitsMet(proxy)}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Codex CLI
// ---------------------------------------------------------------------------------------------

// Codex speaks OpenAI's Responses API (`POST /v1/responses`, streamed, `store: false`): every
// request carries the whole history — a ~17 KB developer prompt, the environment context, the
// prompt, and after a call the `reasoning`, `function_call` and `function_call_output` items —
// and ~18 KB of tools (~41 KB first request in 0.171.0), with `prompt_cache_key` and the
// `session-id` header both the thread id. Its shell tool is `exec_command` (`{cmd}`, run with
// the user's shell `-lc` in the workspace). `apply_patch` is offered only for a model whose
// catalogue entry asks for it, which a custom provider's model has not unless the provider
// names a catalogue (`model_catalog_url`): the two shell tasks run without one (0.171.0 then
// notes "Model metadata … not found" and falls back to its defaults), the patch task with the
// proxy's (`GET /v1/models` carries Codex's `models` array next to OpenAI's `data`), which
// also replaces the 17 KB prompt with the catalogue's short `base_instructions` and asks for
// reasoning (`effort: "medium"`, the entry's default). With the config below 0.171.0 sent
// nothing but the loop, and with the catalogue one `GET /v1/models?client_version=0.171.0`
// before it (no update check, no analytics: it connected to the relay only); whatever a later
// version adds goes through the same relay, is reported as a side request and must not be
// refused.
describe('Codex CLI (@openai/codex) exec', () => {
  let proxy;
  let relay;
  let s;

  before(async () => {
    // Habits mode: the cycle from offset 7, so with AGENT_SUITE_HABITS=3 the shell calls meet
    // case_variant (`EXEC_COMMAND`, …; Claude Code's second call meets it too) and
    // narrated_batch, which no other agent's call meets there (the others: 3–7, 9–10), and the
    // patch call call_in_thinking in its odd form (the call only in the thinking, then a
    // sentence: the streamed answer ends honestly, no tool runs).
    proxy = await agentProxy(7);
    relay = await startRecorder(new URL(proxy.baseURL).origin);
    s = await scratch('codex');
    await fs.mkdir(path.join(s.root, 'tmp'));
    await fs.mkdir(path.join(s.home, '.codex'));
    // $CODEX_HOME/config.toml: one provider at the relay, speaking the Responses API over HTTP
    // (no WebSocket transport), its key from the environment. No retries: a refused request
    // or a broken stream must fail the run, not hide behind a second attempt. No update check,
    // plugins (their marketplace sync), analytics or metrics export.
    await fs.writeFile(path.join(s.home, '.codex', 'config.toml'), [
      `model = "${MODEL}"`,
      'model_provider = "qwen"',
      'check_for_update_on_startup = false',
      '',
      '[model_providers.qwen]',
      'name = "qwen-proxy"',
      `base_url = "${relay.url}/v1"`,
      'wire_api = "responses"',
      'env_key = "QWEN_API_KEY"',
      'supports_websockets = false',
      'request_max_retries = 0',
      'stream_max_retries = 0',
      '',
      '[features]',
      'plugins = false',
      '',
      '[analytics]',
      'enabled = false',
      '',
      '[otel]',
      'metrics_exporter = "none"',
      '',
    ].join('\n'));
  });

  after(async () => {
    try {
      if (s) {
        const left = await stopLeftovers(s.home);
        assert.deepEqual(await processesWithHome(s.home), [], 'a Codex process survived');
        if (left.length) console.log(`# codex: stopped leftover pids ${left.join(', ')}`);
      }
    } finally {
      await removeScratch(s);
      await relay?.stop();
      await proxy?.stop();
    }
  });

  /**
   * `codex exec` needs no login with a provider key. The workspace is no git repository (hence
   * the check skipped); `--sandbox workspace-write` lets the commands write there (Codex's
   * bundled bubblewrap; it also runs as root). stdin is /dev/null: `codex exec` appends piped
   * input to the prompt ("Reading additional input from stdin..." on stderr, then nothing).
   */
  function codex(prompt, overrides = []) {
    // (The key's variable has no "proxy" in its name: agentEnv drops those.)
    const env = agentEnv(s, { CODEX_HOME: path.join(s.home, '.codex'), QWEN_API_KEY: API_KEY });
    return run(process.execPath, [
      CODEX_CLI, 'exec',
      '--skip-git-repo-check',
      '--sandbox', 'workspace-write',
      '--json',
      // `-c key=value` (a TOML value) over config.toml, for this run only.
      ...overrides.flatMap((o) => ['-c', o]),
      prompt,
    ], { cwd: s.ws, env });
  }

  /** `codex exec --json`: one JSON event per line (thread.started, turn.*, item.started/completed). */
  const parse = (r) => jsonLines(r, '--json');

  /** The completed items of one type (command_execution, agent_message, error, …). */
  function completed(events, type) {
    return events.filter((e) => e.type === 'item.completed' && e.item?.type === type).map((e) => e.item);
  }

  /**
   * The run's one turn completed, with no error but Codex's notice that it has no catalogue
   * metadata for the model (0.171.0 says so as an `error` item for a custom provider's model
   * when no catalogue names it; a stream error or reconnect would be another). Returns the last
   * agent message: the answer.
   */
  function finalAnswer(events, r) {
    assert.deepEqual(events.filter((e) => e.type === 'turn.failed' || e.type === 'error'), [], `failure events\n${describeRun(r)}`);
    assert.equal(events.filter((e) => e.type === 'turn.completed').length, 1, `one completed turn expected\n${describeRun(r)}`);
    const errors = completed(events, 'error').filter((i) => !/^Model metadata for `[^`]+` not found/.test(i.message));
    assert.deepEqual(errors, [], `error items\n${describeRun(r)}`);
    const said = completed(events, 'agent_message');
    assert.ok(said.length > 0, `no agent_message\n${describeRun(r)}`);
    return said[said.length - 1].text;
  }

  /** What Codex sent during one run (`from`: the relay's count before it); none refused. */
  function sentSince(from) {
    const sent = relay.requests.slice(from);
    const failed = sent.filter((q) => !(q.status < 400))
      .map(({ method, path: p, body, status, error }) => ({ method, path: p, model: body?.model, status, error }));
    assert.deepEqual(failed, [], 'the proxy refused or failed a request Codex sent');
    return sent;
  }

  /**
   * The agent loop among what Codex sent — the Responses requests with a history, at least
   * `min`: by default the tool turn and the answer turn — and a summary of it and of the side
   * requests.
   */
  function loopOf(sent, min = 2) {
    const isLoop = (q) => q.method === 'POST' && /^\/v1\/responses(\?|$)/.test(q.path) && Array.isArray(q.body?.input);
    const loop = sent.filter(isLoop);
    assert.ok(loop.length >= min, `${min} loop request(s) expected (the tool turn, the answer turn): ${loop.length} reached the proxy`);
    assert.deepEqual([...new Set(loop.map((q) => q.body.model))], [MODEL], 'the configured model');
    const side = sent.filter((q) => !isLoop(q)).map((q) => `${q.method} ${q.path}${q.body?.model ? ` ${q.body.model}` : ''} ${q.bytes} B → ${q.status}`);
    const then = loop.length > 1 ? `, then ${loop.slice(1).map((q) => q.bytes).join(', ')} B` : '';
    const summary = `loop: ${loop.length} × POST /v1/responses ${MODEL} (${loop[0].body.tools.length} tools; first body ${loop[0].bytes} B${then}); ` +
      `side requests: ${side.length ? side.join('; ') : 'none'}`;
    return { loop, summary };
  }

  /**
   * The agent loop and the one shell call Codex made: the `function_call` its last request
   * replays (its arguments exactly the directive's) and the `function_call_output` that answers
   * it, the text the model received.
   */
  function traffic(sent, args) {
    const { loop, summary } = loopOf(sent);
    // The directive's arguments are the ones Codex's own tool declares.
    const declared = loop[0].body.tools.find((d) => d.type === 'function' && d.name === 'exec_command');
    assert.ok(declared, `Codex did not offer exec_command: ${loop[0].body.tools.map((d) => d.name ?? d.type).join(', ')}`);
    assert.equal(declared.parameters?.properties?.cmd?.type, 'string', JSON.stringify(declared.parameters));
    const input = loop[loop.length - 1].body.input;
    const calls = input.filter((i) => i.type === 'function_call');
    assert.equal(calls.length, 1, `one function_call in the replayed history: ${JSON.stringify(calls)}`);
    assert.equal(calls[0].name, 'exec_command');
    assert.deepEqual(JSON.parse(calls[0].arguments), args);
    const outputs = input.filter((i) => i.type === 'function_call_output' && i.call_id === calls[0].call_id);
    assert.equal(outputs.length, 1, `the call's output in the replayed history: ${JSON.stringify(input.slice(-3))}`);
    assert.equal(typeof outputs[0].output, 'string', JSON.stringify(outputs[0]));
    return { loop, output: outputs[0].output, summary };
  }

  test('exec_command: the model runs `cat`, then answers with the file\'s last line', async (t) => {
    const secret = token('codex-read');
    const content = `Notes for the agent test\n${secret}\n`;
    await fs.writeFile(path.join(s.ws, 'notes.txt'), content);
    const args = { cmd: 'cat notes.txt' };
    const from = relay.requests.length;
    const known = await chatSnapshot(proxy);

    const r = await codex(`Read notes.txt @@sim:call=exec_command,${b64(args)}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const sent = sentSince(from);
    const runs = completed(events, 'command_execution');
    const answer = finalAnswer(events, r);
    if (endedHonestly(t, answer, runs.length)) return;
    assert.equal(runs.length, 1, `one command expected\n${describeRun(r)}`);
    assert.ok(runs[0].command.includes(args.cmd), runs[0].command);
    assert.equal(runs[0].status, 'completed', JSON.stringify(runs[0]));
    assert.equal(runs[0].exit_code, 0, JSON.stringify(runs[0]));
    assert.equal(runs[0].aggregated_output, content);
    const { loop, output, summary } = traffic(sent, args);
    // The answer quotes the last line of the tool result as the model received it: Codex's
    // header lines (Chunk ID, Wall time, exit code, token count, "Output:"), then the file —
    // whose trailing newline leaves an empty line, which the simulated model skips.
    const quoted = lastLine(output);
    assert.equal(quoted, secret, `the tool result's last line is the file's: ${output}`);
    assert.equal(answer.trim(), `${PREFIX}${quoted}".`);
    const { chats, upstreamBytes } = await oneChat(proxy, known, loop);
    t.diagnostic(`${r.ms} ms; ${summary}; upstream chats: ${chats}, loop turns' upstream body bytes ${upstreamBytes.join(', ')}${await habitsMet(proxy)}`);
  });

  test('exec_command: the model writes a file with `printf`, and it appears in the workspace', async (t) => {
    const secret = token('codex-write');
    const file = path.join(s.ws, 'created-by-codex.txt');
    const content = `written by Codex\n${secret}\n`;
    // One single-quoted word holds the newlines; printf '%s' writes it as it is.
    const args = { cmd: `printf '%s' '${content}' > created-by-codex.txt` };
    const from = relay.requests.length;
    const known = await chatSnapshot(proxy);

    const r = await codex(`Create the file @@sim:call=exec_command,${b64(args)}`);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const sent = sentSince(from);
    const runs = completed(events, 'command_execution');
    const answer = finalAnswer(events, r).trim();
    if (endedHonestly(t, answer, runs.length)) return;
    assert.equal(runs.length, 1, `one command expected\n${describeRun(r)}`);
    assert.equal(runs[0].status, 'completed', JSON.stringify(runs[0]));
    assert.equal(runs[0].exit_code, 0, JSON.stringify(runs[0]));
    assert.equal(await fs.readFile(file, 'utf8'), content);
    const { loop, output, summary } = traffic(sent, args);
    // The command prints nothing: the result is Codex's header lines, the last "Output:".
    assert.equal(answer, `${PREFIX}${lastLine(output)}".`);
    const { chats } = await oneChat(proxy, known, loop);
    t.diagnostic(`${r.ms} ms; ${summary}; upstream chats: ${chats}; answer: ${answer}${await habitsMet(proxy)}`);
  });

  test('apply_patch: with the proxy\'s model catalogue, the model adds a file with the real freeform tool', async (t) => {
    const secret = token('codex-patch');
    const name = 'created-by-patch.txt';
    const file = path.join(s.ws, name);
    const lines = ['written by apply_patch', secret];
    // A freeform tool's call is its raw text; the model sees the tool as a function with one
    // string parameter, `input`, and the proxy sends that back as the call's `input`.
    const patch = `*** Begin Patch\n*** Add File: ${name}\n${lines.map((l) => `+${l}\n`).join('')}*** End Patch\n`;
    // What the proxy serves as Codex's catalogue (the relay keeps no 200 body).
    const catalogue = await (await fetch(`${proxy.baseURL}/models`)).json();
    const entry = catalogue.models?.find((m) => m.slug === MODEL);
    assert.ok(entry, `no Codex catalogue entry for ${MODEL}: ${JSON.stringify(catalogue).slice(0, 500)}`);
    assert.equal(entry.apply_patch_tool_type, 'freeform');
    // Codex keeps the catalogue in $CODEX_HOME/models_cache.json: none, so this run fetches it.
    await fs.rm(path.join(s.home, '.codex', 'models_cache.json'), { force: true });
    const from = relay.requests.length;
    const known = await chatSnapshot(proxy);

    const r = await codex(`Create the file @@sim:call=apply_patch,${b64({ input: patch })}`, [
      `model_providers.qwen.model_catalog_url="${relay.url}/v1/models"`,
    ]);

    assert.equal(r.timedOut, false, describeRun(r));
    assert.equal(r.code, 0, describeRun(r));
    const events = parse(r);
    const sent = sentSince(from);
    // The catalogue: fetched through the relay, answered, and its entry found this time.
    const fetches = sent.filter((q) => q.method === 'GET' && /^\/v1\/models(\?|$)/.test(q.path));
    assert.ok(fetches.length >= 1, `Codex did not fetch the catalogue: ${sent.map((q) => `${q.method} ${q.path}`).join('; ')}`);
    for (const q of fetches) assert.equal(q.status, 200, JSON.stringify(q));
    const answer = finalAnswer(events, r).trim();
    assert.deepEqual(completed(events, 'error'), [], `error items (a catalogue miss?)\n${describeRun(r)}`);
    const changes = completed(events, 'file_change');
    // (An honest end has only the tool turn.)
    const { loop, summary } = loopOf(sent, 1);
    // Codex declares apply_patch as the catalogue asks: a custom tool with its lark grammar.
    const declared = loop[0].body.tools.filter((d) => d.name === 'apply_patch');
    assert.equal(declared.length, 1, `Codex did not offer apply_patch once: ${loop[0].body.tools.map((d) => d.name ?? d.type).join(', ')}`);
    assert.equal(declared[0].type, 'custom', JSON.stringify(declared[0]).slice(0, 500));
    assert.equal(declared[0].format?.type, 'grammar', JSON.stringify(declared[0].format).slice(0, 500));
    assert.equal(declared[0].format.syntax, 'lark');
    assert.match(declared[0].format.definition, /Add File/);
    // The catalogue's base_instructions replace Codex's own ~17 KB prompt as the first
    // developer message.
    const text = (item) => (Array.isArray(item.content) ? item.content.map((c) => c.text ?? '').join('') : String(item.content ?? ''));
    const developer = loop[0].body.input.filter((i) => i.type === 'message' && i.role === 'developer');
    assert.ok(developer.length > 0, 'no developer message in the first request');
    assert.equal(loop[0].body.instructions ?? text(developer[0]), entry.base_instructions, 'the catalogue\'s base_instructions are the prompt');
    const seen = `${r.ms} ms; catalogue: ${fetches.map((q) => `GET ${q.path} → ${q.status}`).join(', ')} (${catalogue.models.length} models; ` +
      `${MODEL}: context ${entry.context_window}, reasoning ${entry.default_reasoning_level}); ${summary}; first request: ` +
      `developer prompt ${Buffer.byteLength(text(developer[0]))} B, tools ${Buffer.byteLength(JSON.stringify(loop[0].body.tools))} B ` +
      `(apply_patch ${Buffer.byteLength(JSON.stringify(declared[0]))} B), reasoning ${JSON.stringify(loop[0].body.reasoning)}`;
    if (endedHonestly(t, answer, changes.length)) {
      assert.equal(existsSync(file), false, 'no patch applied');
      t.diagnostic(`${seen}${await habitsMet(proxy)}`);
      return;
    }
    assert.ok(loop.length >= 2, `the tool turn and the answer turn both reached the proxy: ${loop.length} request(s)`);
    assert.equal(changes.length, 1, `one file_change expected\n${describeRun(r)}`);
    assert.equal(changes[0].status, 'completed', JSON.stringify(changes[0]));
    assert.deepEqual(changes[0].changes, [{ path: file, kind: 'add' }]);
    // apply_patch writes each added line with its newline.
    assert.equal(await fs.readFile(file, 'utf8'), lines.map((l) => `${l}\n`).join(''));
    // The last request replays the call as a `custom_tool_call` with the patch as its input,
    // answered by a `custom_tool_call_output` (no function call in between).
    const input = loop[loop.length - 1].body.input;
    assert.deepEqual(input.filter((i) => i.type === 'function_call'), [], 'no function_call in the replayed history');
    const calls = input.filter((i) => i.type === 'custom_tool_call');
    assert.equal(calls.length, 1, `one custom_tool_call in the replayed history: ${JSON.stringify(input.slice(-3))}`);
    assert.equal(calls[0].name, 'apply_patch');
    assert.equal(calls[0].input, patch);
    const outputs = input.filter((i) => i.type === 'custom_tool_call_output' && i.call_id === calls[0].call_id);
    assert.equal(outputs.length, 1, `the call's output in the replayed history: ${JSON.stringify(input.slice(-3))}`);
    assert.equal(typeof outputs[0].output, 'string', JSON.stringify(outputs[0]));
    // The answer quotes the output's last line: Codex's "Success. Updated the following
    // files:" list, the new file's line last.
    const quoted = lastLine(outputs[0].output);
    assert.equal(quoted, `A ${name}`, `the output's last line names the added file: ${outputs[0].output}`);
    assert.equal(answer, `${PREFIX}${quoted}".`);
    const { chats, upstreamBytes } = await oneChat(proxy, known, loop);
    t.diagnostic(`${seen}; upstream chats: ${chats}, loop turns' upstream body bytes ${upstreamBytes.join(', ')}; answer: ${answer}${await habitsMet(proxy)}`);
  });
});
