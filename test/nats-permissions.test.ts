/**
 * A bus with permissions (issue 15): nats-server runs the shipped deploy/nats/nats-server.conf
 * (included as is; the test only sets the port, the store directory and the passwords' variables)
 * and every role, connected the way a deployment connects it (NATS_USER/NATS_PASSWORD/
 * NATS_INBOX_PREFIX through src/bus/connect.ts), does its job (a real worker serves an agent's
 * requests, the event lands in LLM_USAGE, a real aggregator answers ops' usage query, a real sink
 * copies the events into PostgreSQL, an admin keeps the keys' bucket) and nothing more. Then TLS with
 * certificates made here (mutual; a client without the CA or without a certificate is refused) and an
 * nkey login.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Kvm } from '@nats-io/kv';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { Empty, PermissionViolationError, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { createTestDatabase } from './helpers/pg-database.js';
import { withTypo } from './helpers/typo.js';
import { startInProcessWorker, testConfig, type InProcessWorker } from './helpers/worker.js';
import {
  expectViolation,
  makeCertificates,
  mutualTlsConfig,
  roleEnv,
  rolePasswords,
  ROLES,
  shippedConfWithNkey,
  SHIPPED_NATS_CONF,
  userNkey,
  violationOn,
  type Role,
} from './helpers/nats-auth.js';
import { startFakeOpenAI, type FakeProvider } from './fakes/index.js';
import { connectionOptions, connectToNats } from '../src/bus/connect.js';
import { createClient, type ChatRequest, type LlmProxyClient } from '../src/client/index.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { KeyStore } from '../src/auth/key-store.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { limitsSchema } from '../src/config/limits-schema.js';
import { postgresSinkSchema } from '../src/config/usage-sink-schema.js';
import { PostgresUsageSink } from '../src/sink/postgres-sink.js';
import { createLimiter } from '../src/limits/limiter.js';
import { createLogger } from '../src/telemetry/logger.js';

const SECRET = 'permissions-test-secret';
const passwords = rolePasswords();

let nats: NatsServerHandle;
let openai: FakeProvider;
let worker: InProcessWorker;
const connections: NatsConnection[] = [];
/** The aggregator's log lines (the worker's are in `worker.logs`). */
const aggregatorLogs: string[] = [];
/** The PostgreSQL sink's log lines. */
const sinkLogs: string[] = [];
const clients: LlmProxyClient[] = [];

/** A role's connection, made as the processes make theirs: connectionOptions from the environment. */
async function connectAs(role: Role, extra: Record<string, string> = {}): Promise<NatsConnection> {
  const connection = await connect({
    ...connectionOptions({ servers: nats.url, env: roleEnv(role, passwords, extra), name: `test-${role}` }),
    waitOnFirstConnect: false,
    maxReconnectAttempts: 0,
    timeout: 3_000,
  });
  connections.push(connection);
  return connection;
}

/** An agent's typed client: its own user and inbox prefix, as README tells an agent to connect. */
async function agentClient(role: 'sofia' | 'helion', options: { apiKey?: string } = {}): Promise<LlmProxyClient> {
  const client = await createClient({
    servers: nats.url,
    connectOptions: { user: ROLES[role].user, pass: passwords[ROLES[role].passwordEnv]! },
    inboxPrefix: ROLES[role].inboxPrefix,
    ...(options.apiKey === undefined ? { secret: SECRET } : { apiKey: options.apiKey }),
    idleTimeoutMs: 3_000,
  });
  clients.push(client);
  return client;
}

const MAIN = fileURLToPath(new URL('../src/cli/main.ts', import.meta.url));

/** Runs the CLI (`llm-proxy …`) with only PATH, HOME and `env` in its environment. */
function runCli(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', MAIN, ...args], {
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function chatRequest(agent: string, content: string): ChatRequest {
  return { model: 'gpt-test', messages: [{ role: 'user', content }], metadata: { agent_id: agent } };
}

before(async () => {
  nats = await startNatsServer({ include: SHIPPED_NATS_CONF, env: passwords });
  openai = await startFakeOpenAI();
  // The admin makes the keys' bucket (`llm-proxy keys`); workers may read and watch it, not create it.
  await KeyStore.open(await connectAs('admin'), 'LLM_KEYS');
  worker = await startInProcessWorker({
    natsUrl: nats.url,
    // Shared limits in the LLM_LIMITS bucket (the worker user creates and uses it) and per-agent keys
    // watched in LLM_KEYS (mixed: a request with a key is known by it, one without needs the secret).
    config: testConfig(
      { openai: openai.baseUrl },
      { limits: { enabled: true, backend: 'nats', default: { rpm: 1_000 } }, auth: { mode: 'mixed' } },
    ),
    env: roleEnv('worker', passwords, { LLM_PROXY_SECRET: SECRET }),
  });
});

after(async () => {
  for (const client of clients) await client.close().catch(() => undefined);
  for (const connection of connections) await connection.close().catch(() => undefined);
  await worker?.stop();
  await openai?.close();
  await nats?.dispose();
});

test('the shipped file refuses a connection without credentials or with a wrong password', async () => {
  await assert.rejects(connect({ servers: nats.url, maxReconnectAttempts: 0, timeout: 3_000 }), /authorization/i);
  await assert.rejects(
    connect({ servers: nats.url, user: 'worker', pass: 'pwrong', maxReconnectAttempts: 0, timeout: 3_000 }),
    /authorization/i,
  );
});

test('an agent user with its own inbox prefix is served by the worker user; the event reaches LLM_USAGE', async () => {
  const ops = await connectAs('ops');
  const live = ops.subscribe('llm.usage.>', { max: 3 });
  await ops.flush();

  const sofia = await agentClient('sofia');
  const models = await sofia.models();
  assert.ok(models.models.some((model) => model.name === 'gpt-test'));
  const reply = await sofia.chat(chatRequest('agent:sofia', 'hello'));
  assert.equal(typeof reply.content, 'string');
  const stream = sofia.stream({ ...chatRequest('agent:sofia', 'stream please'), stream: true });
  let chunks = 0;
  for await (const _chunk of stream) chunks += 1;
  assert.ok(chunks > 0);
  assert.equal((await stream.final).done, true);

  // The front door's user, through a borrowed connection: its streams take the connection's inbox prefix.
  const gateway = await connectAs('gateway');
  const door = createClient({ connection: gateway, secret: SECRET, idleTimeoutMs: 3_000 });
  const doorStream = door.stream({ ...chatRequest('agent:sofia', 'via the front door'), stream: true });
  for await (const _chunk of doorStream) {
  }
  assert.equal((await doorStream.final).done, true);
  await gateway.request('$SRV.PING.llm-proxy', Empty, { timeout: 2_000 }); // its /readyz

  // Ops saw each event live; the worker's JetStream acks came back on its own inbox prefix.
  const seen: string[] = [];
  for await (const message of live) seen.push(message.subject);
  assert.deepEqual(seen, ['llm.usage.agent:sofia', 'llm.usage.agent:sofia', 'llm.usage.agent:sofia']);
  assert.equal(await worker.worker.publisher.flush(5_000), 0);
  assert.equal(worker.worker.publisher.counters.published, 3);
  assert.equal(worker.worker.publisher.counters.failedAttempts, 0);
  const usageStream = await (await jetstreamManager(ops)).streams.info('LLM_USAGE');
  assert.equal(usageStream.state.messages, 3);
});

test('the aggregator user consumes LLM_USAGE and answers the ops user; ops discovers the services', async () => {
  const connection = await connectToNats({
    servers: nats.url,
    env: roleEnv('aggregator', passwords),
    name: 'test-aggregator',
  });
  connections.push(connection);
  const aggregator = await UsageAggregator.start({
    connection,
    subjectPrefix: 'llm',
    usageStream: usageStreamSchema.parse({}),
    aggregator: aggregatorSchema.parse({ instance_id: 'perm-test', snapshot_interval_ms: '10m' }),
    secret: SECRET,
    logger: createLogger({ destination: { write: (line: string) => void aggregatorLogs.push(line) } }),
  });
  try {
    await aggregator.waitForSeq(3, 10_000);
    await aggregator.snapshot(); // the LLM_USAGE_SNAPSHOTS bucket, written as the aggregator user

    const ops = await connectAs('ops');
    // Every event acknowledged by the aggregator user (ops may read the consumer's state, nothing more).
    const manager = await jetstreamManager(ops);
    for (
      let tries = 0;
      (await manager.consumers.info('LLM_USAGE', aggregator.durableName)).num_ack_pending > 0;
      tries++
    ) {
      assert.ok(tries < 100, 'the aggregator acknowledged its events');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const client = createClient({ connection: ops, secret: SECRET });
    const usage = await client.usage({ agent_id: 'agent:sofia' });
    assert.equal(usage.total_requests, 3);
    const models = await client.models();
    assert.ok(models.models.length > 0);

    const services = new Set<string>();
    for await (const message of await ops.requestMany('$SRV.PING', Empty, { maxWait: 1_000 }))
      services.add(message.json<{ name: string }>().name);
    assert.deepEqual([...services].sort(), ['llm-proxy', 'llm-usage']);
  } finally {
    await aggregator.stop();
  }
});

test('the sink user copies LLM_USAGE into PostgreSQL', async () => {
  const connection = await connectToNats({ servers: nats.url, env: roleEnv('sink', passwords), name: 'test-sink' });
  connections.push(connection);
  const ops = await connectAs('ops');
  const manager = await jetstreamManager(ops);
  const database = await createTestDatabase('llmp_perm');
  let sink: PostgresUsageSink | undefined;
  /** Rows in usage_events once they reach `count` (bounded wait). */
  const rowsReach = async (count: number) => {
    let rows = 0;
    for (let tries = 0; ; tries++) {
      const result = await database.pool.query<{ n: string }>('SELECT count(*) AS n FROM usage_events');
      rows = Number(result.rows[0]?.n);
      if (rows >= count || tries >= 250) return rows;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  };
  try {
    const stored = (await manager.streams.info('LLM_USAGE')).state.messages;
    assert.ok(stored >= 3, 'the earlier tests published usage events');
    sink = await PostgresUsageSink.start({
      connection,
      subjectPrefix: 'llm',
      usageStream: usageStreamSchema.parse({}),
      sink: { ...postgresSinkSchema.parse({}), url: database.url },
      logger: createLogger({ destination: { write: (line: string) => void sinkLogs.push(line) } }),
      startWindowMs: 10_000,
    });
    // What was in the stream before it started (its durable was created, as the sink user, at the start)…
    assert.equal(await rowsReach(stored), stored);
    // …and what is published while it runs.
    const sofia = await agentClient('sofia');
    await sofia.chat(chatRequest('agent:sofia', 'while the sink runs'));
    assert.equal(await worker.worker.publisher.flush(5_000), 0);
    assert.equal(await rowsReach(stored + 1), stored + 1);
    const agents = await database.pool.query<{ agent_id: string }>('SELECT DISTINCT agent_id FROM usage_events');
    assert.deepEqual(
      agents.rows.map((row) => row.agent_id),
      ['agent:sofia'],
    );
    assert.equal(sink.stats.dead_letters, 0);
    // Every event acknowledged after its commit; the lag (its /readyz) read as the sink user.
    for (let tries = 0; (await sink.lag()) > 0; tries++) {
      assert.ok(tries < 100, 'the sink acknowledged its events');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const durable = await manager.consumers.info('LLM_USAGE', 'llm-usage-sink-postgres');
    assert.equal(durable.num_ack_pending, 0);
    assert.doesNotMatch(sinkLogs.join('\n'), /permission/i);
  } finally {
    await sink?.stop();
    await database.drop();
  }
});

test('`llm-proxy chat` connects as an agent user from NATS_USER, NATS_PASSWORD and NATS_INBOX_PREFIX', async () => {
  const { code, stdout, stderr } = await runCli(['chat', '--stream', '--agent', 'agent:sofia', 'hello from the CLI'], {
    NATS_URL: nats.url,
    LLM_PROXY_SECRET: SECRET,
    ...roleEnv('sofia', passwords),
  });
  assert.equal(code, 0, stderr);
  assert.ok(stdout.trim().length > 0);
  // Without the prefix its replies would come to _INBOX.…, which the agent user may not read.
  const refused = await runCli(['chat', '--model', 'gpt-test', 'hello'], {
    NATS_URL: nats.url,
    LLM_PROXY_SECRET: SECRET,
    ...roleEnv('sofia', passwords, { NATS_INBOX_PREFIX: '' }),
  });
  assert.equal(refused.code, 1);
  assert.match(refused.stderr, /Permissions Violation/i);
});

test('the admin user keeps the keys (LLM_KEYS) and reads LLM_LIMITS; the worker user reads keys but cannot write them', async () => {
  // `llm-proxy keys create` as the admin user; the worker (its KeyDirectory watching as the worker user) knows the key.
  const admin = await connectAs('admin');
  const store = await KeyStore.open(admin, 'LLM_KEYS');
  const { key, record } = await store.create({ agentId: 'agent:helion' });
  assert.deepEqual(
    (await store.list()).map((listed) => listed.id),
    [record.id],
  );
  const helion = await agentClient('helion', { apiKey: key });
  const reply = await helion.chat({ model: 'gpt-test', messages: [{ role: 'user', content: 'with a key' }] });
  assert.equal(typeof reply.content, 'string');
  await assert.rejects(
    (await agentClient('helion', { apiKey: withTypo(key) })).chat({
      model: 'gpt-test',
      messages: [{ role: 'user', content: 'a wrong key' }],
    }),
    /unauthorized|key/i,
  );

  const workerUser = await connectAs('worker');
  const keys = await new Kvm(workerUser).open('LLM_KEYS');
  assert.equal((await keys.get(record.id))?.json<{ agent_id: string }>().agent_id, 'agent:helion');
  await assert.rejects(keys.put(record.id, '{}'), violationOn(`$KV.LLM_KEYS.${record.id}`));
  await assert.rejects(
    workerUser.request('$JS.API.STREAM.DELETE.KV_LLM_KEYS', Empty, { timeout: 2_000 }),
    violationOn('$JS.API.STREAM.DELETE.KV_LLM_KEYS'),
  );

  // The limits the worker keeps in LLM_LIMITS (created by the worker user): `llm-proxy limits` reads them
  // as the admin user; nobody but the workers writes them.
  const limiter = await createLimiter(limitsSchema.parse({ backend: 'nats', default: { rpm: 1_000 } }), {
    nats: admin,
  });
  try {
    // (What is used decays within the minute: that it was read is the point.)
    const [agentScope] = await limiter.standing('agent:sofia');
    assert.equal(agentScope?.dimensions[0]?.limit, 1_000);
  } finally {
    await limiter.close();
  }
  const limits = await new Kvm(admin).open('LLM_LIMITS');
  let limitKeys = 0;
  for await (const _key of await limits.keys()) limitKeys += 1;
  assert.ok(limitKeys > 0, 'the worker counted the requests in LLM_LIMITS');
  await assert.rejects(limits.put('forged', '{}'), violationOn('$KV.LLM_LIMITS.forged'));
});

test("the admin user purges the response cache: the LLM_CACHE bucket and the workers' memory", async () => {
  const directory = mkdtempSync(join(tmpdir(), 'llm-proxy-perm-cache-'));
  try {
    const configPath = join(directory, 'config.yaml');
    writeFileSync(configPath, stringify(testConfig({ openai: openai.baseUrl })));
    const env = {
      NATS_URL: nats.url,
      LLM_PROXY_SECRET: SECRET,
      LLM_PROXY_CONFIG: configPath,
      ...roleEnv('admin', passwords),
    };
    const purged = await runCli(['cache', 'purge'], env);
    assert.equal(purged.code, 0, purged.stderr);
    assert.match(purged.stdout, /from bucket LLM_CACHE/);
    assert.match(purged.stdout, /from the memory of 1 worker/);
    const stats = await runCli(['cache', 'stats'], env);
    assert.equal(stats.code, 0, stats.stderr);
  } finally {
    rmSync(directory, { recursive: true, force: true });
  }
});

test('an agent cannot read usage, serve or read requests, read another inbox, publish usage or touch JetStream', async () => {
  const sofia = await connectAs('sofia');
  for (const subject of ['llm.usage.>', 'llm.proxy.request', '_INBOX.>', '_INBOX.agent-helion.>', '$JS.API.>']) {
    const subscription = sofia.subscribe(subject);
    await expectViolation(sofia, 'subscription', subject, () => undefined);
    assert.ok((await subscription.closed) instanceof PermissionViolationError, subject);
  }
  await expectViolation(sofia, 'subscription', 'llm.proxy.request', () =>
    sofia.subscribe('llm.proxy.request', { queue: 'llm-proxy' }),
  );
  for (const subject of [
    'llm.usage.agent:sofia',
    'llm.usage.x',
    '$KV.LLM_KEYS.k',
    '$KV.LLM_LIMITS.k',
    'llm.proxy.usage',
  ])
    await expectViolation(sofia, 'publish', subject, () => sofia.publish(subject, '{}'));
  await assert.rejects(sofia.request('$JS.API.INFO', Empty, { timeout: 2_000 }), violationOn('$JS.API.INFO'));
  await assert.rejects(
    sofia.request('$JS.API.STREAM.INFO.LLM_USAGE', Empty, { timeout: 2_000 }),
    violationOn('$JS.API.STREAM.INFO.LLM_USAGE'),
  );

  // Nor can the other agent read sofia's replies, whatever she sends.
  const helion = await connectAs('helion');
  await expectViolation(helion, 'subscription', '_INBOX.agent-sofia.>', () => helion.subscribe('_INBOX.agent-sofia.>'));
});

test('ops, admin, gateway, aggregator and sink stay within their roles', async () => {
  const ops = await connectAs('ops');
  await expectViolation(ops, 'publish', 'llm.usage.x', () => ops.publish('llm.usage.x', '{}'));
  await expectViolation(ops, 'publish', 'llm.proxy.request', () => ops.publish('llm.proxy.request', '{}'));
  await expectViolation(ops, 'subscription', 'llm.proxy.request', () =>
    ops.subscribe('llm.proxy.request', { queue: 'llm-proxy' }),
  );
  await expectViolation(ops, 'subscription', '_INBOX.>', () => ops.subscribe('_INBOX.>'));
  await assert.rejects(
    ops.request('$JS.API.STREAM.DELETE.LLM_USAGE', Empty, { timeout: 2_000 }),
    violationOn('$JS.API.STREAM.DELETE.LLM_USAGE'),
  );

  const admin = await connectAs('admin');
  await assert.rejects(admin.request('llm.proxy.request', '{}', { timeout: 2_000 }), violationOn('llm.proxy.request'));
  await expectViolation(admin, 'subscription', 'llm.usage.>', () => admin.subscribe('llm.usage.>'));

  const gateway = await connectAs('gateway');
  await expectViolation(gateway, 'subscription', 'llm.usage.>', () => gateway.subscribe('llm.usage.>'));
  await expectViolation(gateway, 'subscription', 'llm.proxy.request', () => gateway.subscribe('llm.proxy.request'));
  await assert.rejects(gateway.request('$JS.API.INFO', Empty, { timeout: 2_000 }), violationOn('$JS.API.INFO'));

  // The aggregator answers what it is asked (allow_responses), and publishes nowhere else.
  const aggregator = await connectAs('aggregator');
  await expectViolation(aggregator, 'publish', '_INBOX.agent-sofia.x', () =>
    aggregator.publish('_INBOX.agent-sofia.x', '{}'),
  );
  await expectViolation(aggregator, 'publish', 'llm.usage.x', () => aggregator.publish('llm.usage.x', '{}'));

  // The sink reads the usage stream through its durable only: it publishes no event, serves and reads no
  // request, subscribes to no event, and deletes neither the stream nor a consumer (not even the durable
  // the sinks share: deleting one on LLM_USAGE could as well remove the aggregator's).
  const sink = await connectAs('sink');
  await expectViolation(sink, 'publish', 'llm.usage.x', () => sink.publish('llm.usage.x', '{}'));
  await expectViolation(sink, 'subscription', 'llm.proxy.request', () => sink.subscribe('llm.proxy.request'));
  await expectViolation(sink, 'subscription', 'llm.usage.>', () => sink.subscribe('llm.usage.>'));
  await assert.rejects(sink.request('llm.proxy.usage', '{}', { timeout: 2_000 }), violationOn('llm.proxy.usage'));
  for (const subject of [
    '$JS.API.STREAM.DELETE.LLM_USAGE',
    '$JS.API.CONSUMER.DELETE.LLM_USAGE.llm-usage-sink-postgres',
    '$JS.API.STREAM.INFO.KV_LLM_USAGE_SNAPSHOTS',
  ])
    await assert.rejects(sink.request(subject, Empty, { timeout: 2_000 }), violationOn(subject));

  // No role reads every reply.
  for (const role of Object.keys(ROLES) as Role[]) {
    const connection = await connectAs(role);
    await expectViolation(connection, 'subscription', '_INBOX.>', () => connection.subscribe('_INBOX.>'));
  }

  // Workers keep the usage stream but cannot delete it, nor read the usage events as a subscriber.
  const workerUser = await connectAs('worker');
  await assert.rejects(
    workerUser.request('$JS.API.STREAM.DELETE.LLM_USAGE', Empty, { timeout: 2_000 }),
    violationOn('$JS.API.STREAM.DELETE.LLM_USAGE'),
  );
  await expectViolation(workerUser, 'subscription', 'llm.usage.>', () => workerUser.subscribe('llm.usage.>'));
});

test('mutual TLS with certificates made here, and ops logging in with an nkey', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'llm-proxy-tls-'));
  let server: NatsServerHandle | undefined;
  const opened: NatsConnection[] = [];
  try {
    const certificates = makeCertificates(dir);
    const nkey = userNkey();
    server = await startNatsServer({
      include: shippedConfWithNkey('ops', nkey.publicKey, dir),
      env: passwords,
      extraConfig: mutualTlsConfig(certificates),
    });
    const tlsEnv = { NATS_CA: certificates.ca, NATS_CERT: certificates.clientCert, NATS_KEY: certificates.clientKey };
    const once = { waitOnFirstConnect: false, maxReconnectAttempts: 0, timeout: 3_000 } as const;
    const open = async (env: Record<string, string>) => {
      const connection = await connect({ ...connectionOptions({ servers: server!.url, env }), ...once });
      opened.push(connection);
      return connection;
    };

    // Ops by nkey (NATS_NKEY_SEED), over mutual TLS: its permissions came along with the switch.
    const ops = await open({ NATS_NKEY_SEED: nkey.seed, NATS_INBOX_PREFIX: '_INBOX.ops', ...tlsEnv });
    assert.equal(ops.info?.tls_required, true);
    ops.subscribe('llm.usage.>');
    await ops.flush();
    await expectViolation(ops, 'publish', 'llm.usage.x', () => ops.publish('llm.usage.x', '{}'));
    // The password it had before no longer opens anything.
    await assert.rejects(open({ ...roleEnv('ops', passwords), ...tlsEnv }), /authorization/i);

    // The worker by password over the same TLS.
    const workerUser = await open(roleEnv('worker', passwords, tlsEnv));
    await (await jetstreamManager(workerUser)).getAccountInfo();

    // Refused: no CA (the server's certificate is not trusted)…
    await assert.rejects(open(roleEnv('worker', passwords)), /unable to verify|self.signed|certificate/i);
    // …and a CA but no client certificate. Under TLS 1.3 the server's refusal comes after the client's
    // handshake, and nats.js then waits for its connect timeout instead of reporting the alert; under
    // TLS 1.2 the refusal is the handshake's own alert.
    const noCertificate = roleEnv('worker', passwords, { NATS_CA: certificates.ca });
    await assert.rejects(
      connect({ ...connectionOptions({ servers: server.url, env: noCertificate }), ...once, timeout: 1_000 }),
    );
    const tls12 = connectionOptions({ servers: server.url, env: noCertificate });
    // nats.js hands its tls options on to Node's tls.connect, maxVersion included.
    const upToTls12 = { ...tls12.tls, maxVersion: 'TLSv1.2' as const };
    await assert.rejects(connect({ ...tls12, ...once, tls: upToTls12 }), /alert bad certificate/i);
  } finally {
    for (const connection of opened) await connection.close().catch(() => undefined);
    await server?.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the worker, the aggregator and the sink met no permissions violation along the way', () => {
  const logs = [...worker.logs.lines, ...aggregatorLogs, ...sinkLogs];
  const warnings = logs.filter((line) => !line.includes('"level":"info"'));
  // The one expected: the request with a wrong key, refused as unauthorized.
  assert.deepEqual(
    warnings.map((line) => JSON.parse(line).code ?? JSON.parse(line).msg),
    ['unauthorized'],
  );
  assert.doesNotMatch(logs.join('\n'), /permission/i);
});
