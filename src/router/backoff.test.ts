import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffMs, fitsBeforeDeadline, retryDelayMs, type BackoffPolicy } from './backoff.js';

const policy: BackoffPolicy = { baseMs: 100, maxMs: 1_000, jitter: 0 };

describe('backoffMs', () => {
  it('doubles from the base and stops at the maximum', () => {
    const delays = [1, 2, 3, 4, 5, 6].map((retry) => backoffMs(retry, policy, () => 0.5));
    assert.deepEqual(delays, [100, 200, 400, 800, 1_000, 1_000]);
  });

  it('randomises only the jittered fraction', () => {
    const half = { ...policy, jitter: 0.5 };
    assert.equal(
      backoffMs(2, half, () => 0),
      100,
    );
    assert.equal(
      backoffMs(2, half, () => 0.999999),
      199.9999,
    );
    const full = { ...policy, jitter: 1 };
    assert.equal(
      backoffMs(3, full, () => 0),
      0,
    );
    assert.equal(
      backoffMs(3, full, () => 0.5),
      200,
    );
  });
});

describe('retryDelayMs', () => {
  it('waits for Retry-After when it is longer than the backoff, even past the maximum backoff', () => {
    assert.equal(
      retryDelayMs(1, policy, () => 0, 2_500),
      2_500,
    );
  });

  it('keeps the backoff when Retry-After is shorter or absent', () => {
    assert.equal(
      retryDelayMs(2, policy, () => 0, 50),
      200,
    );
    assert.equal(
      retryDelayMs(2, policy, () => 0, undefined),
      200,
    );
  });
});

describe('fitsBeforeDeadline', () => {
  it('refuses a wait that would end at or past the deadline', () => {
    assert.equal(fitsBeforeDeadline(1_000, 500, 2_000), true);
    assert.equal(fitsBeforeDeadline(1_000, 1_000, 2_000), false);
    assert.equal(fitsBeforeDeadline(1_000, 3_000, 2_000), false);
  });
});
