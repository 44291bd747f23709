import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseRetryAfterMs } from './retry-after.js';

const now = Date.parse('2026-11-27T21:00:00Z');

test('retry-after: delta-seconds, whole and fractional', () => {
  assert.equal(parseRetryAfterMs({ 'retry-after': '2' }, now), 2000);
  assert.equal(parseRetryAfterMs({ 'retry-after': '0.5' }, now), 500);
  assert.equal(parseRetryAfterMs({ 'retry-after': ' 0 ' }, now), 0);
});

test('retry-after: an HTTP date, in the future and in the past', () => {
  assert.equal(parseRetryAfterMs({ 'retry-after': 'Fri, 27 Nov 2026 21:00:07 GMT' }, now), 7000);
  assert.equal(parseRetryAfterMs({ 'retry-after': 'Fri, 27 Nov 2026 20:59:00 GMT' }, now), 0);
});

test('retry-after: retry-after-ms (OpenAI) wins over retry-after', () => {
  assert.equal(parseRetryAfterMs({ 'retry-after-ms': '1234', 'retry-after': '9' }, now), 1234);
  assert.equal(parseRetryAfterMs({ 'retry-after-ms': 'soon', 'retry-after': '9' }, now), 9000);
});

test('retry-after: absent or unreadable gives undefined', () => {
  assert.equal(parseRetryAfterMs({}, now), undefined);
  assert.equal(parseRetryAfterMs({ 'retry-after': '' }, now), undefined);
  assert.equal(parseRetryAfterMs({ 'retry-after': 'later' }, now), undefined);
  assert.equal(parseRetryAfterMs({ 'retry-after': '-3' }, now), undefined);
});

test('retry-after: a repeated header uses its first value', () => {
  assert.equal(parseRetryAfterMs({ 'retry-after': ['3', '4'] }, now), 3000);
});
