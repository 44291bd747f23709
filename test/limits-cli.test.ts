/**
 * `llm-proxy limits` as a user runs it (a child process), reading what
 * limiters standing for workers (or in-process workers) have stored in NATS
 * KV / Redis, measured against the limits the workers stored there.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { jetstream } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import type { NatsConnection } from '@nats-io/nats-core';
import { createClient, LlmProxyError } from '../src/client/index.js';
import { parseConfigText } from '../src/config/index.js';
import { configFingerprint, createLimiter, type AdmissionRequest } from '../src/limits/index.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/fake-openai.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { redisReachable } from './helpers/redis.js';
import { startInProcessWorker, testConfig } from './helpers/worker.js';

const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const PREFIX = `llm-limits-cli-test:${randomUUID().slice(0, 8)}:`;
const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-limits-cli-'));
let natsServer: NatsServerHandle | undefined;

before(async () => {
  natsServer = await startNatsServer();
});

after(async () => {
  await natsServer?.dispose();
  rmSync(directory, { recursive: true, force: true });
  // This file's Redis keys, whichever test wrote them (they would expire within minutes anyway).
  if (await redisReachable(REDIS_URL)) {
    const cleaner = new Redis(REDIS_URL);
    const keys = await cleaner.keys(`${PREFIX}*`);
    if (keys.length > 0) await cleaner.del(...keys);
    cleaner.disconnect();
  }
});

function configText(limits: string): string {
  return `providers: {}\nmodels: {}\nlimits:\n${limits}`;
}

function writeConfig(name: string, text: string): string {
  const path = join(directory, name);
  writeFileSync(path, text);
  return path;
}

function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', 'src/cli/main.ts', 'limits', ...args],
      { env: { ...process.env, LLM_PROXY_CONFIG: '', ...env }, timeout: 60_000 },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
    );
  });
}

function admission(overrides: Partial<AdmissionRequest> = {}): AdmissionRequest {
  return {
    requestId: randomUUID(),
    agentId: 'agent:sofia',
    microdaoId: 'microdao:7',
    model: 'gpt-4.1-mini',
    estimatedPromptTokens: 100,
    maxCompletionTokens: 100,
    estimatedMaxCostUsd: 0.25,
    ...overrides,
  };
}

test('nats backend: the standing summed over two workers, as a table and as JSON', async () => {
  const text = configText(
    `  backend: nats\n  nats_bucket: cli-test\n  default: {rpm: 10, daily_usd: 5}\n  microdaos: {"microdao:7": {concurrent: 4}}\n`,
  );
  const path = writeConfig('nats.yaml', text);
  const config = parseConfigText(text);
  const connections = await Promise.all([0, 1].map(() => connect({ servers: (natsServer as NatsServerHandle).url })));
  try {
    const workers = await Promise.all(connections.map((nats) => createLimiter(config.limits, { nats })));
    await workers[0]!.admit(admission());
    await workers[1]!.admit(admission());
    const third = await workers[1]!.admit(admission());
    await third.settle({ promptTokens: 100, completionTokens: 20, costUsd: 0.05 });
    // The microDAO is a shared scope, held in slices (issue 21): the settled request's slot stays in worker 1's
    // slice until its period ends or the worker stops; stopping gives it back, the two in flight stay counted.
    await Promise.all(workers.map((worker) => worker.close()));

    const json = await runCli(['--agent', 'agent:sofia', '--microdao', 'microdao:7', '--json', '--config', path], {
      NATS_URL: natsServer!.url,
    });
    assert.equal(json.code, 0, json.stderr);
    const body = JSON.parse(json.stdout);
    assert.equal(body.agent_id, 'agent:sofia');
    const [agent, microdao] = body.scopes;
    assert.deepEqual(
      agent.limits.map((row: { dimension: string; used: number; limit: number }) => [
        row.dimension,
        row.used,
        row.limit,
      ]),
      [
        ['rpm', 3, 10],
        ['daily_usd', 0.55, 5],
      ],
    );
    assert.deepEqual(
      [microdao.kind, microdao.id, microdao.limits[0].dimension, microdao.limits[0].used],
      ['microdao', 'microdao:7', 'concurrent', 2],
    );

    const table = await runCli(['--agent', 'agent:sofia', '--config', path], { NATS_URL: natsServer!.url });
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /Limits of agent:sofia \(nats, bucket cli-test/);
    assert.match(table.stdout, /agent agent:sofia\s+requests\/minute\s+minute\s+3\s+10\s+7/);
    assert.match(table.stdout, /USD\/day\s+\d{4}-\d{2}-\d{2}\s+\$0\.55\s+\$5\.00\s+\$4\.45\s/);
  } finally {
    await Promise.all(connections.map((connection) => connection.close()));
  }
});

test('redis backend: the standing, and a clear error when Redis cannot be reached', async (context) => {
  const probe = new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 1_000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  probe.on('error', () => undefined);
  try {
    await probe.connect();
  } catch {
    context.skip(`Redis is not reachable at ${REDIS_URL}`);
    return;
  }
  const text = configText(
    `  backend: redis\n  redis_url: "${REDIS_URL}"\n  redis_key_prefix: "${PREFIX}"\n  default: {rpm: 2, tpm: 100}\n`,
  );
  const path = writeConfig('redis.yaml', text);
  const worker = await createLimiter(parseConfigText(text).limits);
  try {
    // 100 tokens of 100/minute: the bucket refills while the CLI starts, hence a range.
    await worker.admit(admission({ agentId: 'agent:x', estimatedPromptTokens: 50, maxCompletionTokens: 50 }));
    const result = await runCli(['--agent', 'agent:x', '--json', '--config', path]);
    assert.equal(result.code, 0, result.stderr);
    const [rpm, tpm] = JSON.parse(result.stdout).scopes[0].limits;
    assert.deepEqual([rpm.dimension, rpm.used, rpm.limit, rpm.remaining], ['rpm', 1, 2, 1]);
    assert.ok(rpm.resets_in_ms > 0 && rpm.resets_in_ms <= 30_000);
    assert.equal(tpm.dimension, 'tpm');
    assert.ok(tpm.used > 50 && tpm.used <= 100, `tpm used ${tpm.used}`);

    const down = writeConfig(
      'down.yaml',
      configText(`  backend: redis\n  redis_url: "redis://127.0.0.1:1"\n  store_timeout_ms: 300\n`),
    );
    const failed = await runCli(['--agent', 'agent:x', '--config', down]);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /cannot read the limits store \(redis, redis:\/\/127\.0\.0\.1:1/);
  } finally {
    await worker.close();
    const keys = await probe.keys(`${PREFIX}*`);
    if (keys.length > 0) await probe.del(...keys);
    probe.disconnect();
  }
});

test('usage errors: --agent is required; a memory backend has no shared standing', async () => {
  const missing = await runCli(['--config', writeConfig('memory.yaml', configText('  backend: memory\n'))]);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /--agent is required/);
  const memory = await runCli(['--agent', 'agent:sofia', '--config', join(directory, 'memory.yaml')]);
  assert.equal(memory.code, 1);
  assert.match(memory.stderr, /"memory": each worker counts in its own process/);
});

const redisSkip = (await redisReachable(REDIS_URL)) ? undefined : `Redis is not reachable at ${REDIS_URL}: skipped`;

/**
 * The issue: "run without the workers' config it printed 'used 51 of 60' for an agent whose workers
 * allow 5 a minute". A real worker (in process) enforces rpm 5; the CLI runs with a config that
 * says 60, or that does not limit the agent at all.
 */
for (const backend of ['nats', 'redis'] as const) {
  test(`the issue's case, ${backend} backend: workers allow 5 a minute, the CLI's config says 60 (or nothing): "of 5"`, {
    skip: backend === 'redis' ? redisSkip : undefined,
  }, async () => {
    const scenario = randomUUID().slice(0, 8);
    const store =
      backend === 'nats'
        ? {
            lines: `  backend: nats\n  nats_bucket: cli-issue-${scenario}\n`,
            input: { nats_bucket: `cli-issue-${scenario}` },
          }
        : {
            lines: `  backend: redis\n  redis_url: "${REDIS_URL}"\n  redis_key_prefix: "${PREFIX}${scenario}:"\n`,
            input: { redis_url: REDIS_URL, redis_key_prefix: `${PREFIX}${scenario}:` },
          };
    const fake: FakeOpenAI = await startFakeOpenAI();
    const worker = await startInProcessWorker({
      natsUrl: natsServer!.url,
      config: testConfig(
        { openai: fake.baseUrl },
        { limits: { backend, ...store.input, default: { rpm: 5 } }, cache: { enabled: false } },
      ),
    });
    const connection: NatsConnection = await connect({ servers: natsServer!.url });
    const client = await createClient({ connection, timeoutMs: 20_000 });
    try {
      const agentId = `agent:issue-${backend}`;
      const outcomes = await Promise.allSettled(
        Array.from({ length: 7 }, () =>
          client.chat({
            model: 'gpt-test',
            messages: [{ role: 'user', content: 'hi' }],
            max_tokens: 5,
            metadata: { agent_id: agentId },
          }),
        ),
      );
      const refused = outcomes.flatMap((outcome) => (outcome.status === 'rejected' ? [outcome.reason] : []));
      assert.equal(refused.length, 2, JSON.stringify(refused.map((error) => String(error))));
      assert.ok(refused.every((error) => error instanceof LlmProxyError && error.code === 'rate_limited'));

      const sixty = writeConfig(`issue-${backend}-60.yaml`, configText(`${store.lines}  default: {rpm: 60}\n`));
      const none = writeConfig(`issue-${backend}-none.yaml`, configText(`${store.lines}  default: {rpm: null}\n`));
      const [table, json] = await Promise.all([
        runCli(['--agent', agentId, '--config', sixty], { NATS_URL: natsServer!.url }),
        runCli(['--agent', agentId, '--json', '--config', none], { NATS_URL: natsServer!.url }),
      ]);
      assert.equal(table.code, 0, table.stderr);
      // 5 used of the workers' 5 (4 if the CLI took over 12 s to start: one emission interval refilled),
      // then remaining, free again in, and the local config's 60 in its own column.
      const row = new RegExp(`agent ${agentId}\\s+requests/minute\\s+minute\\s+([45])\\s+5\\s+[01]\\s+\\S+\\s+60\\n`);
      assert.match(table.stdout, row);
      assert.match(table.stdout, /\blocal config\n/);
      assert.match(
        table.stdout,
        new RegExp(
          `agent ${agentId}: limits the workers enforce \\(workers' limits config [0-9a-f]{12}, stored by \\S+, in force since `,
        ),
      );
      assert.match(
        table.stdout,
        /differs from the local config \(.*issue-\w+-60\.yaml, limits [0-9a-f]{12}\), which says: requests\/minute 60 \(workers: 5\)/,
      );

      assert.equal(json.code, 0, json.stderr);
      const [scope] = JSON.parse(json.stdout).scopes;
      assert.equal(scope.limits_from, 'workers');
      assert.equal(scope.enforced_by.config, configFingerprint(worker.config.limits));
      assert.deepEqual(scope.local_config.limits, {});
      assert.equal(scope.local_config.differs, true);
      const [rpm] = scope.limits;
      assert.deepEqual([rpm.dimension, rpm.limit, rpm.local_limit], ['rpm', 5, null]);
      assert.ok(rpm.used === 5 || rpm.used === 4, `used ${rpm.used}`);
    } finally {
      await client.close();
      await connection.close();
      await worker.stop();
      await fake.close();
    }
  });
}

test('a record from a worker that did not store its limits: the local config, and the CLI says so', async () => {
  const bucket = `cli-old-${randomUUID().slice(0, 8)}`;
  const path = writeConfig('old.yaml', configText(`  backend: nats\n  nats_bucket: ${bucket}\n  default: {rpm: 10}\n`));
  const connection = await connect({ servers: natsServer!.url });
  try {
    // As the older version wrote it: counts only.
    const kv = await new Kvm(jetstream(connection)).create(bucket, { history: 1 });
    await kv.put('agent.agent=3Aold', JSON.stringify({ rpm_tat: Date.now() + 30_000 }));
    const result = await runCli(['--agent', 'agent:old', '--config', path], { NATS_URL: natsServer!.url });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /agent agent:old\s+requests\/minute\s+minute\s+[45]\s+10\s/);
    assert.doesNotMatch(result.stdout, /local config\n/);
    assert.match(
      result.stdout,
      /agent agent:old: limits of the local config \(.*old\.yaml, limits [0-9a-f]{12}\): its record was written by a worker that does not store its limits/,
    );
  } finally {
    await connection.close();
  }
});
