import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { connect } from '@nats-io/transport-node';
import { headers as natsHeaders, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { createTestDatabase } from './helpers/pg-database.js';
import { freePort } from './helpers/ports.js';
import { startFakeOllama, startFakeOpenAI, type FakeOllama, type FakeOpenAI } from './fakes/index.js';
import {
  REPO_ROOT,
  startInProcessWorker,
  testConfig,
  TEST_API_KEY,
  usageEventFor,
  type InProcessWorker,
} from './helpers/worker.js';
import { isNatsReachable } from '../src/bus/dev-server.js';
import { KeyStore } from '../src/auth/index.js';
import { shortWorkerId, type GatheredNodes } from '../src/cli/commands/models.js';
import { defaultNodeName, resolveConfig } from '../src/config/index.js';
import { VERSION } from '../src/worker/index.js';

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function startCli(
  args: string[],
  env: Record<string, string> = {},
): { child: ChildProcess; output: () => RunResult; done: Promise<RunResult> } {
  const child = spawn(process.execPath, ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), ...args], {
    cwd: REPO_ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const done = new Promise<RunResult>((resolve) => child.once('exit', (code) => resolve({ code, stdout, stderr })));
  return { child, output: () => ({ code: child.exitCode, stdout, stderr }), done };
}

const runCli = (args: string[], env: Record<string, string> = {}) => startCli(args, env).done;

async function waitForOutput(read: () => RunResult, text: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(read().stdout + read().stderr).includes(text)) {
    if (Date.now() > deadline)
      throw new Error(`no "${text}" in time; got: ${read().stdout.slice(-1500)} ${read().stderr.slice(-1500)}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

describe('CLI: worker, dev, models, tail, check-config', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'llm-proxy-cli-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('--help on each command prints usage and a working example', async () => {
    const names = ['worker', 'dev', 'models', 'tail', 'check-config'];
    const results = await Promise.all(names.map((name) => runCli([name, '--help'])));
    for (const [index, name] of names.entries()) {
      const result = results[index]!;
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`Usage: llm-proxy ${name}`));
      assert.match(result.stdout, /Example:\n {2}\S/);
    }
  });

  test('check-config: a good file prints a summary; a bad one lists every problem by path and exits 1', async () => {
    const badPath = join(dir, 'bad.yaml');
    writeFileSync(
      badPath,
      stringify({
        providers: { openai: { base_url: 'not a url' } },
        models: { a: { provider: 'opnai' }, b: { provider: 'openai', cost_per_1k_prompt: -1 } },
        worker: { max_in_flite: 3 },
      }),
    );
    const [good, bad, worker] = await Promise.all([
      runCli(['check-config', join(REPO_ROOT, 'config.yaml')], { OPENAI_API_KEY: 'x' }),
      runCli(['check-config', badPath]),
      runCli(['worker', '--config', badPath], { NATS_URL: 'nats://127.0.0.1:1' }),
    ]);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /config\.yaml: OK/);
    assert.match(good.stdout, /gpt-4\.1-mini → openai\/gpt-4\.1-mini/);
    assert.match(good.stderr, /DEEPSEEK_API_KEY, which is not set/);

    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /providers\.openai\.base_url: /);
    assert.match(bad.stderr, /models\.a\.provider: unknown provider "opnai"/);
    assert.match(bad.stderr, /models\.b\.cost_per_1k_prompt: /);
    assert.match(bad.stderr, /worker: unknown key "max_in_flite"/);
    assert.equal(worker.code, 1, 'a bad config stops the worker before it starts');
    assert.match(worker.stderr, /models\.a\.provider: unknown provider "opnai"/);
  });

  test('check-config and worker refuse a provider type nobody registered, naming the ones there are', async () => {
    const path = join(dir, 'unknown-type.yaml');
    writeFileSync(
      path,
      stringify({
        providers: { claude: { type: 'antropic', base_url: 'https://api.anthropic.com/v1' } },
        models: { m: { provider: 'claude', physical_name: 'claude-sonnet-4-5' } },
      }),
    );
    const [checked, worker] = await Promise.all([
      runCli(['check-config', path]),
      runCli(['worker', '--config', path], { NATS_URL: 'nats://127.0.0.1:1' }),
    ]);
    for (const result of [checked, worker]) {
      assert.equal(result.code, 1, result.stdout);
      assert.match(
        result.stderr,
        /providers\.claude\.type: unknown provider type "antropic" \(one of openai, azure, .*ollama.*\)/,
      );
    }
  });

  test('check-config masks a password or token in a base URL; an empty LLM_PROXY_SECRET stops worker, aggregator and dev', async () => {
    const path = join(dir, 'secret-url.yaml');
    writeFileSync(
      path,
      stringify({
        providers: { vllm: { type: 'openai', base_url: 'https://bob:pa55w0rd-xyz@vllm.internal/v1?api_key=k3y-abc' } },
        models: { m: { provider: 'vllm', physical_name: 'm' } },
      }),
    );
    const [checked, worker, aggregator, dev] = await Promise.all([
      runCli(['check-config', path]),
      runCli(['worker', '--config', path], { NATS_URL: 'nats://127.0.0.1:1', LLM_PROXY_SECRET: '' }),
      runCli(['aggregator', '--config', path], { NATS_URL: 'nats://127.0.0.1:1', LLM_PROXY_SECRET: ' ' }),
      runCli(['dev', '--config', path], { NATS_URL: 'nats://127.0.0.1:1', LLM_PROXY_SECRET: '' }),
    ]);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stdout, /vllm: openai at https:\/\/bob:\*\*\*@vllm\.internal\/v1\?api_key=\*\*\*/);
    assert.ok(!checked.stdout.includes('pa55w0rd') && !checked.stdout.includes('k3y-abc'));
    for (const result of [worker, aggregator, dev]) {
      assert.equal(result.code, 1, result.stdout + result.stderr);
      assert.match(result.stderr, /LLM_PROXY_SECRET is set but empty/);
    }
  });

  test('models sends LLM_PROXY_SECRET to a worker that requires it; without it the refusal is printed', async () => {
    const nats = await startNatsServer();
    const openai = await startFakeOpenAI();
    const secured = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl }),
      env: { LLM_PROXY_SECRET: 'cli-s3cret' },
    });
    try {
      const [withSecret, without] = await Promise.all([
        runCli(['models'], { NATS_URL: nats.url, LLM_PROXY_SECRET: 'cli-s3cret' }),
        runCli(['models'], { NATS_URL: nats.url }),
      ]);
      assert.equal(withSecret.code, 0, withSecret.stderr);
      assert.match(withSecret.stdout, /gpt-test/);
      assert.equal(without.code, 1);
      assert.match(without.stderr, /unauthorized \(401\): missing or wrong X-Internal-Secret header/);
    } finally {
      await secured.stop();
      await openai.close();
      await nats.dispose();
    }
  });

  describe('against a running worker', () => {
    let nats: NatsServerHandle;
    let openai: FakeOpenAI;
    let worker: InProcessWorker;
    before(async () => {
      nats = await startNatsServer();
      openai = await startFakeOpenAI();
      worker = await startInProcessWorker({ natsUrl: nats.url, config: testConfig({ openai: openai.baseUrl }) });
    });
    after(async () => {
      await worker?.stop();
      await openai?.close();
      await nats?.dispose();
    });

    test('models lists the models; --health adds deployment states; --json prints what was gathered', async () => {
      const [plain, health, json] = await Promise.all([
        runCli(['models'], { NATS_URL: nats.url }),
        runCli(['models', '--health'], { NATS_URL: nats.url }),
        runCli(['models', '--json', '--health'], { NATS_URL: nats.url }),
      ]);
      assert.equal(plain.code, 0, plain.stderr);
      assert.match(plain.stdout, /gpt-test {2}prompt \$0\.15\/1k, completion \$0\.6\/1k/);
      assert.match(plain.stdout, /- openai\/gpt-4o-mini/);
      assert.match(health.stdout, /healthy {2}in flight 0/);
      const reply = JSON.parse(json.stdout) as GatheredNodes;
      assert.deepEqual(
        reply.nodes.map((node) => node.worker_id),
        [worker.worker.id],
      );
      assert.ok(Array.isArray(reply.nodes[0]!.health));
      assert.deepEqual(
        reply.models.map((model) => model.name),
        ['gpt-test'],
      );
    });

    test('models with no worker says so and exits 1', async () => {
      const empty = await startNatsServer();
      try {
        const result = await runCli(['models'], { NATS_URL: empty.url });
        assert.equal(result.code, 1);
        assert.match(result.stderr, /no worker is listening on llm\.proxy\.nodes/);
      } finally {
        await empty.dispose();
      }
    });

    test('tail prints each usage event as it arrives (--agent filters, --json prints the event)', async () => {
      const plain = startCli(['tail', '--agent', 'agent:tail'], { NATS_URL: nats.url });
      const json = startCli(['tail', '--json'], { NATS_URL: nats.url });
      try {
        await waitForOutput(plain.output, 'listening on llm.usage.agent:tail');
        await waitForOutput(json.output, 'listening on llm.usage.>');
        const client = await connect({ servers: nats.url });
        const request = (id: string, agent: string) =>
          client.request(
            'llm.proxy.request',
            JSON.stringify({
              model: 'gpt-test',
              messages: [{ role: 'user', content: 'hi' }],
              request_id: id,
              metadata: { agent_id: agent },
            }),
            { timeout: 5_000 },
          );
        await request('tail-other', 'agent:other');
        await request('tail-1', 'agent:tail');
        await client.close();
        await waitForOutput(plain.output, 'tail-1');
        await waitForOutput(json.output, 'tail-1');
        assert.ok(!plain.output().stdout.includes('tail-other'), 'filtered by agent');
        assert.match(
          plain.output().stdout,
          /ok +gpt-test +openai\/gpt-4o-mini {2}agent:tail {2}\d+\+\d+ tok {2}\$0\.\d{6} {2}\d+ ms {2}tail-1/,
        );
        const events = json
          .output()
          .stdout.trim()
          .split('\n')
          .map((line) => JSON.parse(line));
        assert.deepEqual(
          events.map((event) => event.request_id),
          ['tail-other', 'tail-1'],
        );
      } finally {
        plain.child.kill('SIGINT');
        json.child.kill('SIGINT');
        assert.equal((await plain.done).code, 0);
        await json.done;
      }
    });
  });

  test('dev: without NATS and without nats-server on PATH, it says how to install it and exits 1', async () => {
    const port = await freePort();
    const result = await runCli(['dev', '--config', join(REPO_ROOT, 'config.yaml')], {
      NATS_URL: `nats://127.0.0.1:${port}`,
      PATH: dir,
    });
    assert.equal(result.code, 1);
    assert.match(result.stderr, /apt-get install -y nats-server/);
    assert.match(result.stderr, /go install github\.com\/nats-io\/nats-server/);
  });

  test('dev: without NATS it starts nats-server, an aggregator, a usage sink and a worker that answer; Ctrl-C stops them and exits 0', async () => {
    const openai = await startFakeOpenAI();
    const database = await createTestDatabase('llmp_dev');
    const port = await freePort();
    const url = `nats://127.0.0.1:${port}`;
    const configPath = join(dir, 'dev.yaml');
    writeFileSync(
      configPath,
      stringify({ ...testConfig({ openai: openai.baseUrl }), usage_sink: { postgres: { url: database.url } } }),
    );
    const dev = startCli(['dev', '--config', configPath, '--store', join(dir, 'store')], {
      NATS_URL: url,
      FAKE_OPENAI_KEY: TEST_API_KEY,
    });
    try {
      await waitForOutput(dev.output, 'started nats-server');
      await waitForOutput(dev.output, '"worker started"');
      const client = await connect({ servers: url });
      const reply = (
        await client.request(
          'llm.proxy.request',
          JSON.stringify({ model: 'gpt-test', messages: [{ role: 'user', content: 'dev!' }] }),
          { timeout: 5_000 },
        )
      ).json() as { content: string };
      assert.equal(reply.content, 'echo: dev!');
      // The aggregator started beside the worker counts that request.
      let totals = { total_requests: 0 };
      for (let tries = 0; tries < 100 && totals.total_requests < 1; tries++) {
        totals = (await client.request('llm.proxy.usage', '{}', { timeout: 5_000 })).json() as {
          total_requests: number;
        };
        if (totals.total_requests < 1) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(totals.total_requests, 1);
      // The sink started beside them writes its event into PostgreSQL.
      await waitForOutput(dev.output, 'usage sink writing every usage event to PostgreSQL');
      let rows: Array<{ model: string; status: string; node: string }> = [];
      for (let tries = 0; tries < 200 && rows.length === 0; tries++) {
        rows = (await database.pool.query('SELECT model, status, node FROM usage_events')).rows;
        if (rows.length === 0) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // The node column (migration 5): the worker's node, by default the host name.
      assert.deepEqual(rows, [{ model: 'gpt-test', status: 'ok', node: defaultNodeName() }]);
      await client.close();
    } finally {
      dev.child.kill('SIGINT');
      const result = await dev.done;
      await openai.close();
      await database.drop();
      assert.equal(result.code, 0, result.stderr);
    }
    assert.equal(await isNatsReachable(url, 500), false, 'the nats-server it started is gone');
  });
});

/**
 * Workers with different model sets on one bus (issue 19): `llm-proxy models` gathers every worker's
 * answer on `llm.proxy.nodes` and shows which node serves which model; a node that stops leaves the list.
 */
describe('models across nodes (llm.proxy.nodes)', () => {
  const SECRET = 'nodes-s3cret';
  let nats: NatsServerHandle;
  let openai: FakeOpenAI;
  let ollama: FakeOllama;
  let admin: NatsConnection;
  let alpha: InProcessWorker;
  let beta: InProcessWorker;
  let betaStopped = false;
  const secretEnv = () => ({ NATS_URL: nats.url, LLM_PROXY_SECRET: SECRET });

  before(async () => {
    nats = await startNatsServer();
    openai = await startFakeOpenAI();
    ollama = await startFakeOllama();
    admin = await connect({ servers: nats.url, name: 'nodes-admin' });
    const auth = { mode: 'mixed' as const, key_store_wait_ms: 3_000 };
    const env = { FAKE_OPENAI_KEY: TEST_API_KEY, LLM_PROXY_SECRET: SECRET };
    // alpha has the hosted model only, beta the local one only: no model on both.
    alpha = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ openai: openai.baseUrl }, { worker: { node: 'node-alpha' }, auth }),
      env,
    });
    beta = await startInProcessWorker({
      natsUrl: nats.url,
      config: testConfig({ ollama: ollama.baseUrl }, { worker: { node: 'node-beta' }, auth }),
      env,
    });
  });
  after(async () => {
    await alpha?.stop();
    if (!betaStopped) await beta?.stop();
    await admin?.close();
    await openai?.close();
    await ollama?.close();
    await nats?.dispose();
  });

  /** The text output's block of one model: its line and the indented lines under it. */
  const block = (stdout: string, model: string): string => {
    const lines = stdout.split('\n');
    const start = lines.findIndex((line) => line.startsWith(`${model}  `));
    if (start === -1) return '';
    const end = lines.findIndex((line, index) => index > start && !line.startsWith(' '));
    return lines.slice(start, end === -1 ? undefined : end).join('\n');
  };
  const label = (worker: InProcessWorker, node: string) => `${node} (${shortWorkerId(worker.worker.id)})`;

  test('worker.node: default the host name; a name that is empty, blank, too long or not printable is refused', () => {
    const base = testConfig({ openai: 'http://127.0.0.1:1/v1' });
    assert.equal(resolveConfig(base, 'test', {}).worker.node, defaultNodeName());
    assert.equal(defaultNodeName(), hostname().slice(0, 128));
    assert.equal(resolveConfig({ ...base, worker: { node: 'gpu-box 1' } }, 'test', {}).worker.node, 'gpu-box 1');
    for (const bad of ['', '   ', 'a\nb', 'tab\there', 'x'.repeat(129)])
      assert.throws(() => resolveConfig({ ...base, worker: { node: bad } }, 'test', {}), /worker\.node/, bad);
  });

  test("models lists every model with the node that serves it; --health shows each node's deployment state", async () => {
    const [plain, health] = await Promise.all([
      runCli(['models'], secretEnv()),
      runCli(['models', '--health'], secretEnv()),
    ]);
    assert.equal(plain.code, 0, plain.stderr);
    const gpt = block(plain.stdout, 'gpt-test');
    const local = block(plain.stdout, 'local-test');
    assert.match(gpt, /^gpt-test {2}prompt \$0\.15\/1k, completion \$0\.6\/1k/);
    assert.match(gpt, new RegExp(`\\n {2}on ${escapeRegExp(label(alpha, 'node-alpha'))} healthy\\n`));
    assert.match(gpt, /- openai\/gpt-4o-mini {2}weight 1/);
    assert.ok(!gpt.includes('node-beta'), gpt);
    assert.match(local, /^local-test {2}prompt free, completion free/);
    assert.match(local, new RegExp(`\\n {2}on ${escapeRegExp(label(beta, 'node-beta'))} healthy\\n`));
    assert.match(local, /- local\/llama3\.2:3b {2}weight 1/);
    assert.ok(!local.includes('node-alpha'), local);
    assert.match(plain.stdout, /\n2 workers on 2 nodes:\n/);
    assert.match(
      plain.stdout,
      new RegExp(`node-alpha +${escapeRegExp(shortWorkerId(alpha.worker.id))} +${escapeRegExp(hostname())} `),
    );

    assert.equal(health.code, 0, health.stderr);
    assert.match(
      block(health.stdout, 'gpt-test'),
      new RegExp(
        `- openai/gpt-4o-mini {2}weight 1\\n {6}${escapeRegExp(label(alpha, 'node-alpha'))} {2}healthy {2}in flight 0`,
      ),
    );
    assert.match(
      block(health.stdout, 'local-test'),
      new RegExp(`\\n {6}${escapeRegExp(label(beta, 'node-beta'))} {2}healthy {2}in flight 0`),
    );
  });

  test('--json has both nodes, and each model with the node that serves it', async () => {
    const result = await runCli(['models', '--json'], secretEnv());
    assert.equal(result.code, 0, result.stderr);
    const gathered = JSON.parse(result.stdout) as GatheredNodes;
    assert.deepEqual(
      gathered.nodes.map((node) => [node.node, node.worker_id, node.host, node.models.map((model) => model.name)]),
      [
        ['node-alpha', alpha.worker.id, hostname(), ['gpt-test']],
        ['node-beta', beta.worker.id, hostname(), ['local-test']],
      ],
    );
    for (const node of gathered.nodes) {
      assert.equal(node.version, VERSION);
      assert.equal(node.max_in_flight, 256);
      assert.equal(node.in_flight, 0);
      assert.ok(!Number.isNaN(Date.parse(node.started_at)));
      assert.deepEqual(
        node.health.map((row) => [row.model, row.state]),
        node.models.map((model) => [model.name, 'healthy']),
      );
    }
    assert.deepEqual(
      gathered.models.map((model) => [model.name, model.nodes.map((ref) => [ref.node, ref.worker_id])]),
      [
        ['gpt-test', [['node-alpha', alpha.worker.id]]],
        ['local-test', [['node-beta', beta.worker.id]]],
      ],
    );
  });

  test('a wrong or missing secret is refused on llm.proxy.nodes, by every worker; a key limited to a model sees that one only', async () => {
    const wrong = natsHeaders();
    wrong.set('X-Internal-Secret', 'not-the-secret');
    const answers: Array<{ error?: { code: string; status: number } }> = [];
    for await (const message of await admin.requestMany('llm.proxy.nodes', '{}', {
      strategy: 'stall',
      maxWait: 2_000,
      headers: wrong,
    }))
      answers.push(message.json());
    assert.deepEqual(
      answers.map((answer) => [answer.error?.code, answer.error?.status]),
      [
        ['unauthorized', 401],
        ['unauthorized', 401],
      ],
    );
    const [refused, missing] = await Promise.all([
      runCli(['models'], { NATS_URL: nats.url, LLM_PROXY_SECRET: 'not-the-secret' }),
      runCli(['models', '--json'], { NATS_URL: nats.url }),
    ]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /unauthorized \(401\)/);
    assert.equal(refused.stdout, '');
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /unauthorized \(401\)/);

    const store = await KeyStore.open(admin, 'LLM_KEYS');
    const { key } = await store.create({ agentId: 'agent:local-only', models: ['local-test'] });
    const narrow = await runCli(['models', '--json'], { NATS_URL: nats.url, LLM_PROXY_KEY: key });
    assert.equal(narrow.code, 0, narrow.stderr);
    const seen = JSON.parse(narrow.stdout) as GatheredNodes;
    assert.deepEqual(
      seen.models.map((model) => model.name),
      ['local-test'],
    );
    assert.deepEqual(
      seen.nodes.map((node) => [node.node, node.models.length, node.health.length]),
      [
        ['node-alpha', 0, 0],
        ['node-beta', 1, 1],
      ],
    );
  });

  test('every usage event carries the node of the worker that handled the request', async () => {
    const ask = (model: string, requestId: string) =>
      admin
        .request(
          'llm.proxy.request',
          JSON.stringify({ model, messages: [{ role: 'user', content: 'which node?' }], request_id: requestId }),
          { timeout: 10_000, headers: secretHeader() },
        )
        .then((message) => message.json() as { content?: string; error?: unknown });
    const ids = ['node-event-1', 'node-event-2', 'node-event-3', 'node-event-4'];
    await Promise.all(ids.map((id, index) => ask(index % 2 === 0 ? 'gpt-test' : 'local-test', id)));
    const nodeOf = new Map([
      [alpha.worker.id, 'node-alpha'],
      [beta.worker.id, 'node-beta'],
    ]);
    for (const id of ids) {
      const event = await usageEventFor(admin, id);
      assert.ok(nodeOf.has(event.worker_id), `event ${id} from one of the two workers`);
      assert.equal(event.node, nodeOf.get(event.worker_id), id);
    }
  });

  test('after a worker stops, its models leave the list', async () => {
    await beta.stop();
    betaStopped = true;
    const [plain, json] = await Promise.all([
      runCli(['models'], secretEnv()),
      runCli(['models', '--json'], secretEnv()),
    ]);
    assert.equal(plain.code, 0, plain.stderr);
    assert.notEqual(block(plain.stdout, 'gpt-test'), '');
    assert.equal(block(plain.stdout, 'local-test'), '');
    assert.ok(!plain.stdout.includes('node-beta'), plain.stdout);
    assert.match(plain.stdout, /\n1 worker on 1 node:\n/);
    const gathered = JSON.parse(json.stdout) as GatheredNodes;
    assert.deepEqual(
      gathered.nodes.map((node) => node.node),
      ['node-alpha'],
    );
    assert.deepEqual(
      gathered.models.map((model) => model.name),
      ['gpt-test'],
    );
  });

  const secretHeader = () => {
    const headers = natsHeaders();
    headers.set('X-Internal-Secret', SECRET);
    return headers;
  };
});

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
