import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dayLabel, hourLabel, hourOf, parseInstant, sinceHourOf, untilHourOf, HOUR_MS } from './time-buckets.js';

const NOW = Date.parse('2026-11-27T21:40:00Z');

test('instants: ISO timestamps (a date alone is UTC midnight, no zone is UTC) and spans back from now', () => {
  const cases: Array<[string, number | undefined]> = [
    ['2026-11-27T21:00:00.000Z', Date.parse('2026-11-27T21:00:00Z')],
    ['2026-11-27T21:00:00+02:00', Date.parse('2026-11-27T19:00:00Z')],
    ['2026-11-27T21:15', Date.parse('2026-11-27T21:15:00Z')],
    ['2026-11-27', Date.parse('2026-11-27T00:00:00Z')],
    ['7d', NOW - 7 * 24 * HOUR_MS],
    ['24h', NOW - 24 * HOUR_MS],
    ['30m', NOW - 30 * 60_000],
    ['1w', NOW - 7 * 24 * HOUR_MS],
    ['yesterday', undefined],
    ['2026-13-45', undefined],
    ['7 days', undefined],
    ['-7d', undefined],
    ['', undefined],
  ];
  for (const [text, expected] of cases) assert.equal(parseInstant(text, NOW), expected, text);
});

test('since rounds down to its hour, until up to the end of its hour', () => {
  const at = Date.parse('2026-11-27T21:40:00Z');
  assert.equal(sinceHourOf(at), hourOf(Date.parse('2026-11-27T21:00:00Z')));
  assert.equal(untilHourOf(at), hourOf(Date.parse('2026-11-27T22:00:00Z')));
  const onTheHour = Date.parse('2026-11-27T21:00:00Z');
  assert.equal(untilHourOf(onTheHour), hourOf(onTheHour), 'an until on the hour excludes that hour');
});

test('labels of hours and days are UTC', () => {
  const hour = hourOf(Date.parse('2026-11-27T23:59:59Z'));
  assert.equal(hourLabel(hour), '2026-11-27T23:00Z');
  assert.equal(dayLabel(hour), '2026-11-27');
  assert.equal(dayLabel(hour + 1), '2026-11-28');
});
