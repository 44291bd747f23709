import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { runCli as runCliProcess, type CliResult } from './helpers/cli-process.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { createTestDatabase, type TestDatabase } from './helpers/pg-database.js';
import { handCompute, HOUR, makeEvents, NOW, type HandQuery } from './helpers/usage-events.js';
import { FIXED_DATES } from './helpers/usage-events.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { parseUsageQuery, type AggregatedReply } from '../src/aggregator/query.js';
import { formatCsv, formatTable } from '../src/aggregator/usage-report.js';
import { NO_USAGE_LOG_MESSAGE } from '../src/cli/commands/usage.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { postgresSinkSchema } from '../src/config/usage-sink-schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { parseInvoiceArguments } from '../src/cli/commands/invoice.js';
import { checkInvoiceRequest, formatNanoUsd, invoiceFor } from '../src/sink/invoice.js';
import { redactUrl } from '../src/config/redact-url.js';
import { PostgresUsageSink } from '../src/sink/postgres-sink.js';
import { runUsageQueryPostgres } from '../src/sink/usage-query.js';
import type { UsageConsumerLogger } from '../src/usage/consumer.js';
import { ensureUsageStream } from '../src/usage/stream.js';

/**
 * The PostgreSQL usage log read back: `runUsageQueryPostgres` against the aggregator and a hand
 * computation over the same events, `llm-proxy usage --source postgres` and `llm-proxy invoice` as
 * child processes (numbers to the nano-dollar, month boundaries in UTC, errors that never leak a password).
 */

const subjects = subjectsFor('llm');
const usageStream = usageStreamSchema.parse({});
const PASSWORD = 's3cretPassw0rd';

const KEY = 'Kx7pQ2rS9tUv';
const OTHER_KEY = 'Zz9yX8wV7uT6';

/** Events at the edges of November 2026 (UTC) and in the months around it, with awkward costs. */
function edgeEvents(template: UsageEvent): UsageEvent[] {
  const make = (
    id: string,
    ts: string,
    microdao: string | null,
    model: string | null,
    provider: string | null,
    prompt: number,
    completion: number,
    cost: number,
  ): UsageEvent => ({
    ...template,
    request_id: `edge-${id}`,
    ts,
    agent_id: 'agent:edge',
    microdao_id: microdao,
    model,
    provider,
    model_resolved: model,
    status: 'ok',
    error_code: null,
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    tokens_estimated: false,
    cached_prompt_tokens: Math.floor(prompt / 4),
    cost_usd: cost,
    latency_ms: 123.456,
    cached: false,
  });
  return [
    make('oct-15', '2026-10-15T08:00:00.000Z', 'microdao:7', 'deepseek-chat', 'deepseek', 1000, 500, 0.000_825),
    make('oct-last-ms', '2026-10-31T23:59:59.999Z', 'microdao:7', 'gpt-4o-mini', 'openai', 700, 300, 1 / 3),
    make('nov-first', '2026-11-01T00:00:00.000Z', 'microdao:7', 'gpt-4.1-mini', 'openai', 1234, 567, 0.029_351_234_5),
    make('nov-null-model', '2026-11-02T10:00:00.000Z', 'microdao:7', null, null, 10, 0, 0.000_000_4),
    make(
      'nov-comma',
      '2026-11-15T12:34:56.000Z',
      'microdao:7',
      'mistral,large',
      'mistral',
      2000,
      1000,
      0.123_456_789_4,
    ),
    make(
      'nov-formula',
      '2026-11-20T01:00:00.000Z',
      'microdao:7',
      '=HYPERLINK("http://x","y")',
      'openai',
      5,
      5,
      0.000_001,
    ),
    make('nov-last-ms', '2026-11-30T23:59:59.999Z', 'microdao:7', 'gpt-4.1-mini', 'openai', 999, 1, 2 / 3),
    make('dec-first', '2026-12-01T00:00:00.000Z', 'microdao:7', 'gpt-4.1-mini', 'openai', 100, 100, 0.7),
    make('dec-noon', '2026-12-01T12:00:00.000Z', 'microdao:7', 'llama3', 'local', 50, 50, 0),
    make('oct-other', '2026-10-31T23:59:59.999Z', 'microdao:9', 'deepseek-chat', 'deepseek', 10, 10, 0.5),
  ];
}

interface QueryCase {
  body: Record<string, unknown>;
  hand: HandQuery;
  /** handCompute has no key filter: the events a key_id filter keeps. */
  only?: (event: UsageEvent) => boolean;
  /** Whether several groups are expected (a grouping that means something). */
  severalGroups?: boolean;
}

const SINCE = '2026-11-25T05:30:00Z';
const UNTIL = '2026-11-25T20:10:00.000Z';

const QUERIES: QueryCase[] = [
  { body: {}, hand: {} },
  { body: { agent_id: 'agent:sofia' }, hand: { agent_id: 'agent:sofia' } },
  {
    body: { microdao_id: 'microdao:7', since: '7d', group_by: 'model' },
    hand: { microdao_id: 'microdao:7', sinceMs: NOW - 7 * 24 * HOUR, group_by: ['model'] },
    severalGroups: true,
  },
  {
    body: { model: 'deepseek-chat', group_by: ['provider', 'day'] },
    hand: { model: 'deepseek-chat', group_by: ['provider', 'day'] },
    severalGroups: true,
  },
  {
    body: { provider: 'openai', group_by: 'agent' },
    hand: { provider: 'openai', group_by: ['agent'] },
    severalGroups: true,
  },
  {
    body: { since: '24h', group_by: ['microdao', 'agent'] },
    hand: { sinceMs: NOW - 24 * HOUR, group_by: ['microdao', 'agent'] },
    severalGroups: true,
  },
  {
    body: { since: SINCE, until: UNTIL, group_by: 'hour' },
    hand: { sinceMs: Date.parse(SINCE), untilMs: Date.parse(UNTIL), group_by: ['hour'] },
    severalGroups: true,
  },
  {
    body: { agent_id: 'agent:helion', microdao_id: 'microdao:9', until: '30m', group_by: ['day', 'model'] },
    hand: {
      agent_id: 'agent:helion',
      microdao_id: 'microdao:9',
      untilMs: NOW - 30 * 60_000,
      group_by: ['day', 'model'],
    },
    severalGroups: true,
  },
  // Every key alone (the edge events put hours and days in October and December).
  { body: { group_by: 'agent' }, hand: { group_by: ['agent'] }, severalGroups: true },
  { body: { group_by: 'microdao' }, hand: { group_by: ['microdao'] }, severalGroups: true },
  { body: { group_by: 'model' }, hand: { group_by: ['model'] }, severalGroups: true },
  { body: { group_by: 'provider' }, hand: { group_by: ['provider'] }, severalGroups: true },
  { body: { group_by: 'key' }, hand: { group_by: ['key'] }, severalGroups: true },
  { body: { group_by: 'day' }, hand: { group_by: ['day'] }, severalGroups: true },
  { body: { group_by: 'hour' }, hand: { group_by: ['hour'] }, severalGroups: true },
  // Two keys, time first and time second, and a key given twice.
  { body: { group_by: ['day', 'hour'] }, hand: { group_by: ['day', 'hour'] }, severalGroups: true },
  { body: { group_by: ['hour', 'provider'] }, hand: { group_by: ['hour', 'provider'] }, severalGroups: true },
  { body: { group_by: ['model', 'model'] }, hand: { group_by: ['model'] }, severalGroups: true },
  { body: { group_by: ['key', 'microdao'] }, hand: { group_by: ['key', 'microdao'] }, severalGroups: true },
  {
    body: { key_id: KEY, group_by: ['key', 'model'] },
    hand: { group_by: ['key', 'model'] },
    only: (event) => event.key_id === KEY,
    severalGroups: true,
  },
  // The month of November, UTC, for one microDAO (what an invoice covers).
  {
    body: {
      microdao_id: 'microdao:7',
      since: '2026-11-01T00:00:00Z',
      until: '2026-12-01T00:00:00Z',
      group_by: 'model',
    },
    hand: {
      microdao_id: 'microdao:7',
      sinceMs: Date.UTC(2026, 10, 1),
      untilMs: Date.UTC(2026, 11, 1),
      group_by: ['model'],
    },
    severalGroups: true,
  },
  {
    body: { until: '2026-11-01T00:00:00Z', group_by: 'day' },
    hand: { untilMs: Date.UTC(2026, 10, 1), group_by: ['day'] },
  },
  // Nothing matches: zero totals, no groups.
  { body: { microdao_id: 'microdao:nobody' }, hand: { microdao_id: 'microdao:nobody' } },
  { body: { model: 'no-such-model', group_by: 'model' }, hand: { model: 'no-such-model', group_by: ['model'] } },
];

function expectedReply(events: UsageEvent[], query: QueryCase) {
  return handCompute(query.only === undefined ? events : events.filter(query.only), query.hand);
}

function assertMatchesHand(reply: AggregatedReply, expected: ReturnType<typeof handCompute>, label: string): void {
  const { cents, ...exact } = expected;
  assert.deepEqual(reply, exact, label);
  assert.equal(Math.round(reply.cost_usd * 100), cents, `${label}: to the cent`);
}

/** The environment of the CLI: none of the test runner's usage-log or config variables. */
/** What the CLI must not inherit from this process: it finds its database and bus from its flags alone. */
const UNSET = ['LLM_PROXY_POSTGRES_URL', 'LLM_PROXY_CONFIG', 'NATS_URL', 'LLM_PROXY_SECRET'];

/** At most this many CLI processes at once (each compiles the CLI with tsx: CPU-bound). */
const CLI_CONCURRENCY = 4;
let cliRunning = 0;
const cliWaiting: Array<() => void> = [];

async function runCli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<CliResult> {
  if (cliRunning < CLI_CONCURRENCY) cliRunning += 1;
  // A finished run hands its slot over.
  else await new Promise<void>((resolve) => cliWaiting.push(resolve));
  try {
    return await runCliProcess(args, env, { cwd, unset: UNSET });
  } finally {
    const next = cliWaiting.shift();
    if (next === undefined) cliRunning -= 1;
    else next();
  }
}

/** RFC 4180 CSV (quoted cells with "" and commas) → rows of cells. */
function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let cell = '';
  let quoted = false;
  for (let index = 0; index < text.length; index += 1) {
    const char = text[index] as string;
    if (quoted) {
      if (char === '"' && text[index + 1] === '"') {
        cell += '"';
        index += 1;
      } else if (char === '"') quoted = false;
      else cell += char;
    } else if (char === '"') quoted = true;
    else if (char === ',') {
      row.push(cell);
      cell = '';
    } else if (char === '\n') {
      row.push(cell);
      rows.push(row);
      row = [];
      cell = '';
    } else cell += char;
  }
  if (cell !== '' || row.length > 0) {
    row.push(cell);
    rows.push(row);
  }
  return rows;
}

const nanoOf = (cost: number): bigint => BigInt(Math.round(cost * 1e9));
const usd9 = (nano: bigint): string =>
  `${nano / 1_000_000_000n}.${(nano % 1_000_000_000n).toString().padStart(9, '0')}`;
const usdCents = (nano: bigint): string => {
  const cents = (nano + 5_000_000n) / 10_000_000n;
  return `${cents / 100n}.${(cents % 100n).toString().padStart(2, '0')}`;
};
const integer = (value: number): string => value.toLocaleString('en-US');
const escapeRegExp = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

interface ExpectedLine {
  model: string;
  requests: number;
  prompt_tokens: number;
  cached_prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  nano: bigint;
}

/** A microDAO's bill computed from the events themselves: [first day, next month's first day), UTC. */
function expectedInvoice(events: UsageEvent[], microdao: string, month: string) {
  const [year, monthNumber] = month.split('-').map(Number) as [number, number];
  const start = Date.UTC(year, monthNumber - 1, 1);
  const end = Date.UTC(year, monthNumber, 1);
  const mine = events.filter((event) => {
    const at = Date.parse(event.ts);
    return event.microdao_id === microdao && at >= start && at < end;
  });
  const lines = new Map<string, ExpectedLine>();
  for (const event of mine) {
    const model = event.model ?? '(none)';
    const line = lines.get(model) ?? {
      model,
      requests: 0,
      prompt_tokens: 0,
      cached_prompt_tokens: 0,
      completion_tokens: 0,
      total_tokens: 0,
      nano: 0n,
    };
    line.requests += 1;
    line.prompt_tokens += event.prompt_tokens;
    line.cached_prompt_tokens += event.cached_prompt_tokens ?? 0;
    line.completion_tokens += event.completion_tokens;
    line.total_tokens += event.total_tokens;
    line.nano += nanoOf(event.cost_usd);
    lines.set(model, line);
  }
  const sorted = [...lines.values()].sort((left, right) =>
    left.model < right.model ? -1 : left.model > right.model ? 1 : 0,
  );
  return {
    events: mine,
    lines: sorted,
    requests: mine.length,
    prompt_tokens: mine.reduce((sum, event) => sum + event.prompt_tokens, 0),
    cached_prompt_tokens: mine.reduce((sum, event) => sum + (event.cached_prompt_tokens ?? 0), 0),
    completion_tokens: mine.reduce((sum, event) => sum + event.completion_tokens, 0),
    total_tokens: mine.reduce((sum, event) => sum + event.total_tokens, 0),
    nano: mine.reduce((sum, event) => sum + nanoOf(event.cost_usd), 0n),
    period_start: new Date(start).toISOString(),
    period_end: new Date(end).toISOString(),
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('usage from the PostgreSQL log: same replies as the aggregator, the CLI, invoices', () => {
  let server: NatsServerHandle | undefined;
  const connections: NatsConnection[] = [];
  let db: TestDatabase | undefined;
  let emptyDb: TestDatabase | undefined;
  let sink: PostgresUsageSink | undefined;
  let aggregator: UsageAggregator | undefined;
  let client: NatsConnection;
  let directory = '';
  let events: UsageEvent[] = [];
  const sinkProblems: unknown[] = [];

  const database = (): TestDatabase => {
    assert.ok(db !== undefined, 'the database was created');
    return db;
  };
  const theAggregator = (): UsageAggregator => {
    assert.ok(aggregator !== undefined, 'the aggregator was started');
    return aggregator;
  };

  before(
    async () => {
      directory = mkdtempSync(join(tmpdir(), 'llm-proxy-usage-postgres-'));
      // Each assigned as soon as it exists, so that after() cleans up whatever a failing before() made.
      await Promise.all([
        createTestDatabase('llmp_usage_pg').then((created) => {
          db = created;
        }),
        createTestDatabase('llmp_usage_pg_empty').then((created) => {
          emptyDb = created;
        }),
        startNatsServer().then((started) => {
          server = started;
        }),
      ]);
      const open = async (name: string) => {
        const connection = await connect({ servers: (server as NatsServerHandle).url, name });
        connections.push(connection);
        return connection;
      };
      client = await open('client');
      await ensureUsageStream(await jetstreamManager(client), usageStream, 'llm');

      const base = makeEvents(3000).map((event, index) =>
        index % 3 === 0 ? { ...event, key_id: KEY } : index % 7 === 0 ? { ...event, key_id: OTHER_KEY } : event,
      );
      events = [...base, ...edgeEvents(base[1] as UsageEvent)];
      const js = jetstream(client);
      for (let start = 0; start < events.length; start += 500) {
        await Promise.all(
          events.slice(start, start + 500).map((event) =>
            js.publish(subjects.usageFor(agentToken(event.agent_id)), JSON.stringify(event), {
              msgID: event.request_id,
              timeout: 30_000,
            }),
          ),
        );
      }
      const lastSeq = (await (await jetstreamManager(client)).streams.info(usageStream.name)).state.last_seq;
      assert.equal(lastSeq, events.length);

      const logger = {
        info: () => undefined,
        warn: (...args: unknown[]) => sinkProblems.push(args),
        error: (...args: unknown[]) => sinkProblems.push(args),
      } as unknown as UsageConsumerLogger;
      await Promise.all([
        open('sink')
          .then((connection) =>
            PostgresUsageSink.start({
              connection,
              subjectPrefix: 'llm',
              usageStream,
              sink: { ...postgresSinkSchema.parse({}), url: database().url },
              logger,
            }),
          )
          .then((started) => {
            sink = started;
          }),
        open('aggregator')
          .then((connection) =>
            UsageAggregator.start({
              connection,
              subjectPrefix: 'llm',
              usageStream,
              aggregator: aggregatorSchema.parse({
                instance_id: 'pg-compare',
                snapshot_interval_ms: '10m',
                ...FIXED_DATES,
              }),
              now: () => NOW,
            }),
          )
          .then((started) => {
            aggregator = started;
          }),
      ]);
      const running = sink as PostgresUsageSink | undefined;
      assert.ok(running !== undefined, 'the sink was started');
      await Promise.all([
        waitFor('the sink catches up', async () => (await running.lag()) === 0),
        theAggregator().waitForSeq(lastSeq),
      ]);
      const { rows } = await database().pool.query<{ requests: string; events: string }>(
        'SELECT (SELECT sum(requests) FROM usage_hourly)::text AS requests, (SELECT count(*) FROM usage_events)::text AS events',
      );
      assert.deepEqual(rows[0], { requests: String(events.length), events: String(events.length) });
      assert.equal(theAggregator().status().events, events.length);
    },
    { timeout: 40_000 },
  );

  after(async () => {
    await sink?.stop().catch(() => undefined);
    await aggregator?.stop().catch(() => undefined);
    for (const connection of connections) await connection.close().catch(() => undefined);
    await server?.dispose().catch(() => undefined);
    await db?.drop().catch(() => undefined);
    await emptyDb?.drop().catch(() => undefined);
    if (directory !== '') rmSync(directory, { recursive: true, force: true });
  });

  test('runUsageQueryPostgres gives the aggregator’s reply, and the hand computation’s, for every query', async () => {
    assert.deepEqual(sinkProblems, [], 'the sink logged no warning or error');
    for (const query of QUERIES) {
      const label = JSON.stringify(query.body);
      const fromPostgres = await runUsageQueryPostgres(database().pool, parseUsageQuery(query.body, NOW));
      const fromAggregator = theAggregator().query(query.body);
      assert.deepEqual(fromPostgres, fromAggregator, `postgres = aggregator: ${label}`);
      const wire = await client.request(subjects.usageQuery, JSON.stringify(query.body), { timeout: 10_000 });
      assert.deepEqual(fromPostgres, wire.json<AggregatedReply>(), `postgres = aggregator over NATS: ${label}`);
      const expected = expectedReply(events, query);
      assertMatchesHand(fromPostgres, expected, `postgres = hand: ${label}`);
      if (query.severalGroups === true) assert.ok(fromPostgres.groups.length > 1, `${label} has several groups`);
    }
  });

  test('llm-proxy usage --source postgres: JSON, CSV and table as the in-process reply; URL from the environment', async () => {
    const body = {
      microdao_id: 'microdao:7',
      since: '2026-11-01T00:00:00Z',
      until: '2026-12-01T00:00:00Z',
      group_by: ['model', 'day'],
    };
    const flags = ['--microdao', 'microdao:7', '--since', body.since, '--until', body.until, '--group-by', 'model,day'];
    const url = database().url;
    const [json, csv, table, fromEnv, keyed] = await Promise.all([
      runCli(['usage', '--source', 'postgres', '--url', url, ...flags, '--json'], directory),
      runCli(['usage', '--source', 'postgres', '--url', url, ...flags, '--csv'], directory),
      runCli(['usage', '--source', 'postgres', '--url', url, ...flags], directory),
      runCli(['usage', '--source', 'postgres', ...flags, '--json'], directory, { LLM_PROXY_POSTGRES_URL: url }),
      runCli(
        ['usage', '--source', 'postgres', '--schema', 'public', '--key', KEY, '--group-by', 'key,provider', '--json'],
        directory,
        { LLM_PROXY_POSTGRES_URL: url },
      ),
    ]);
    const reply = await runUsageQueryPostgres(database().pool, parseUsageQuery(body, NOW));
    assert.ok(reply.groups.length > 4, 'several models and days');

    assert.equal(json.code, 0, json.stderr);
    assert.equal(json.stderr, '');
    assert.deepEqual(JSON.parse(json.stdout), reply);
    assert.deepEqual(JSON.parse(json.stdout), theAggregator().query(body));

    assert.equal(csv.code, 0, csv.stderr);
    assert.equal(csv.stdout, formatCsv(reply));
    assert.match(csv.stdout, /^"mistral,large",2026-11-15,1,/m, 'a model with a comma is quoted');

    assert.equal(table.code, 0, table.stderr);
    assert.equal(table.stdout, formatTable(reply, { filters: 'microdao microdao:7' }));
    assert.match(table.stdout, /^Usage of microdao microdao:7, 2026-11-01T00:00:00\.000Z to 2026-12-01T00:00:00\.000Z/);

    assert.equal(fromEnv.code, 0, fromEnv.stderr);
    assert.deepEqual(JSON.parse(fromEnv.stdout), reply);

    assert.equal(keyed.code, 0, keyed.stderr);
    const keyBody = { key_id: KEY, group_by: ['key', 'provider'] };
    assert.deepEqual(JSON.parse(keyed.stdout), theAggregator().query(keyBody));
    assertMatchesHand(
      JSON.parse(keyed.stdout),
      handCompute(
        events.filter((event) => event.key_id === KEY),
        { group_by: ['key', 'provider'] },
      ),
      'usage --key',
    );
  });

  test('llm-proxy usage --source postgres: bad schema, unreachable or empty database, flags without the source', async () => {
    const url = database().url;
    const unreachable = `postgres://bob:${PASSWORD}@127.0.0.1:1/x`;
    const noRole = `postgres://nobody_${Date.now()}:${PASSWORD}@127.0.0.1:5432/postgres`;
    const [badSchema, down, badRole, empty, noSchema, urlOnly, noUrl] = await Promise.all([
      runCli(['usage', '--source', 'postgres', '--url', url, '--schema', 'Bad-Schema;drop'], directory),
      runCli(['usage', '--source', 'postgres', '--url', unreachable], directory),
      runCli(['usage', '--source', 'postgres', '--url', noRole], directory),
      runCli(['usage', '--source', 'postgres', '--url', (emptyDb as TestDatabase).url], directory),
      runCli(['usage', '--source', 'postgres', '--url', url, '--schema', 'no_such_schema'], directory),
      runCli(['usage', '--url', url, '--json'], directory),
      runCli(['usage', '--source', 'postgres'], directory),
    ]);

    assert.equal(badSchema.code, 2, badSchema.stderr);
    assert.match(badSchema.stderr, /--schema must be a lower-case PostgreSQL identifier/);
    assert.equal(badSchema.stdout, '');

    for (const [label, result] of [
      ['--url', down],
      ['unknown role', badRole],
    ] as const) {
      assert.equal(result.code, 1, `${label}: ${result.stderr}`);
      assert.match(
        result.stderr,
        /^error cannot connect to the usage log at postgres:\/\/[^ ]*\*\*\*@127\.0\.0\.1:/,
        label,
      );
      assert.ok(!result.stderr.includes(PASSWORD), `${label}: the password is not printed: ${result.stderr}`);
      assert.ok(!result.stdout.includes(PASSWORD), `${label}: nor on stdout`);
      assert.equal(result.stdout, '');
    }
    assert.match(down.stderr, /ECONNREFUSED/);

    for (const [label, result] of [
      ['a database without the tables', empty],
      ['a schema that does not exist', noSchema],
    ] as const) {
      assert.equal(result.code, 1, `${label}: ${result.stderr}`);
      assert.match(result.stderr, /^error the usage log at postgres:\/\/.* has no usage tables in schema /, label);
    }
    assert.match(noSchema.stderr, /in schema "no_such_schema"/);

    assert.equal(urlOnly.code, 2, urlOnly.stderr);
    assert.match(urlOnly.stderr, /--url and --schema are for --source postgres/);

    assert.equal(noUrl.code, 1, noUrl.stderr);
    assert.equal(noUrl.stderr.trim(), NO_USAGE_LOG_MESSAGE);
  });

  test('llm-proxy invoice: table, CSV and JSON to the nano-dollar, UTC month boundaries, list prices', async () => {
    const url = database().url;
    const configPath = join(directory, 'prices.yaml');
    writeFileSync(
      configPath,
      [
        'providers:',
        '  local: {base_url: "http://127.0.0.1:11434"}',
        'models:',
        '  gpt-4.1-mini: {provider: local, cost_per_1k_prompt: 0.0004, cost_per_1k_completion: 0.0016, cost_per_1k_cached_prompt: 0.0001}',
        '  deepseek-chat: {provider: local, cost_per_1k_prompt: 0.00027, cost_per_1k_completion: 0.0011}',
        'logging: {level: warn}',
        'usage_sink:',
        `  postgres: {url: "${url}"}`,
        '',
      ].join('\n'),
    );
    const invoice = (microdao: string, month: string, ...rest: string[]) =>
      runCli(['invoice', '--microdao', microdao, '--month', month, '--url', url, ...rest], directory);
    const [table, csv, json, october, december, nobody, priced, pricedCsv] = await Promise.all([
      invoice('microdao:7', '2026-11'),
      invoice('microdao:7', '2026-11', '--csv'),
      invoice('microdao:7', '2026-11', '--json'),
      invoice('microdao:7', '2026-10', '--json'),
      invoice('microdao:7', '2026-12', '--csv'),
      // The URL from the environment.
      runCli(['invoice', '--microdao', 'microdao:nobody', '--month', '2026-11'], directory, {
        LLM_PROXY_POSTGRES_URL: url,
      }),
      // The URL from the config.
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-11', '--config', configPath], directory),
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-11', '--config', configPath, '--csv'], directory),
    ]);
    const november = expectedInvoice(events, 'microdao:7', '2026-11');
    assert.ok(november.lines.length >= 6, 'several models, "(none)", a model with a comma, one like a formula');
    assert.ok(november.events.some((event) => event.request_id === 'edge-nov-first'));
    assert.ok(november.events.some((event) => event.request_id === 'edge-nov-last-ms'));

    // Table: a line per model with its numbers and cost, the total, the amount to pay.
    assert.equal(table.code, 0, table.stderr);
    assert.match(table.stdout, /^Invoice for microdao:7, 2026-11\n/);
    assert.match(table.stdout, /period\s+2026-11-01T00:00:00\.000Z to 2026-12-01T00:00:00\.000Z/);
    assert.doesNotMatch(table.stdout, /\$\/1K/, 'no list prices without a config');
    for (const line of [...november.lines, { ...november, model: 'total' }]) {
      assert.match(
        table.stdout,
        new RegExp(
          `^\\s+${escapeRegExp(line.model)}\\s+${[
            line.requests,
            line.prompt_tokens,
            line.cached_prompt_tokens,
            line.completion_tokens,
            line.total_tokens,
          ]
            .map((value) => escapeRegExp(integer(value)))
            .join('\\s+')}\\s+${escapeRegExp(usd9(line.nano))}$`,
          'm',
        ),
        `table line of ${line.model}`,
      );
    }
    assert.match(table.stdout, new RegExp(`total\\s+${escapeRegExp(usd9(november.nano))} USD`));
    assert.match(
      table.stdout,
      new RegExp(`to pay\\s+\\$${escapeRegExp(usdCents(november.nano))} \\(rounded to the cent\\)`),
    );

    // CSV: the model rows sum to the total row, which is the month's events to the nano-dollar.
    assert.equal(csv.code, 0, csv.stderr);
    const rows = parseCsv(csv.stdout);
    const header = rows[0] as string[];
    assert.deepEqual(header, [
      'line',
      'microdao',
      'month',
      'model',
      'requests',
      'prompt_tokens',
      'cached_prompt_tokens',
      'completion_tokens',
      'total_tokens',
      'list_usd_per_1k_prompt',
      'list_usd_per_1k_cached_prompt',
      'list_usd_per_1k_completion',
      'cost_usd',
    ]);
    const records = rows.slice(1).map((row) => {
      assert.equal(row.length, header.length, `a CSV row of ${header.length} cells: ${row.join('|')}`);
      return Object.fromEntries(header.map((name, index) => [name, row[index] as string]));
    });
    const modelRows = records.filter((record) => record.line === 'model');
    const totalRow = records.find((record) => record.line === 'total');
    const toPayRow = records.find((record) => record.line === 'to_pay');
    assert.ok(totalRow !== undefined && toPayRow !== undefined, 'a total row and a to_pay row');
    assert.equal(records.length, modelRows.length + 2);
    const nanoOfCell = (cell: string | undefined): bigint => {
      assert.match(cell ?? '', /^\d+\.\d{9}$/);
      return BigInt((cell as string).replace('.', ''));
    };
    // A model that reads as a formula is quoted for spreadsheets ('=…).
    assert.deepEqual(
      modelRows.map((record) => record.model),
      november.lines.map((line) => (/^[=+\-@]/.test(line.model) ? `'${line.model}` : line.model)),
    );
    assert.ok(modelRows.some((record) => record.model === `'=HYPERLINK("http://x","y")`));
    assert.ok(modelRows.some((record) => record.model === 'mistral,large'));
    modelRows.forEach((record, index) => {
      const line = november.lines[index] as ExpectedLine;
      assert.equal(record.microdao, 'microdao:7');
      assert.equal(record.month, '2026-11');
      assert.equal(Number(record.requests), line.requests, `${line.model} requests`);
      assert.equal(Number(record.prompt_tokens), line.prompt_tokens);
      assert.equal(Number(record.cached_prompt_tokens), line.cached_prompt_tokens);
      assert.equal(Number(record.completion_tokens), line.completion_tokens);
      assert.equal(Number(record.total_tokens), line.total_tokens);
      assert.equal(nanoOfCell(record.cost_usd), line.nano, `${line.model} cost to the nano-dollar`);
      assert.equal(record.list_usd_per_1k_prompt, '');
    });
    const sumOf = (field: string) => modelRows.reduce((sum, record) => sum + Number(record[field]), 0);
    for (const field of ['requests', 'prompt_tokens', 'cached_prompt_tokens', 'completion_tokens', 'total_tokens'])
      assert.equal(Number(totalRow[field]), sumOf(field), `total ${field} is the sum of the lines`);
    assert.equal(Number(totalRow.requests), november.requests);
    assert.equal(Number(totalRow.total_tokens), november.total_tokens);
    const linesNano = modelRows.reduce((sum, record) => sum + nanoOfCell(record.cost_usd), 0n);
    assert.equal(nanoOfCell(totalRow.cost_usd), linesNano, 'the total is the sum of the lines');
    assert.equal(
      nanoOfCell(totalRow.cost_usd),
      november.nano,
      'the total is the sum of the events, to the nano-dollar',
    );
    assert.equal(toPayRow.cost_usd, usdCents(november.nano), 'to_pay is the total rounded to the cent');
    assert.equal(
      Number(toPayRow.cost_usd),
      Math.round(Number(november.nano) / 1e7) / 100,
      'to_pay to the cent (as a number)',
    );

    // JSON: the same bill.
    assert.equal(json.code, 0, json.stderr);
    const bill = JSON.parse(json.stdout);
    assert.deepEqual(bill, {
      microdao: 'microdao:7',
      month: '2026-11',
      period_start: november.period_start,
      period_end: november.period_end,
      lines: november.lines.map((line) => ({
        model: line.model === '(none)' ? null : line.model,
        requests: line.requests,
        prompt_tokens: line.prompt_tokens,
        cached_prompt_tokens: line.cached_prompt_tokens,
        completion_tokens: line.completion_tokens,
        total_tokens: line.total_tokens,
        cost_usd: usd9(line.nano),
      })),
      requests: november.requests,
      prompt_tokens: november.prompt_tokens,
      cached_prompt_tokens: november.cached_prompt_tokens,
      completion_tokens: november.completion_tokens,
      total_tokens: november.total_tokens,
      total_usd: usd9(november.nano),
      to_pay_usd: usdCents(november.nano),
    });
    // The usage reply for the same month agrees with the bill.
    const monthReply = theAggregator().query({
      microdao_id: 'microdao:7',
      since: november.period_start,
      until: november.period_end,
    });
    assert.equal(monthReply.total_requests, november.requests);
    assert.equal(nanoOfCell(monthReply.cost_usd.toFixed(9)), november.nano);

    // The neighbouring months hold only their own events (the last millisecond of October, the first of December).
    assert.equal(october.code, 0, october.stderr);
    const octoberBill = JSON.parse(october.stdout);
    const expectedOctober = expectedInvoice(events, 'microdao:7', '2026-10');
    assert.deepEqual(expectedOctober.events.map((event) => event.request_id).sort(), [
      'edge-oct-15',
      'edge-oct-last-ms',
    ]);
    assert.equal(octoberBill.requests, 2);
    assert.deepEqual(
      octoberBill.lines.map((line: { model: string }) => line.model),
      ['deepseek-chat', 'gpt-4o-mini'],
    );
    assert.equal(octoberBill.total_usd, usd9(expectedOctober.nano));
    assert.equal(octoberBill.total_usd, '0.334158333');
    assert.equal(octoberBill.to_pay_usd, '0.33');

    assert.equal(december.code, 0, december.stderr);
    const decemberRows = parseCsv(december.stdout).slice(1);
    const expectedDecember = expectedInvoice(events, 'microdao:7', '2026-12');
    assert.equal(expectedDecember.requests, 2);
    assert.deepEqual(
      decemberRows.filter((row) => row[0] === 'model').map((row) => [row[3], row[4], row[12]]),
      [
        ['gpt-4.1-mini', '1', '0.700000000'],
        ['llama3', '1', '0.000000000'],
      ],
    );
    assert.deepEqual(decemberRows.find((row) => row[0] === 'to_pay')?.[12], '0.70');

    // In process: December's period ends in the next year; another microDAO is not mixed in.
    const decemberBill = await invoiceFor(database().pool, { microdao: 'microdao:7', month: '2026-12' });
    assert.equal(decemberBill.period_start, '2026-12-01T00:00:00.000Z');
    assert.equal(decemberBill.period_end, '2027-01-01T00:00:00.000Z');
    assert.equal(decemberBill.total_nanousd, expectedDecember.nano);
    const october9 = await invoiceFor(database().pool, { microdao: 'microdao:9', month: '2026-10' });
    assert.equal(october9.requests, 1);
    assert.equal(formatNanoUsd(october9.total_nanousd), '0.500000000');

    // A microDAO without events.
    assert.equal(nobody.code, 0, nobody.stderr);
    assert.match(nobody.stdout, /\(no requests in this month\)/);
    assert.match(nobody.stdout, /total\s+0\.000000000 USD/);
    assert.match(nobody.stdout, /to pay\s+\$0\.00/);

    // With a config: list prices beside the models it has ("—" / empty for the others), URL from the config.
    assert.equal(priced.code, 0, priced.stderr);
    assert.match(
      priced.stdout,
      /MODEL\s+REQUESTS\s+PROMPT\s+CACHED PROMPT\s+COMPLETION\s+TOTAL TOKENS\s+\$\/1K PROMPT/,
    );
    const gptLine = november.lines.find((line) => line.model === 'gpt-4.1-mini') as ExpectedLine;
    assert.match(
      priced.stdout,
      new RegExp(
        `^\\s+gpt-4\\.1-mini\\s+${escapeRegExp(integer(gptLine.requests))}\\s.*\\s0\\.0004\\s+0\\.0001\\s+0\\.0016\\s+${escapeRegExp(usd9(gptLine.nano))}$`,
        'm',
      ),
    );
    assert.match(priced.stdout, /^\s+deepseek-chat\s.*\s0\.00027\s+0\.00027\s+0\.0011\s+\d+\.\d{9}$/m);
    assert.match(priced.stdout, /^\s+llama3\s.*\s—\s+—\s+—\s+\d+\.\d{9}$/m);
    assert.match(priced.stdout, /List prices \(USD per 1k tokens\)/);
    assert.match(priced.stdout, new RegExp(`to pay\\s+\\$${escapeRegExp(usdCents(november.nano))}`));

    assert.equal(pricedCsv.code, 0, pricedCsv.stderr);
    const pricedRecords = parseCsv(pricedCsv.stdout).slice(1);
    const priceCells = (model: string) =>
      pricedRecords.find((row) => row[0] === 'model' && row[3] === model)?.slice(9, 12);
    assert.deepEqual(priceCells('gpt-4.1-mini'), ['0.0004', '0.0001', '0.0016']);
    assert.deepEqual(priceCells('deepseek-chat'), ['0.00027', '0.00027', '0.0011']);
    assert.deepEqual(priceCells('llama3'), ['', '', '']);
    assert.deepEqual(priceCells('(none)'), ['', '', '']);
    assert.equal(pricedRecords.find((row) => row[0] === 'total')?.[12], usd9(november.nano));
  });

  test('llm-proxy invoice: usage errors exit 2, a missing or unreachable database exits 1 without the password', async () => {
    const url = database().url;
    const unreachable = `postgres://bob:${PASSWORD}@127.0.0.1:1/x`;
    const [badMonth, noMicrodao, noMonth, badSchema, noUrl, downEnv] = await Promise.all([
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-13', '--url', url], directory),
      runCli(['invoice', '--month', '2026-11', '--url', url], directory),
      runCli(['invoice', '--microdao', 'microdao:7', '--url', url], directory),
      runCli(
        ['invoice', '--microdao', 'microdao:7', '--month', '2026-11', '--schema', 'Public', '--url', url],
        directory,
      ),
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-11'], directory),
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-11', '--csv'], directory, {
        LLM_PROXY_POSTGRES_URL: unreachable,
      }),
    ]);
    for (const [result, message] of [
      [badMonth, /--month must be a month as YYYY-MM \(e\.g\. 2026-11\), not "2026-13"/],
      [noMicrodao, /--microdao is required/],
      [noMonth, /--month is required/],
      [badSchema, /--schema must be a lower-case PostgreSQL identifier/],
    ] as const) {
      assert.equal(result.code, 2, `${String(message)}: ${result.stderr}`);
      assert.match(result.stderr, message);
      assert.equal(result.stdout, '');
    }

    assert.equal(noUrl.code, 1, noUrl.stderr);
    assert.equal(noUrl.stderr.trim(), NO_USAGE_LOG_MESSAGE);
    assert.equal(noUrl.stdout, '');

    assert.equal(downEnv.code, 1, downEnv.stderr);
    assert.match(
      downEnv.stderr,
      /^error cannot connect to the usage log at postgres:\/\/bob:\*\*\*@127\.0\.0\.1:1\/x: /,
    );
    assert.ok(!downEnv.stderr.includes(PASSWORD), `the password is not printed: ${downEnv.stderr}`);
    assert.equal(downEnv.stdout, '');

    // In process: the other checks of a request (no database needed).
    assert.throws(() => checkInvoiceRequest({ microdao: 'microdao:7', month: '2026-1' }), /--month must be a month/);
    assert.throws(() => checkInvoiceRequest({ microdao: 'microdao:7', month: '2026-00' }), /--month must be a month/);
    assert.throws(() => checkInvoiceRequest({ microdao: '  ', month: '2026-11' }), /--microdao must name a microDAO/);
    assert.throws(() => parseInvoiceArguments(['--microdao', 'm', '--month', '2026-11', '--csv', '--json'], {}), {
      name: 'UsageError',
      message: /choose one of --csv and --json/,
    });
  });

  test('a usage-log URL written without its scheme is refused without being printed', async () => {
    // `user:password@host/db` (postgres:// forgotten): the WHATWG parser reads "bob:" as a scheme, so no
    // redaction could find the password in it; the URL is refused before anything is printed.
    const schemeless = `bob:${PASSWORD}@127.0.0.1:1/x`;
    const [usage, invoice, fromEnv] = await Promise.all([
      runCli(['usage', '--source', 'postgres', '--url', schemeless], directory),
      runCli(['invoice', '--microdao', 'microdao:7', '--month', '2026-11', '--url', schemeless], directory),
      runCli(['usage', '--source', 'postgres'], directory, { LLM_PROXY_POSTGRES_URL: schemeless }),
    ]);
    for (const result of [usage, invoice, fromEnv]) {
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, /must be a postgres:\/\/ or postgresql:\/\/ URL/);
      assert.ok(!result.stderr.includes(PASSWORD), `the password is not printed: ${result.stderr}`);
    }
    assert.match(fromEnv.stderr, /LLM_PROXY_POSTGRES_URL must be/);
    assert.equal(redactUrl(schemeless), '***@127.0.0.1:1/x');
  });
});
