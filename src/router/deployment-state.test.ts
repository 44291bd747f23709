import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProxyError } from '../contract/errors.js';
import { DeploymentState, EWMA_ALPHA } from './deployment-state.js';

const policy = { failures: 3, windowMs: 10_000, durationMs: 30_000 };
const serverError = (): ProxyError => new ProxyError('upstream_error', 'boom', { upstreamStatus: 500 });

describe('DeploymentState cooldown', () => {
  it('cools down on the Nth failure within the window, and is healthy again after the duration', () => {
    const state = new DeploymentState('p', 'm', policy);
    assert.equal(state.recordFailure(1_000, serverError()), false);
    assert.equal(state.recordFailure(2_000, serverError()), false);
    assert.equal(state.recentFailures(2_000), 2);
    assert.equal(state.recordFailure(3_000, serverError()), true);
    assert.equal(state.isCoolingDown(3_000), true);
    assert.equal(state.isCoolingDown(32_999), true);
    assert.equal(state.isCoolingDown(33_000), false);
    // It starts afresh: one more failure does not take it out again.
    assert.equal(state.recordFailure(33_100, serverError()), false);
    assert.equal(state.isCoolingDown(33_100), false);
  });

  it('forgets failures older than the window', () => {
    const state = new DeploymentState('p', 'm', policy);
    state.recordFailure(0, serverError());
    state.recordFailure(5_000, serverError());
    assert.equal(state.recordFailure(10_500, serverError()), false);
    assert.equal(state.recentFailures(10_500), 2);
    assert.equal(state.recordFailure(11_000, serverError()), true);
  });

  it('a success ends a run of failures', () => {
    const state = new DeploymentState('p', 'm', policy);
    state.recordFailure(1_000, serverError());
    state.recordFailure(2_000, serverError());
    state.recordSuccess(50);
    assert.equal(state.recentFailures(2_000), 0);
    assert.equal(state.recordFailure(3_000, serverError()), false);
  });

  it('a 429 cools down at once, for the duration or the Retry-After when longer', () => {
    const short = new DeploymentState('p', 'm', policy);
    assert.equal(
      short.recordFailure(
        1_000,
        new ProxyError('rate_limited', 'slow down', { upstreamStatus: 429, retryAfterMs: 2_000 }),
      ),
      true,
    );
    assert.equal(short.cooldownUntil, 31_000);
    const long = new DeploymentState('p', 'm', policy);
    long.recordFailure(
      1_000,
      new ProxyError('rate_limited', 'slow down', { upstreamStatus: 429, retryAfterMs: 60_000 }),
    );
    assert.equal(long.cooldownUntil, 61_000);
  });

  it('a cooldown forgets the latency average, so that the deployment is measured anew', () => {
    const state = new DeploymentState('p', 'm', policy);
    state.recordSuccess(100);
    state.recordFailure(1_000, new ProxyError('rate_limited', 'x'));
    assert.equal(state.ewmaLatencyMs, undefined);
  });

  it('a later, shorter cooldown does not shorten one running', () => {
    const state = new DeploymentState('p', 'm', policy);
    state.recordFailure(1_000, new ProxyError('rate_limited', 'x', { retryAfterMs: 100_000 }));
    state.recordFailure(2_000, new ProxyError('rate_limited', 'x'));
    assert.equal(state.cooldownUntil, 101_000);
  });
});

describe('DeploymentState latency', () => {
  it('starts at the first sample and moves by EWMA_ALPHA towards each new one', () => {
    const state = new DeploymentState('p', 'm', policy);
    assert.equal(state.ewmaLatencyMs, undefined);
    state.recordSuccess(100);
    assert.equal(state.ewmaLatencyMs, 100);
    state.recordSuccess(200);
    assert.equal(state.ewmaLatencyMs, 100 + EWMA_ALPHA * 100);
    for (let index = 0; index < 50; index++) state.recordSuccess(20);
    assert.ok(Math.abs((state.ewmaLatencyMs as number) - 20) < 0.01);
  });
});
