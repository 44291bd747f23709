import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { runCli } from './helpers/cli-process.js';
import { startNatsServer } from './helpers/nats-server.js';
import { FIXED_DATES, handCompute, makeEvents, NOW } from './helpers/usage-events.js';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { usageStreamSchema } from '../src/config/schema.js';
import { agentToken, subjectsFor } from '../src/contract/subjects.js';
import { ensureUsageStream } from '../src/usage/stream.js';

/**
 * A breakdown larger than one NATS message: 3,000 agents grouped by agent is about 1.3 MB of reply,
 * past the server's 1 MB max_payload. Unpaged it is refused before it is built; `llm-proxy usage`
 * fetches it page by page for --csv and --json, and --order-by/--limit give the top N.
 */

const AGENTS = 3_000;

test('a 3,000-agent breakdown: refused unpaged, fetched page by page by the CLI, top-N by cost', {
  timeout: 90_000,
}, async () => {
  const server = await startNatsServer();
  const connection = await connect({ servers: server.url });
  const usageStream = usageStreamSchema.parse({});
  let aggregator: UsageAggregator | undefined;
  try {
    await ensureUsageStream(await jetstreamManager(connection), usageStream, 'llm');
    const events = makeEvents(AGENTS * 2).map((event, index) => ({
      ...event,
      agent_id: `agent:paging-${String(index % AGENTS).padStart(4, '0')}-${'x'.repeat(40)}`,
    }));
    const js = jetstream(connection);
    for (let start = 0; start < events.length; start += 500)
      await Promise.all(
        events.slice(start, start + 500).map((event) =>
          js.publish(subjectsFor('llm').usageFor(agentToken(event.agent_id)), JSON.stringify(event), {
            msgID: event.request_id,
            timeout: 30_000,
          }),
        ),
      );
    aggregator = await UsageAggregator.start({
      connection,
      subjectPrefix: 'llm',
      usageStream,
      aggregator: aggregatorSchema.parse({ instance_id: 'paging', snapshot_interval_ms: '10m', ...FIXED_DATES }),
      now: () => NOW,
    });
    await aggregator.waitForSeq(events.length, 60_000);

    // Unpaged, the reply would not fit in a message: refused, naming limit, before it is built.
    const unpaged = await connection.request(subjectsFor('llm').usageQuery, JSON.stringify({ group_by: 'agent' }), {
      timeout: 10_000,
    });
    const refusal = unpaged.json<{ error: { code: string; message: string } }>();
    assert.equal(refusal.error.code, 'payload_too_large');
    assert.match(refusal.error.message, /page it with limit/);

    const expected = handCompute(events, { group_by: ['agent'] });
    const env = { NATS_URL: server.url };
    const [csv, json, top] = await Promise.all([
      runCli(['usage', '--group-by', 'agent', '--csv'], env),
      runCli(['usage', '--group-by', 'agent', '--json'], env),
      runCli(['usage', '--group-by', 'agent', '--order-by', 'cost', '--limit', '5', '--json'], env),
    ]);
    assert.equal(csv.code, 0, csv.stderr);
    const lines = csv.stdout.trimEnd().split('\n');
    assert.equal(lines.length, AGENTS + 1, 'a header and every agent');
    assert.deepEqual(
      lines.slice(1).map((line) => line.split(',')[0]),
      expected.groups.map((group) => group.key.agent),
    );
    assert.equal(json.code, 0, json.stderr);
    const { cents: _cents, ...exact } = expected;
    assert.deepEqual(
      JSON.parse(json.stdout),
      exact,
      'the pages joined are the whole answer, to the token and the cent',
    );

    assert.equal(top.code, 0, top.stderr);
    const topReply = JSON.parse(top.stdout) as {
      groups: Array<{ key: { agent: string }; cost_usd: number }>;
      total_groups: number;
      next_cursor: string | null;
    };
    const byCost = [...expected.groups].sort(
      (a, b) => b.cost_usd - a.cost_usd || ((a.key.agent as string) < (b.key.agent as string) ? -1 : 1),
    );
    assert.deepEqual(
      topReply.groups.map((group) => group.key.agent),
      byCost.slice(0, 5).map((group) => group.key.agent),
    );
    assert.equal(topReply.total_groups, AGENTS);
    assert.equal(typeof topReply.next_cursor, 'string');
  } finally {
    await aggregator?.stop();
    await connection.close();
    await server.stop();
  }
});
