import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../contract/errors.js';
import type { UsageEvent } from '../contract/usage-event.js';
import { parseUsageQuery, runUsageQuery, runUsageQueryAsync, ScanCache, UsageOutOfRange } from './query.js';
import { UsageRollups } from './rollups.js';
import { HOUR_MS } from './time-buckets.js';

const NOW = Date.parse('2026-11-27T21:40:00Z');
const encoder = new TextEncoder();

function rejects(body: unknown, pattern: RegExp): void {
  assert.throws(
    () => parseUsageQuery(body, NOW),
    (error: unknown) =>
      error instanceof ProxyError &&
      error.code === 'invalid_request' &&
      error.status === 400 &&
      pattern.test(error.message),
    JSON.stringify(body),
  );
}

test('queries are validated field by field', () => {
  rejects([], /JSON object/);
  rejects(null, /JSON object/);
  rejects({ agent: 'x' }, /unknown field "agent"/);
  rejects({ group_by: 'week' }, /^group_by: must be one or more of agent, microdao, model, provider, key, day, hour$/);
  rejects({ key_id: '' }, /^key_id: /);
  rejects({ key: 'AAAAAAAAAAAA' }, /unknown field "key"/);
  rejects({ since: 'last week' }, /^since: "last week" is neither/);
  rejects({ until: 5 }, /^until: /);
  rejects({ since: '2d', until: '3d' }, /^since: must be before until$/);
  rejects({ model: '' }, /^model: /);
});

test('a valid query: relative spans, hour rounding, group_by as one key or several (deduplicated)', () => {
  const parsed = parseUsageQuery(
    { agent_id: 'agent:sofia', since: '24h', until: '2026-11-27T21:10:00Z', group_by: ['model', 'day', 'model'] },
    NOW,
  );
  assert.deepEqual(parsed, {
    agent_id: 'agent:sofia',
    sinceHour: Math.floor((NOW - 24 * HOUR_MS) / HOUR_MS),
    untilHour: Math.ceil(Date.parse('2026-11-27T21:10:00Z') / HOUR_MS),
    groupBy: ['model', 'day'],
    orderBy: 'key',
  });
  assert.deepEqual(parseUsageQuery({ group_by: 'provider' }, NOW).groupBy, ['provider']);
});

function event(index: number, overrides: Partial<UsageEvent>): UsageEvent {
  return {
    v: 1,
    request_id: `r${index}`,
    ts: '2026-11-27T10:30:00.000Z',
    agent_id: 'agent:a',
    microdao_id: 'm:1',
    channel_id: null,
    model: 'x',
    provider: 'openai',
    model_resolved: 'x',
    status: 'ok',
    error_code: null,
    prompt_tokens: 10,
    completion_tokens: 5,
    total_tokens: 15,
    tokens_estimated: false,
    cost_usd: 0.1,
    latency_ms: 100,
    ttft_ms: null,
    stream: false,
    cached: false,
    attempts: 1,
    worker_id: 'w',
    ...overrides,
  };
}

test('totals, filters, groups (sorted by key) and the seed fields first', () => {
  const rollups = new UsageRollups(HOUR_MS);
  const events = [
    event(1, {}),
    event(2, { model: 'y', status: 'error', latency_ms: 300, cost_usd: 0.2 }),
    event(3, { agent_id: null, ts: '2026-11-28T01:00:00.000Z', cost_usd: 0.3 }),
    event(4, { provider: 'local', status: 'cancelled', cached: true }),
  ];
  for (const [index, item] of events.entries()) {
    rollups.apply({ seq: index + 1, data: encoder.encode(JSON.stringify(item)), storedAtMs: NOW });
  }

  const all = runUsageQuery(rollups, parseUsageQuery({}, NOW));
  assert.deepEqual(Object.keys(all).slice(0, 4), ['total_requests', 'total_tokens', 'avg_latency_ms', 'success_rate']);
  assert.equal(all.total_requests, 4);
  assert.equal(all.cost_usd, 0.7, '0.1 + 0.2 + 0.3 + 0.1 in nano-dollars is exactly 0.7');
  assert.equal(all.avg_latency_ms, 150);
  assert.equal(all.success_rate, 0.5);
  assert.equal(all.cancelled, 1);
  assert.equal(all.cached, 1);
  assert.deepEqual(all.groups, []);
  assert.equal(all.since, null);

  const byAgentDay = runUsageQuery(rollups, parseUsageQuery({ group_by: ['day', 'agent'] }, NOW));
  assert.deepEqual(
    byAgentDay.groups.map((group) => [group.key, group.total_requests]),
    [
      [{ day: '2026-11-27', agent: 'agent:a' }, 3],
      [{ day: '2026-11-28', agent: '(none)' }, 1],
    ],
  );

  const filtered = runUsageQuery(
    rollups,
    parseUsageQuery({ provider: 'openai', since: '2026-11-27T10:59:59Z', group_by: 'hour' }, NOW),
  );
  assert.equal(filtered.total_requests, 3, 'since is rounded down to 10:00');
  assert.equal(filtered.since, '2026-11-27T10:00:00.000Z');
  assert.deepEqual(
    filtered.groups.map((group) => group.key.hour),
    ['2026-11-27T10:00Z', '2026-11-28T01:00Z'],
  );

  const empty = runUsageQuery(rollups, parseUsageQuery({ agent_id: 'nobody' }, NOW));
  assert.equal(empty.total_requests, 0);
  assert.equal(empty.avg_latency_ms, 0);
  assert.equal(empty.success_rate, 0);
});

test('group_by key splits by the key id ((none) without one); key_id filters like agent_id', () => {
  const rollups = new UsageRollups(HOUR_MS);
  const events = [
    event(1, { key_id: 'KeyA00000000' }),
    event(2, { key_id: 'KeyA00000000', model: 'y', cost_usd: 0.2 }),
    event(3, { key_id: 'KeyB00000000', agent_id: 'agent:b' }),
    event(4, {}),
    event(5, { key_id: 'KeyA00000000', ts: '2026-11-28T01:00:00.000Z', status: 'error' }),
  ];
  for (const [index, item] of events.entries()) {
    rollups.apply({ seq: index + 1, data: encoder.encode(JSON.stringify(item)), storedAtMs: NOW });
  }

  const byKey = runUsageQuery(rollups, parseUsageQuery({ group_by: 'key' }, NOW));
  assert.equal(byKey.total_requests, 5);
  assert.deepEqual(
    byKey.groups.map((group) => [group.key, group.total_requests, group.cost_usd]),
    [
      [{ key: '(none)' }, 1, 0.1],
      [{ key: 'KeyA00000000' }, 3, 0.4],
      [{ key: 'KeyB00000000' }, 1, 0.1],
    ],
  );

  const parsed = parseUsageQuery({ key_id: 'KeyA00000000', group_by: ['day', 'key', 'model'] }, NOW);
  assert.equal(parsed.key_id, 'KeyA00000000');
  const keyA = runUsageQuery(rollups, parsed);
  assert.equal(keyA.total_requests, 3);
  assert.equal(keyA.errors, 1);
  assert.deepEqual(
    keyA.groups.map((group) => [group.key, group.total_requests]),
    [
      [{ day: '2026-11-27', key: 'KeyA00000000', model: 'x' }, 1],
      [{ day: '2026-11-27', key: 'KeyA00000000', model: 'y' }, 1],
      [{ day: '2026-11-28', key: 'KeyA00000000', model: 'x' }, 1],
    ],
  );

  // Filters combine; a key id no event came with matches nothing.
  assert.equal(
    runUsageQuery(rollups, parseUsageQuery({ key_id: 'KeyB00000000', agent_id: 'agent:a' }, NOW)).total_requests,
    0,
  );
  assert.equal(
    runUsageQuery(rollups, parseUsageQuery({ key_id: 'KeyB00000000', agent_id: 'agent:b' }, NOW)).total_requests,
    1,
  );
  assert.equal(runUsageQuery(rollups, parseUsageQuery({ key_id: 'KeyC00000000' }, NOW)).total_requests, 0);

  // Grouped by agent only, the key cells of one agent add up to one group.
  assert.deepEqual(
    runUsageQuery(rollups, parseUsageQuery({ group_by: 'agent' }, NOW)).groups.map((group) => [
      group.key.agent,
      group.total_requests,
    ]),
    [
      ['agent:a', 4],
      ['agent:b', 1],
    ],
  );
});

/** Rollups of `count` events over `agents` agents, one model each, at NOW, with costs that differ by agent. */
function manyAgents(count: number, agents: number): UsageRollups {
  const rollups = new UsageRollups(HOUR_MS);
  for (let index = 0; index < count; index += 1) {
    const item = event(index, {
      agent_id: `agent:${String(index % agents).padStart(3, '0')}`,
      cost_usd: ((index % agents) + 1) * 0.001,
      total_tokens: 10_000 - (index % agents),
    });
    rollups.apply({ seq: index + 1, data: encoder.encode(JSON.stringify(item)), storedAtMs: NOW });
  }
  return rollups;
}

test('pages: limit and next_cursor walk every group once, in key order or largest first', () => {
  const rollups = manyAgents(600, 250);
  const whole = runUsageQuery(rollups, parseUsageQuery({ group_by: 'agent' }, NOW));
  assert.equal(whole.groups.length, 250);
  assert.equal(whole.next_cursor, undefined, 'an unpaged reply has no paging fields');
  for (const order of ['key', 'cost', 'tokens', 'requests'] as const) {
    const seen: string[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const reply = runUsageQuery(
        rollups,
        parseUsageQuery({ group_by: 'agent', limit: 40, order_by: order, ...(cursor ? { cursor } : {}) }, NOW),
      );
      pages += 1;
      assert.equal(reply.total_groups, 250);
      assert.equal(reply.total_requests, 600, 'every page carries the totals');
      assert.ok(reply.groups.length <= 40);
      seen.push(...reply.groups.map((group) => group.key.agent as string));
      cursor = reply.next_cursor ?? undefined;
    } while (cursor !== undefined);
    assert.equal(pages, 7, order);
    assert.equal(new Set(seen).size, 250, `${order}: each group once`);
    if (order === 'key')
      assert.deepEqual(
        seen,
        whole.groups.map((group) => group.key.agent),
      );
  }
  const top = runUsageQuery(rollups, parseUsageQuery({ group_by: 'agent', limit: 3, order_by: 'cost' }, NOW));
  assert.deepEqual(
    top.groups.map((group) => group.key.agent),
    ['agent:249', 'agent:248', 'agent:247'],
    'top 3 by cost',
  );
  const byTokens = runUsageQuery(rollups, parseUsageQuery({ group_by: 'agent', limit: 1, order_by: 'tokens' }, NOW));
  assert.deepEqual(
    byTokens.groups.map((group) => group.key.agent),
    ['agent:000'],
  );
  // A cursor belongs to its query.
  const other = { group_by: 'model', limit: 1, cursor: top.next_cursor };
  assert.throws(() => runUsageQuery(rollups, parseUsageQuery(other, NOW)), /cursor: it belongs to another query/);
  assert.throws(
    () => runUsageQuery(rollups, parseUsageQuery({ group_by: 'agent', cursor: 'bm90IGEgY3Vyc29y' }, NOW)),
    /cursor: not a cursor/,
  );
  rejects({ limit: 0 }, /^limit: /);
  rejects({ limit: 10_001 }, /^limit: /);
  rejects({ order_by: 'price' }, /^order_by: must be one of key, cost, tokens, requests$/);
});

test('a reply too large for the bus is refused before it is built, naming limit', async () => {
  const rollups = manyAgents(600, 250);
  await assert.rejects(
    runUsageQueryAsync(rollups, parseUsageQuery({ group_by: 'agent' }, NOW), { maxBytes: 20_000 }),
    (error: unknown) =>
      error instanceof ProxyError && error.code === 'payload_too_large' && /limit/.test(error.message),
  );
  const page = await runUsageQueryAsync(rollups, parseUsageQuery({ group_by: 'agent', limit: 20 }, NOW), {
    maxBytes: 20_000,
  });
  assert.equal(page.groups.length, 20);
});

test('compaction: hours past the window become days, days past the retention go; totals stay exact', () => {
  const DAY = 24 * HOUR_MS;
  const rollups = new UsageRollups(HOUR_MS, { hourWindowMs: 2 * DAY, retentionMs: 10 * DAY });
  const start = Date.parse('2026-11-01T00:00:00Z');
  let seq = 0;
  // One event every 3 hours for 20 days, each stored when it happens (stream time = event time).
  const events: UsageEvent[] = [];
  for (let at = start; at < start + 20 * DAY; at += 3 * HOUR_MS) {
    const item = event(seq, { ts: new Date(at + 60_000).toISOString(), cost_usd: 0.000000123 * (seq + 1) });
    events.push(item);
    seq += 1;
    rollups.apply({ seq, data: encoder.encode(JSON.stringify(item)), storedAtMs: at + 61_000 });
  }
  const now = start + 20 * DAY;
  const hourFrom = rollups.hourRegionStart();
  const keptFrom = rollups.retentionStart();
  assert.equal(new Date(hourFrom * HOUR_MS).toISOString(), '2026-11-18T00:00:00.000Z');
  assert.equal(new Date(keptFrom * HOUR_MS).toISOString(), '2026-11-10T00:00:00.000Z');
  for (const bucket of rollups.hours.keys()) {
    assert.ok(bucket >= keptFrom, 'nothing older than the retention');
    assert.equal(rollups.dayBuckets.has(bucket), bucket < hourFrom, 'days before the window, hours after');
  }
  const kept = events.filter((item) => Date.parse(item.ts) >= keptFrom * HOUR_MS);
  const nano = (list: UsageEvent[]) => list.reduce((sum, item) => sum + Math.round(item.cost_usd * 1e9), 0);
  const all = runUsageQuery(rollups, parseUsageQuery({}, now));
  assert.equal(all.total_requests, kept.length);
  assert.equal(Math.round(all.cost_usd * 1e9), nano(kept), 'to the nano-dollar');
  assert.equal(all.since, '2026-11-10T00:00:00.000Z', 'without since, the range starts at the retention');
  // By day across both resolutions (November 10 to 20): each day has its 8 events.
  const byDay = runUsageQuery(rollups, parseUsageQuery({ group_by: 'day' }, now));
  assert.deepEqual(
    byDay.groups.map((group) => [group.key.day, group.total_requests]),
    Array.from({ length: 11 }, (_, index) => [`2026-11-${String(10 + index).padStart(2, '0')}`, 8]),
  );
  // A since inside a day bucket widens to the day; hours are refused where only days are kept.
  const widened = runUsageQuery(rollups, parseUsageQuery({ since: '2026-11-12T13:00:00Z' }, now));
  assert.equal(widened.since, '2026-11-12T00:00:00.000Z');
  assert.equal(widened.total_requests, 9 * 8, 'November 12 to 20');
  assert.throws(
    () => runUsageQuery(rollups, parseUsageQuery({ group_by: 'hour' }, now)),
    /group_by: hour covers only since 2026-11-18T00:00:00.000Z/,
  );
  assert.equal(
    runUsageQuery(rollups, parseUsageQuery({ since: '2026-11-19T00:00:00Z', group_by: 'hour' }, now)).groups.length,
    8 * 2,
  );
  assert.throws(
    () => runUsageQuery(rollups, parseUsageQuery({ since: '2026-11-02T00:00:00Z' }, now)),
    (error: unknown) =>
      error instanceof UsageOutOfRange && /keeps usage from 2026-11-10T00:00:00.000Z/.test(error.message),
  );
  // A late event for a dropped day is counted as expired, not into any bucket.
  const late = event(999, { ts: '2026-11-03T10:00:00.000Z' });
  assert.equal(
    rollups.apply({ seq: seq + 1, data: encoder.encode(JSON.stringify(late)), storedAtMs: now }).outcome,
    'expired',
  );
  assert.equal(rollups.stats.expired, 1);
});

test('an async query lets the event loop turn while it scans', async () => {
  const rollups = manyAgents(20_000, 5_000);
  let turns = 0;
  const ticker = setInterval(() => {
    turns += 1;
  }, 0);
  try {
    const reply = await runUsageQueryAsync(rollups, parseUsageQuery({ group_by: 'agent' }, NOW), { sliceMs: 0 });
    assert.equal(reply.total_requests, 20_000);
    assert.equal(reply.groups.length, 5_000);
  } finally {
    clearInterval(ticker);
  }
  assert.ok(turns > 0, 'timers ran while the query was scanning');
});

test('the pages after the first are cut from the same sums (kept briefly), not from a new scan', async () => {
  const rollups = manyAgents(600, 250);
  const cache = new ScanCache();
  const first = await runUsageQueryAsync(rollups, parseUsageQuery({ group_by: 'agent', limit: 100 }, NOW), { cache });
  // An event arrives between two pages: the second page still belongs to the first page's answer.
  const late = event(10_000, { agent_id: 'agent:000', cost_usd: 5 });
  rollups.apply({ seq: 10_000, data: encoder.encode(JSON.stringify(late)), storedAtMs: NOW });
  const second = await runUsageQueryAsync(
    rollups,
    parseUsageQuery({ group_by: 'agent', limit: 100, cursor: first.next_cursor as string }, NOW),
    { cache },
  );
  assert.equal(second.total_requests, first.total_requests);
  assert.equal(second.groups[0]?.key.agent, 'agent:100');
  // A new first page scans again and sees it.
  const again = await runUsageQueryAsync(rollups, parseUsageQuery({ group_by: 'agent', limit: 100 }, NOW), { cache });
  assert.equal(again.total_requests, first.total_requests + 1);
});
