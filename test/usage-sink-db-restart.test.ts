import { test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { usageStreamSchema } from '../src/config/schema.js';
import { postgresSinkSchema } from '../src/config/usage-sink-schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import type { UsageEvent } from '../src/contract/usage-event.js';
import { PostgresUsageSink } from '../src/sink/postgres-sink.js';
import type { UsageConsumerLogger } from '../src/usage/consumer.js';
import { ensureUsageStream } from '../src/usage/stream.js';
import { withDatabase } from './helpers/pg-database.js';
import { startNatsServer, type NatsServerHandle } from './helpers/nats-server.js';
import { startPostgresServer, type PostgresServerHandle } from './helpers/postgres-server.js';
import { handCompute, makeEvents } from './helpers/usage-events.js';

/**
 * The PostgreSQL sink while its database goes away mid-stream (a fast shutdown, then a SIGKILL) and
 * comes back on the same port with the same data: nothing is lost, nothing is counted twice, and the
 * sink resumes on its own.
 */

const BEFORE = 4_000;
const DURING = 1_000;
/** Events of the first part published again (another message id) while the database is down: stored twice in the stream. */
const REPUBLISHED = 100;
const WAIT_MS = 60_000;
const DOWN_MS = 2_000;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Polls `probe` until `done` holds of its value; fails naming what it waited for and the last value seen. */
async function waitFor<T>(what: string, probe: () => Promise<T>, done: (value: T) => boolean, intervalMs = 50) {
  const deadline = Date.now() + WAIT_MS;
  let last: T | string = 'nothing yet';
  for (;;) {
    try {
      const value = await probe();
      last = value;
      if (done(value)) return value;
    } catch (error) {
      last = `error: ${error instanceof Error ? error.message : String(error)}`;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${WAIT_MS} ms waiting for ${what} (last: ${last})`);
    await sleep(intervalMs);
  }
}

interface LogEntry {
  level: 'info' | 'warn' | 'error';
  message: string;
  fields: unknown;
}

function recordingLogger(): { entries: LogEntry[]; logger: UsageConsumerLogger } {
  const entries: LogEntry[] = [];
  const at = (level: LogEntry['level']) => (fields: unknown, message?: string) => {
    entries.push({ level, fields, message: typeof fields === 'string' ? fields : (message ?? '') });
  };
  return {
    entries,
    logger: { info: at('info'), warn: at('warn'), error: at('error') } as unknown as UsageConsumerLogger,
  };
}

async function scenario(outage: 'stop' | 'kill'): Promise<void> {
  const events = makeEvents(BEFORE + DURING);
  const first = events.slice(0, BEFORE);
  const second = events.slice(BEFORE);
  const expected = handCompute(events, {});
  const expectedNano = events.reduce((total, event) => total + BigInt(Math.round(event.cost_usd * 1e9)), 0n);
  const { entries, logger } = recordingLogger();

  let nats: NatsServerHandle | undefined;
  let postgres: PostgresServerHandle | undefined;
  let nc: Awaited<ReturnType<typeof connect>> | undefined;
  let sink: PostgresUsageSink | undefined;
  let db: pg.Pool | undefined;
  try {
    [nats, postgres] = await Promise.all([startNatsServer(), startPostgresServer()]);
    const admin = new pg.Client({ connectionString: postgres.url });
    await admin.connect();
    await admin.query('CREATE DATABASE usage_log');
    await admin.end();
    const url = withDatabase(postgres.url, 'usage_log');
    db = new pg.Pool({ connectionString: url, max: 2, connectionTimeoutMillis: 2_000 });
    db.on('error', () => undefined);
    const count = async () => {
      const { rows } = await db!.query<{ n: number }>('SELECT count(*)::int AS n FROM usage_events');
      return rows[0]?.n ?? 0;
    };

    nc = await connect({ servers: nats.url });
    const usageStream = usageStreamSchema.parse({});
    await ensureUsageStream(await jetstreamManager(nc), usageStream, 'llm');
    const js = jetstream(nc);
    // 200 in flight at a time, each given 30 s: a loaded machine must not fail the publish, only slow it.
    const publish = async (list: UsageEvent[], suffix = '') => {
      for (let start = 0; start < list.length; start += 200)
        await Promise.all(
          list.slice(start, start + 200).map((event) =>
            js.publish(subjectsFor('llm').usageFor(agentToken(event.agent_id)), JSON.stringify(event), {
              msgID: `${event.request_id}${suffix}`,
              timeout: 30_000,
            }),
          ),
        );
    };
    await publish(first);

    sink = await PostgresUsageSink.start({
      connection: nc,
      subjectPrefix: 'llm',
      usageStream,
      sink: { ...postgresSinkSchema.parse({}), url, batch_size: 200 },
      logger,
    });

    // Some batches committed, not all: the database goes away in the middle of the stream.
    const partial = await waitFor('some of the events, not all, to be committed', count, (n) => n > 0 && n < BEFORE, 5);
    const downAt = Date.now();
    if (outage === 'stop') await postgres.stop();
    else await postgres.kill();

    // The workers keep publishing while the database is down (and some events arrive a second time).
    await publish(second);
    await publish(first.slice(0, REPUBLISHED), '#again');
    await sleep(Math.max(0, DOWN_MS - (Date.now() - downAt)));
    const restartAt = Date.now();
    await postgres.start();
    const restartMs = Date.now() - restartAt;

    const activeSink = sink;
    await waitFor(
      'the sink to catch up (lag 0)',
      () => activeSink.lag(),
      (lag) => lag === 0,
    );
    await waitFor('every event in usage_events', count, (n) => n >= events.length);
    const resumedMs = Date.now() - restartAt;

    const totals = await db.query<{ n: number; keys: number; nano: string }>(
      `SELECT count(*)::int AS n, count(DISTINCT event_key)::int AS keys, (sum(cost_usd) * 1e9)::int8::text AS nano
         FROM usage_events`,
    );
    const hourly = await db.query<Record<string, string>>(
      `SELECT sum(requests)::text AS requests, sum(total_tokens)::text AS total_tokens,
              sum(prompt_tokens)::text AS prompt_tokens, sum(completion_tokens)::text AS completion_tokens,
              (sum(cost_usd) * 1e9)::int8::text AS nano
         FROM usage_hourly`,
    );
    const dead = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM usage_dead_letters');
    const row = totals.rows[0]!;
    const cells = hourly.rows[0]!;
    console.log(
      `[${outage}] committed before the outage: ${partial}/${BEFORE}; restart ${restartMs} ms; caught up ${resumedMs} ms after it;`,
      JSON.stringify(sink.stats),
    );

    assert.equal(row.n, events.length, 'one row per distinct event');
    assert.equal(row.keys, events.length, 'distinct event keys');
    assert.equal(BigInt(row.nano), expectedNano, 'cost of usage_events, to the nano-dollar');
    assert.equal(Number(cells.requests), expected.total_requests, 'usage_hourly requests');
    assert.equal(Number(cells.total_tokens), expected.total_tokens, 'usage_hourly total_tokens');
    assert.equal(Number(cells.prompt_tokens), expected.prompt_tokens, 'usage_hourly prompt_tokens');
    assert.equal(Number(cells.completion_tokens), expected.completion_tokens, 'usage_hourly completion_tokens');
    assert.equal(BigInt(cells.nano!), expectedNano, 'cost of usage_hourly, to the nano-dollar');
    assert.equal(dead.rows[0]?.n, 0, 'no dead letters');
    assert.ok(sink.stats.retries > 0, 'the sink retried while the database was down');
    assert.ok(sink.stats.duplicates >= REPUBLISHED, `republished events skipped (${sink.stats.duplicates})`);
    assert.ok(
      entries.some(
        (entry) => entry.level === 'warn' && entry.message === 'the usage log does not answer; trying again',
      ),
      'the outage was logged',
    );
    const errors = entries.filter((entry) => entry.level === 'error');
    assert.deepEqual(errors, [], 'nothing logged as an error');
  } finally {
    const steps: Array<() => Promise<unknown> | undefined> = [
      () => sink?.stop(),
      () => db?.end(),
      () => nc?.close(),
      () => nats?.dispose(),
      () => postgres?.cleanup(),
    ];
    for (const step of steps) await Promise.resolve(step()).catch((error: unknown) => console.error(error));
  }
}

test('the sink resumes after a fast shutdown of its database, losing and doubling nothing', () => scenario('stop'));

test('the sink resumes after its database is killed (SIGKILL), losing and doubling nothing', () => scenario('kill'));
