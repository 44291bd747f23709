import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProxyError } from '../contract/errors.js';
import type { UsageEvent } from '../contract/usage-event.js';
import { parseUsageQuery, runUsageQuery } from './query.js';
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
