/**
 * The front door under load and failure (issue 14), over real front doors (in-process and the real
 * `llm-proxy http` CLI), real NATS, real workers and the fake provider: 200 concurrent streams
 * through two front doors and two workers, a client that drops mid-stream, a front door started
 * before NATS, a front door SIGKILLed under load, keep-alive and pipelining. Whatever the HTTP
 * side does, every request that reaches a worker has exactly one usage event.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { Client as UndiciClient } from 'undici';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { connectToNats } from '../src/bus/connect.js';
import { httpSchema } from '../src/config/http-schema.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { startFrontDoor, type FrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { freePort } from './helpers/ports.js';
import {
  REPO_ROOT,
  TEST_API_KEY,
  startInProcessWorker,
  testConfig,
  usageEventFor,
  waitForUsageEvents,
  type InProcessWorker,
} from './helpers/worker.js';

const SECRET = 'front-door-load-s3cret-51c7';
const HTTP = httpSchema.parse({ heartbeat_ms: 200, headers_timeout_ms: 2_000, request_timeout_ms: 5_000 });

let nats: NatsServerHandle;
let openai: FakeOpenAI;
let workers: InProcessWorker[] = [];
let doors: FrontDoor[] = [];
let client: NatsConnection;

function openDoor(natsUrl: string, logger = createLogger({ level: 'silent' })): Promise<FrontDoor> {
  return startFrontDoor({
    http: HTTP,
    connecting: connectToNats({ servers: natsUrl }),
    subjectPrefix: 'llm',
    secret: SECRET,
    logger,
    port: 0,
  });
}

async function until(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function post(url: string, path: string, body: object, signal?: AbortSignal): Promise<Response> {
  return fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRET}` },
    body: JSON.stringify(body),
    ...(signal !== undefined ? { signal } : {}),
  });
}

const chatBody = (requestId: string, text: string, more: object = {}) => ({
  model: 'gpt-test',
  request_id: requestId,
  messages: [{ role: 'user', content: text }],
  metadata: { agent_id: 'agent:load' },
  ...more,
});

/** The usage events of requests whose id starts with `prefix`, by id. */
async function eventsByRequest(prefix: string, atLeast: number): Promise<Map<string, UsageEvent[]>> {
  const byId = new Map<string, UsageEvent[]>();
  await until(
    async () => {
      byId.clear();
      for (const event of await waitForUsageEvents(client, 1)) {
        if (!event.request_id.startsWith(prefix)) continue;
        byId.set(event.request_id, [...(byId.get(event.request_id) ?? []), event]);
      }
      return byId.size >= atLeast;
    },
    `${atLeast} usage events for ${prefix}*`,
    20_000,
  );
  return byId;
}

before(async () => {
  nats = await startNatsServer();
  openai = await startFakeOpenAI();
  const config = testConfig({ openai: openai.baseUrl });
  const env = { LLM_PROXY_SECRET: SECRET, FAKE_OPENAI_KEY: TEST_API_KEY };
  workers = await Promise.all([0, 1].map(() => startInProcessWorker({ natsUrl: nats.url, config, env })));
  client = await connect({ servers: nats.url });
  doors = await Promise.all([openDoor(nats.url), openDoor(nats.url)]);
  await until(() => doors.every((door) => door.bus.connected), 'both front doors to connect');
});

after(async () => {
  for (const door of doors) await door.close();
  await client?.close();
  for (const worker of workers) await worker.stop();
  await openai?.close();
  await nats?.dispose();
});

describe('the front door under load', () => {
  test('200 concurrent streams through two front doors and two workers: each complete, each with one usage event', async () => {
    openai.setDefault({ kind: 'ok', chunkIntervalMs: 5 });
    const count = 200;
    const results = await Promise.all(
      Array.from({ length: count }, async (_, index) => {
        const door = doors[index % 2]!;
        const openAI = index % 4 < 2;
        const requestId = `load-stream-${index}`;
        const text = `stream ${index} has five words`;
        const response = await post(
          door.url,
          openAI ? '/v1/chat/completions' : '/internal/llm/proxy',
          chatBody(requestId, text, { stream: true }),
        );
        assert.equal(response.status, 200, `${requestId}: ${response.status}`);
        const body = await response.text();
        if (openAI) {
          const data = body
            .split('\n\n')
            .filter((block) => block.startsWith('data: '))
            .map((block) => block.slice(6));
          assert.equal(data.at(-1), '[DONE]', `${requestId} ends with [DONE]`);
          const content = data
            .slice(0, -1)
            .map((line) => JSON.parse(line) as { choices: Array<{ delta: { content?: string } }> })
            .map((chunk) => chunk.choices[0]?.delta.content ?? '')
            .join('');
          assert.equal(content, `echo: ${text}`);
        } else {
          const end = body.split('\n\n').find((block) => block.startsWith('event: end\n'));
          assert.ok(end !== undefined, `${requestId} has its end event`);
          assert.equal(
            (JSON.parse(end.slice(end.indexOf('data: ') + 6)) as { content: string }).content,
            `echo: ${text}`,
          );
        }
        return requestId;
      }),
    );
    assert.equal(new Set(results).size, count);
    const events = await eventsByRequest('load-stream-', count);
    for (const id of results) {
      const mine = events.get(id) ?? [];
      assert.equal(mine.length, 1, `${id}: ${mine.length} usage events`);
      assert.equal(mine[0]!.status, 'ok');
    }
    // Both workers served.
    assert.equal(new Set([...events.values()].map((list) => list[0]!.worker_id)).size, 2);
  });

  test("a seed client that drops the socket mid-stream: the upstream call is aborted, the event says 'cancelled'", async () => {
    openai.enqueue({ kind: 'ok', chunks: 40, chunkIntervalMs: 100 });
    const closedBefore = openai.closedByClient;
    const controller = new AbortController();
    const response = await post(
      doors[0]!.url,
      '/internal/llm/proxy',
      chatBody('load-drop-1', 'a long answer', { stream: true }),
      controller.signal,
    );
    assert.equal(response.status, 200);
    const reader = response.body!.getReader();
    let seen = '';
    while (!seen.includes('event: chunk')) {
      const { value } = await reader.read();
      seen += new TextDecoder().decode(value);
    }
    controller.abort();
    await openai.waitForClosedByClient(closedBefore + 1, 5_000);
    const event = await usageEventFor(client, 'load-drop-1');
    assert.equal(event.status, 'cancelled');
  });

  test('keep-alive: one connection carries many requests; pipelined requests get their own answers in order', async () => {
    openai.setDefault({ kind: 'ok' });
    const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
    const url = new URL(doors[1]!.url);
    const reused: boolean[] = [];
    for (let index = 0; index < 5; index++) {
      const body = JSON.stringify(chatBody(`load-keepalive-${index}`, `keep ${index}`));
      const answer = await new Promise<{ status: number; content: string }>((resolve, reject) => {
        const request = httpRequest(
          {
            agent,
            host: url.hostname,
            port: url.port,
            path: '/internal/llm/proxy',
            method: 'POST',
            headers: { 'content-type': 'application/json', 'x-internal-secret': SECRET },
          },
          (response) => {
            let text = '';
            response.on('data', (chunk: Buffer) => {
              text += chunk.toString();
            });
            response.on('end', () =>
              resolve({ status: response.statusCode ?? 0, content: (JSON.parse(text) as { content: string }).content }),
            );
          },
        );
        request.on('socket', () => reused.push(request.reusedSocket));
        request.on('error', reject);
        request.end(body);
      });
      assert.deepEqual(answer, { status: 200, content: `echo: keep ${index}` });
    }
    agent.destroy();
    assert.deepEqual(reused, [false, true, true, true, true]);

    const pipelined = new UndiciClient(doors[1]!.url, { pipelining: 4 });
    try {
      const answers = await Promise.all(
        Array.from({ length: 8 }, async (_, index) => {
          const { statusCode, body } = await pipelined.request({
            path: '/v1/chat/completions',
            method: 'POST',
            headers: { 'content-type': 'application/json', authorization: `Bearer ${SECRET}` },
            body: JSON.stringify(chatBody(`load-pipelined-${index}`, `pipe ${index}`)),
          });
          const completion = (await body.json()) as { choices: Array<{ message: { content: string } }> };
          return { statusCode, content: completion.choices[0]!.message.content };
        }),
      );
      assert.deepEqual(
        answers,
        Array.from({ length: 8 }, (_, index) => ({ statusCode: 200, content: `echo: pipe ${index}` })),
      );
    } finally {
      await pipelined.close();
    }
  });
});

describe('secrets', () => {
  test("neither the secret nor a wrong one appears in the front door's logs (at trace) or answers", async () => {
    const lines: string[] = [];
    const door = await openDoor(
      nats.url,
      createLogger({ level: 'trace', destination: { write: (line: string) => void lines.push(line) } }),
    );
    try {
      await until(() => door.bus.connected, 'the front door to connect');
      const wrong = 'wrong-secret-7f3e-do-not-log';
      const answers: string[] = [];
      for (const headers of <Array<Record<string, string>>>[
        { 'x-internal-secret': SECRET },
        { authorization: `Bearer ${SECRET}` },
        { 'x-internal-secret': wrong },
        { authorization: `Bearer ${wrong}` },
      ]) {
        for (const [path, body] of [
          ['/internal/llm/proxy', chatBody(`load-secret-${answers.length}`, 'hi')],
          ['/v1/chat/completions', chatBody(`load-secret-${answers.length + 1}`, 'hi', { stream: true })],
          ['/v1/chat/completions', { model: 'gpt-9000', messages: [] }],
          ['/internal/llm/proxy', '{"not json'],
        ] as const) {
          const response = await fetch(`${door.url}${path}`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', ...headers },
            body: typeof body === 'string' ? body : JSON.stringify(body),
          });
          answers.push(`${JSON.stringify([...response.headers])} ${await response.text()}`);
        }
      }
      assert.ok(
        answers.some((answer) => answer.includes('echo: hi')),
        'the right secret was served',
      );
      assert.ok(lines.length > 0, 'the logger wrote something');
      for (const text of [lines.join('\n'), answers.join('\n')]) {
        assert.equal(text.includes(SECRET), false);
        assert.equal(text.includes(wrong), false);
      }
    } finally {
      await door.close();
    }
  });
});

describe('the front door holds no state', () => {
  test('started before NATS: /readyz says 503 and chat answers 503 at once; once NATS and a worker are up it serves', async () => {
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const door = await openDoor(url);
    let late: NatsServerHandle | undefined;
    let lateOpenAI: FakeOpenAI | undefined;
    let worker: InProcessWorker | undefined;
    try {
      const notReady = await fetch(`${door.url}/readyz`);
      assert.equal(notReady.status, 503);
      assert.equal(((await notReady.json()) as { nats: string }).nats, 'not connected');
      const started = Date.now();
      const refused = await post(door.url, '/v1/chat/completions', chatBody('load-early-0', 'too early'));
      assert.equal(refused.status, 503);
      assert.ok(refused.headers.get('retry-after') !== null);
      assert.equal(((await refused.json()) as { error: { code: string } }).error.code, 'no_provider_available');
      assert.ok(Date.now() - started < 1_000);

      late = await startNatsServer({ port });
      await until(() => door.bus.connected, 'the front door to connect to the late NATS');
      const noWorker = await fetch(`${door.url}/readyz`);
      assert.equal(noWorker.status, 503);
      assert.match(((await noWorker.json()) as { workers: string }).workers, /no llm-proxy worker/);

      const noWorkerStarted = Date.now();
      const noWorkerChat = await post(door.url, '/internal/llm/proxy', chatBody('load-early-1', 'no worker'));
      assert.equal(noWorkerChat.status, 503);
      assert.equal(((await noWorkerChat.json()) as { error: { code: string } }).error.code, 'no_provider_available');
      assert.ok(Date.now() - noWorkerStarted < 1_000, 'no worker: refused at once');

      lateOpenAI = await startFakeOpenAI();
      worker = await startInProcessWorker({
        natsUrl: late.url,
        config: testConfig({ openai: lateOpenAI.baseUrl }),
        env: { LLM_PROXY_SECRET: SECRET, FAKE_OPENAI_KEY: TEST_API_KEY },
      });
      await until(async () => (await fetch(`${door.url}/readyz`)).status === 200, '/readyz to say ready');
      const served = await post(door.url, '/v1/chat/completions', chatBody('load-late-1', 'now'));
      assert.equal(served.status, 200);
      assert.equal(
        ((await served.json()) as { choices: Array<{ message: { content: string } }> }).choices[0]!.message.content,
        'echo: now',
      );
    } finally {
      await door.close();
      await worker?.stop();
      await lateOpenAI?.close();
      await late?.dispose();
    }
  });

  test('a front door SIGKILLed under load: the other goes on, and every request that reached a worker has one event', async () => {
    openai.setDefault({ kind: 'ok', delayMs: 20 });
    const dir = mkdtempSync(join(tmpdir(), 'llm-proxy-http-'));
    const configPath = join(dir, 'config.yaml');
    writeFileSync(configPath, stringify(testConfig({ openai: openai.baseUrl })));
    const child = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        join(REPO_ROOT, 'src/cli/main.ts'),
        'http',
        '--config',
        configPath,
        '--nats',
        nats.url,
        '--port',
        '0',
      ],
      {
        cwd: REPO_ROOT,
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LLM_PROXY_SECRET: SECRET },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      const childUrl = await new Promise<string>((resolve, reject) => {
        let output = '';
        const timer = setTimeout(() => reject(new Error(`no "front door listening" line: ${output}`)), 20_000);
        child.stdout!.on('data', (chunk: Buffer) => {
          output += chunk.toString();
          const match = /"address":"([^"]+)"[^\n]*"front door listening"/.exec(output);
          if (match !== null) {
            clearTimeout(timer);
            resolve(match[1]!);
          }
        });
      });
      await until(async () => (await fetch(`${childUrl}/readyz`)).status === 200, 'the child front door to be ready');

      const upstreamBefore = openai.chatRequests.length;
      const outcomes = { childOk: 0, childFailed: 0, otherOk: 0, otherFailed: 0 };
      let next = 0;
      let killed = false;
      const deadline = Date.now() + 2_000;
      const caller = async () => {
        while (Date.now() < deadline) {
          const index = next++;
          const toChild = index % 2 === 0;
          const stream = index % 3 === 0;
          try {
            const response = await post(
              toChild ? childUrl : doors[0]!.url,
              '/v1/chat/completions',
              chatBody(`load-kill-${index}`, `kill ${index}`, stream ? { stream: true } : {}),
            );
            const text = await response.text();
            const ok = response.status === 200 && (!stream || text.endsWith('data: [DONE]\n\n'));
            if (toChild) outcomes[ok ? 'childOk' : 'childFailed']++;
            else outcomes[ok ? 'otherOk' : 'otherFailed']++;
          } catch {
            if (toChild) outcomes.childFailed++;
            else outcomes.otherFailed++;
            if (!toChild) throw new Error(`request ${index} to the surviving front door failed`);
          }
        }
      };
      const load = Promise.all(Array.from({ length: 16 }, caller));
      await new Promise((resolve) => setTimeout(resolve, 700));
      child.kill('SIGKILL');
      killed = true;
      await load;
      assert.ok(killed);
      assert.equal(outcomes.otherFailed, 0, JSON.stringify(outcomes));
      assert.ok(outcomes.otherOk > 20, JSON.stringify(outcomes));
      assert.ok(outcomes.childOk > 0 && outcomes.childFailed > 0, JSON.stringify(outcomes));

      // Every upstream call (a request that reached a worker) has exactly one usage event, the killed door's included.
      await until(() => openai.inFlight === 0, 'the upstream to be idle');
      const reachedUpstream = openai.chatRequests.length - upstreamBefore;
      const events = await eventsByRequest('load-kill-', reachedUpstream);
      assert.equal(events.size, reachedUpstream);
      for (const [id, list] of events) assert.equal(list.length, 1, `${id}: ${list.length} events`);
    } finally {
      child.kill('SIGKILL');
      await exited;
      rmSync(dir, { recursive: true, force: true });
      openai.setDefault({ kind: 'ok' });
    }
  });
});
