import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AggregatedReply, AggregatedTotals } from './query.js';
import { formatCsv, formatTable } from './usage-report.js';

function totals(requests: number, cost: number): AggregatedTotals {
  return {
    total_requests: requests,
    total_tokens: requests * 30,
    avg_latency_ms: 812.25,
    success_rate: 0.975,
    prompt_tokens: requests * 20,
    completion_tokens: requests * 10,
    cached_prompt_tokens: requests * 5,
    saved_usd: 0,
    cost_usd: cost,
    ok: requests - 1,
    errors: 1,
    rejected: 0,
    cancelled: 0,
    cached: 2,
    tokens_estimated: 0,
  };
}

const reply: AggregatedReply = {
  ...totals(3000, 12.345678901),
  since: '2026-11-20T21:00:00.000Z',
  until: null,
  groups: [
    { key: { model: 'gpt-4.1-mini' }, ...totals(2000, 12.3) },
    { key: { model: '=cmd|"x",y' }, ...totals(1000, 0.045678901) },
  ],
};

test('CSV: group keys then counters, cost to nine decimals, cells quoted and defused for spreadsheets', () => {
  const lines = formatCsv(reply).trimEnd().split('\n');
  assert.equal(
    lines[0],
    'model,total_requests,ok,errors,rejected,cancelled,cached,tokens_estimated,prompt_tokens,completion_tokens,total_tokens,cost_usd,avg_latency_ms,success_rate,cached_prompt_tokens,saved_usd',
  );
  assert.equal(
    lines[1],
    'gpt-4.1-mini,2000,1999,1,0,0,2,0,40000,20000,60000,12.300000000,812.25,0.975,10000,0.000000000',
  );
  assert.ok(lines[2]?.startsWith(`"'=cmd|""x"",y",1000,`), lines[2]);
  assert.equal(lines.length, 3);
});

test('CSV without groups is one row of totals', () => {
  const lines = formatCsv({ ...reply, groups: [] })
    .trimEnd()
    .split('\n');
  assert.equal(lines.length, 2);
  assert.match(
    lines[1] ?? '',
    /^3000,2999,1,0,0,2,0,60000,30000,90000,12\.345678901,812\.25,0\.975,15000,0\.000000000$/,
  );
});

test('the table shows the totals, then one aligned row per group', () => {
  const text = formatTable(reply, { filters: 'microdao microdao:7' });
  const lines = text.split('\n');
  assert.equal(lines[0], 'Usage of microdao microdao:7, 2026-11-20T21:00:00.000Z to now (whole UTC hours)');
  assert.match(text, /requests {6}3,000 {2}\(ok 2,999, errors 1, rejected 0, cancelled 0; cached 2\)/);
  assert.match(text, /success rate {2}97\.50%/);
  assert.match(text, /cost {10}\$12\.345679/);
  const header = lines.find((line) => line.includes('REQUESTS')) ?? '';
  const row = lines.find((line) => line.includes('gpt-4.1-mini')) ?? '';
  assert.equal(
    row.indexOf('2,000') + '2,000'.length,
    header.indexOf('REQUESTS') + 'REQUESTS'.length,
    'numbers are right-aligned under their header',
  );
});
