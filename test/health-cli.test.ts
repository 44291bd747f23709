/**
 * `llm-proxy health` against a real system: nats-server with JetStream, a worker with limits in a NATS
 * KV bucket, an aggregator; every check passes, then each is made to fail for real (a model whose only
 * deployment cools down, the usage stream deleted, the worker stopped). `--url` against a local server.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { connect } from '@nats-io/transport-node';
import { AGGREGATOR_SERVICE_NAME as AGGREGATOR_SERVICE, UsageAggregator } from '../src/aggregator/aggregator.js';
import { createClient, type LlmProxyClient } from '../src/client/index.js';
import { resolveConfig } from '../src/config/index.js';
import {
  AGGREGATOR_SERVICE_NAME,
  checkSystemHealth,
  type HealthCheck,
  type HealthReport,
  WORKER_SERVICE_NAME,
} from '../src/health/system-health.js';
import { SERVICE_NAME } from '../src/worker/worker.js';
import { startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { freePort } from './helpers/ports.js';
import { REDIS_URL, redisReachable } from './helpers/redis.js';
import { REPO_ROOT, startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';

const SECRET = 'health-test-secret-0123456789';

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'health', ...args],
      {
        cwd: REPO_ROOT,
        env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', LLM_PROXY_CONFIG: '', ...env },
        timeout: 30_000,
      },
      (error, stdout, stderr) =>
        resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr }),
    );
  });
}

const parseReport = (result: RunResult): HealthReport => {
  try {
    return JSON.parse(result.stdout) as HealthReport;
  } catch {
    throw new Error(`not JSON (exit ${result.code}): ${result.stdout}\n${result.stderr}`);
  }
};

const checkOf = (report: HealthReport, name: string): HealthCheck => {
  const check = report.checks.find((candidate) => candidate.name === name);
  assert.ok(check, `a check named ${name}`);
  return check;
};

test('the service names written in system-health.ts are those the worker and the aggregator register', () => {
  assert.equal(WORKER_SERVICE_NAME, SERVICE_NAME);
  assert.equal(AGGREGATOR_SERVICE_NAME, AGGREGATOR_SERVICE);
});

describe('llm-proxy health against a running system', () => {
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let worker: InProcessWorker | undefined;
  let aggregator: UsageAggregator | undefined;
  let ops: NatsConnection;
  let aggregatorConnection: NatsConnection;
  let client: LlmProxyClient;
  let dir: string;
  let configPath: string;
  let env: Record<string, string>;

  before(async () => {
    nats = await startNatsServer({ jetstream: true });
    openai = await startFakeOpenAI();
    // Nothing listens here: every call to the `dead` provider is refused.
    const deadPort = await freePort();
    const config = testConfig(
      { openai: openai.baseUrl },
      {
        providers: {
          dead: { type: 'openai', base_url: `http://127.0.0.1:${deadPort}/v1`, api_key_env: 'FAKE_OPENAI_KEY' },
        },
        models: { 'broken-test': { provider: 'dead', physical_name: 'nothing' } },
        routing: { retry: { attempts: 1 }, cooldown: { failures: 2, window_ms: 60_000, duration_ms: 300_000 } },
        limits: { enabled: true, backend: 'nats', nats_bucket: 'LLM_LIMITS', default: { rpm: 1_000 } },
        logging: { level: 'warn' },
      },
    );
    dir = mkdtempSync(join(tmpdir(), 'llm-proxy-health-'));
    configPath = join(dir, 'config.yaml');
    writeFileSync(configPath, stringify(config));
    worker = await startInProcessWorker({ natsUrl: nats.url, config, env: { LLM_PROXY_SECRET: SECRET } });
    aggregatorConnection = await connect({ servers: nats.url, name: 'health-test-aggregator' });
    aggregator = await UsageAggregator.start({
      connection: aggregatorConnection,
      subjectPrefix: 'llm',
      usageStream: worker.config.nats.usage_stream,
      aggregator: worker.config.aggregator,
    });
    ops = await connect({ servers: nats.url, name: 'health-test-ops' });
    client = await createClient({ connection: ops, secret: SECRET, timeoutMs: 10_000 });
    env = { NATS_URL: nats.url, LLM_PROXY_SECRET: SECRET };
  });

  after(async () => {
    await client?.close();
    await aggregator?.stop();
    await worker?.stop({ drainTimeoutMs: 1_000 });
    await ops?.close();
    await aggregatorConnection?.close();
    await openai?.close();
    await nats?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  test('every check passes: exit 0, JSON and the human lines', async () => {
    // One answered request: an event in the stream, a key in the limits bucket.
    const reply = await client.chat({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'hi' }],
      metadata: { agent_id: 'agent:health' },
    });
    assert.ok(reply.content !== undefined);

    const json = await runCli(['--config', configPath, '--json'], env);
    const report = parseReport(json);
    assert.equal(json.code, 0, json.stdout);
    assert.equal(report.status, 'ok');
    assert.deepEqual(
      report.checks.map((check) => check.name),
      ['nats', 'workers', 'usage_stream', 'limits_store', 'deployments', 'aggregator', 'usage_sink'],
    );
    for (const check of report.checks) {
      assert.equal(check.ok, true, `${check.name}: ${check.detail}`);
      assert.equal(check.warning, undefined, `${check.name}: ${check.detail}`);
    }
    assert.match(checkOf(report, 'nats').detail, /nats-server 2\.\d+/);
    const workers = checkOf(report, 'workers');
    assert.deepEqual(
      workers.workers?.map((row) => [row.id, row.pending, row.dropped, row.dead_lettered]),
      [[worker!.worker.id, 0, 0, 0]],
    );
    assert.match(workers.detail, /^1 answering; usage events pending 0 \(limit 1000\)/);
    const stream = checkOf(report, 'usage_stream');
    assert.equal(stream.stream, 'LLM_USAGE');
    assert.ok((stream.messages ?? 0) >= 1, stream.detail);
    assert.match(checkOf(report, 'limits_store').detail, /^nats bucket LLM_LIMITS: \d+ keys$/);
    const deployments = checkOf(report, 'deployments');
    assert.deepEqual(deployments.cooling_down, []);
    assert.equal(deployments.worker_id, worker!.worker.id);
    assert.equal(checkOf(report, 'aggregator').aggregators, 1);
    assert.equal(checkOf(report, 'usage_sink').detail, 'no PostgreSQL usage log configured (usage_sink.postgres.url)');

    // Human output, without the secret the workers require: the deployments check fails by name.
    const human = await runCli(['--config', configPath, '--timeout', '1s'], { NATS_URL: nats.url });
    assert.equal(human.code, 1, human.stdout + human.stderr);
    const lines = human.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 8, human.stdout);
    assert.match(lines[0]!, /^ok {4}nats {10}connected to /);
    assert.match(lines[4]!, /^FAIL {2}deployments {3}llm\.proxy\.models: unauthorized \(401\)/);
    assert.match(lines[7]!, /^UNHEALTHY: 1 of 7 checks failed$/);
  });

  test('--url: exit 0 on 200 and 1 otherwise, printing the body; bad flags exit 2', async () => {
    const server: Server = createServer((request, response) => {
      if (request.url === '/readyz') response.writeHead(200).end('{"status":"ready"}');
      else response.writeHead(503).end('{"status":"not_ready","nats":"not connected"}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const [ready, notReady, refused, usage] = await Promise.all([
        runCli(['--url', `${origin}/readyz`]),
        runCli(['--url', `${origin}/not-ready`, '--timeout', '3s']),
        runCli(['--url', `http://127.0.0.1:${await freePort()}/readyz`, '--json']),
        runCli(['--url', 'ftp://example.com/readyz']),
      ]);
      assert.equal(ready.code, 0, ready.stderr);
      assert.equal(ready.stdout, '{"status":"ready"}\n');
      assert.equal(notReady.code, 1);
      assert.equal(
        notReady.stdout,
        `HTTP 503 from ${origin}/not-ready\n{"status":"not_ready","nats":"not connected"}\n`,
      );
      assert.equal(refused.code, 1);
      assert.equal(parseReport(refused).status, 'fail');
      assert.match(parseReport(refused).checks[0]!.detail, /ECONNREFUSED/);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--url must be http or https/);
    } finally {
      server.close();
    }
  });

  test('a model whose only deployment cools down fails the deployments check, by name', async () => {
    for (let attempt = 0; attempt < 10; attempt++) {
      await assert.rejects(
        client.chat({ model: 'broken-test', messages: [{ role: 'user', content: 'hi' }] }),
        /no_provider_available|upstream|refused|cooling/i,
      );
      if (worker!.worker.router.health().some((row) => row.model === 'broken-test' && row.state === 'cooling_down'))
        break;
    }
    const result = await runCli(['--config', configPath, '--json'], env);
    assert.equal(result.code, 1, result.stdout);
    const report = parseReport(result);
    assert.equal(report.status, 'fail');
    const deployments = checkOf(report, 'deployments');
    assert.equal(deployments.ok, false);
    assert.deepEqual(deployments.cooling_down, ['broken-test']);
    assert.match(deployments.detail, /^every deployment cooling down: broken-test \(until \d{4}-/);
    for (const name of ['nats', 'workers', 'usage_stream', 'limits_store', 'aggregator'])
      assert.equal(checkOf(report, name).ok, true, name);
  });

  test('the usage stream deleted fails its check; no aggregator is a warning only', async () => {
    await aggregator!.stop();
    aggregator = undefined;
    await (await jetstreamManager(ops)).streams.delete('LLM_USAGE');
    const report = parseReport(await runCli(['--config', configPath, '--json'], env));
    const stream = checkOf(report, 'usage_stream');
    assert.equal(stream.ok, false);
    assert.match(stream.detail, /^LLM_USAGE: stream not found/);
    const aggregatorCheck = checkOf(report, 'aggregator');
    assert.equal(aggregatorCheck.ok, true);
    assert.equal(aggregatorCheck.warning, true);
    assert.match(aggregatorCheck.detail, /no aggregator answered \$SRV\.PING\.llm-usage/);
  });

  test('the worker stopped: the workers check fails', async () => {
    await worker!.stop({ drainTimeoutMs: 1_000 });
    worker = undefined;
    const result = await runCli(['--config', configPath, '--json', '--timeout', '500ms'], env);
    assert.equal(result.code, 1);
    const report = parseReport(result);
    const workers = checkOf(report, 'workers');
    assert.equal(workers.ok, false);
    assert.match(workers.detail, /^no worker answered \$SRV\.PING\.llm-proxy within 500 ms$/);
    assert.equal(checkOf(report, 'deployments').ok, false);
    assert.equal(checkOf(report, 'nats').ok, true);
  });
});

describe('the limits store check per backend (in process)', () => {
  const configWith = (limits: Record<string, unknown>) =>
    resolveConfig({ providers: {}, models: {}, limits }, 'test config', {});
  const limitsCheck = async (limits: Record<string, unknown>) =>
    checkOf(
      await checkSystemHealth({ connection: undefined, config: configWith(limits), timeoutMs: 1_000, env: {} }),
      'limits_store',
    );

  test('off and memory: nothing to reach', async () => {
    assert.deepEqual(
      [await limitsCheck({ enabled: false }), await limitsCheck({ backend: 'memory' })].map((check) => [
        check.ok,
        check.detail,
      ]),
      [
        [true, 'limits are off (limits.enabled: false)'],
        [true, 'memory: per worker, nothing to reach'],
      ],
    );
  });

  test('redis: a refused connection fails; a Redis that answers passes', async () => {
    const port = await freePort();
    const refused = await limitsCheck({ backend: 'redis', redis_url: `redis://127.0.0.1:${port}` });
    assert.equal(refused.ok, false);
    assert.match(refused.detail, new RegExp(`^redis redis://127\\.0\\.0\\.1:${port}: `));
    if (!(await redisReachable())) return; // no local Redis: the passing half is skipped
    const reached = await limitsCheck({ backend: 'redis', redis_url: REDIS_URL });
    assert.equal(reached.ok, true, reached.detail);
    assert.match(reached.detail, /: PONG in \d+ ms$/);
  });
});
