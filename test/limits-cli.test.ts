/**
 * `llm-proxy limits` as a user runs it (a child process), reading what
 * limiters standing for workers have stored in NATS KV / Redis.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { Redis } from 'ioredis';
import { parseConfigText } from '../src/config/index.js';
import { createLimiter, type AdmissionRequest } from '../src/limits/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';

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
    await Promise.all(workers.map((worker) => worker.close()));
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
