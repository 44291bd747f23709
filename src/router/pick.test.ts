import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DeploymentState } from './deployment-state.js';
import { pickDeployment, type Candidate, type PickOptions } from './pick.js';
import { seededRandom } from '../../test/helpers/seeded-random.js';

interface Named extends Candidate {
  name: string;
}

function candidate(name: string, weight = 1): Named {
  return {
    name,
    weight,
    usable: true,
    state: new DeploymentState('p', name, { failures: 3, windowMs: 1_000, durationMs: 1_000 }),
  };
}

function options(overrides: Partial<PickOptions> = {}): PickOptions {
  return { strategy: 'weighted', now: 0, random: seededRandom(1), exploration: 0, ...overrides };
}

function countPicks(candidates: Named[], pickOptions: PickOptions, picks: number): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const entry of candidates) counts[entry.name] = 0;
  for (let index = 0; index < picks; index++) {
    const picked = pickDeployment(candidates, pickOptions);
    assert.ok(picked !== undefined);
    counts[picked.name] = (counts[picked.name] ?? 0) + 1;
  }
  return counts;
}

describe('weighted', () => {
  it('follows the weights within a few percent over 1,000 picks (several seeds)', () => {
    for (const seed of [1, 2, 3, 42, 1234]) {
      const candidates = [candidate('a', 70), candidate('b', 20), candidate('c', 10)];
      const counts = countPicks(candidates, options({ random: seededRandom(seed) }), 1_000);
      assert.ok(Math.abs((counts.a as number) - 700) <= 50, `seed ${seed}: ${JSON.stringify(counts)}`);
      assert.ok(Math.abs((counts.b as number) - 200) <= 40, `seed ${seed}: ${JSON.stringify(counts)}`);
      assert.ok(Math.abs((counts.c as number) - 100) <= 30, `seed ${seed}: ${JSON.stringify(counts)}`);
    }
  });

  it('never picks a deployment cooling down, or one whose provider is missing', () => {
    const a = candidate('a', 1);
    const b = candidate('b', 100);
    const c = candidate('c', 100);
    b.state.cooldownUntil = 5_000;
    c.usable = false;
    const counts = countPicks([a, b, c], options({ now: 1_000 }), 200);
    assert.deepEqual(counts, { a: 200, b: 0, c: 0 });
    // Once the cooldown is over, b takes traffic again.
    const after = countPicks([a, b, c], options({ now: 5_000 }), 200);
    assert.ok((after.b as number) > 150);
  });

  it('returns undefined when every deployment is cooling down', () => {
    const a = candidate('a');
    const b = candidate('b');
    a.state.cooldownUntil = 10;
    b.state.cooldownUntil = 10;
    assert.equal(pickDeployment([a, b], options({ now: 5 })), undefined);
    assert.equal(pickDeployment([a], options({ now: 5 })), undefined);
  });

  it('prefers a deployment not tried yet, then falls back to one tried', () => {
    const a = candidate('a', 1_000);
    const b = candidate('b', 1);
    const tried = new Set<Candidate>([a]);
    for (let index = 0; index < 50; index++) assert.equal(pickDeployment([a, b], options({ tried }))?.name, 'b');
    tried.add(b);
    assert.ok(pickDeployment([a, b], options({ tried })) !== undefined);
  });

  it('uses a weight-0 deployment only as a standby', () => {
    const main = candidate('main', 1);
    const standby = candidate('standby', 0);
    assert.deepEqual(countPicks([main, standby], options(), 100), { main: 100, standby: 0 });
    main.state.cooldownUntil = 1_000;
    assert.deepEqual(countPicks([main, standby], options(), 10), { main: 0, standby: 10 });
  });
});

describe('least-in-flight', () => {
  it('picks the deployment with the fewest calls in flight', () => {
    const a = candidate('a');
    const b = candidate('b');
    const c = candidate('c');
    a.state.inFlight = 3;
    b.state.inFlight = 1;
    c.state.inFlight = 2;
    assert.equal(pickDeployment([a, b, c], options({ strategy: 'least-in-flight' }))?.name, 'b');
  });

  it('spreads ties', () => {
    const counts = countPicks([candidate('a'), candidate('b')], options({ strategy: 'least-in-flight' }), 400);
    assert.ok((counts.a as number) > 150 && (counts.b as number) > 150, JSON.stringify(counts));
  });
});

describe('lowest-latency', () => {
  it('measures every deployment first, then picks the fastest', () => {
    const fast = candidate('fast');
    const slow = candidate('slow');
    slow.state.recordSuccess(500);
    assert.equal(pickDeployment([slow, fast], options({ strategy: 'lowest-latency' }))?.name, 'fast');
    fast.state.recordSuccess(50);
    const counts = countPicks([slow, fast], options({ strategy: 'lowest-latency' }), 100);
    assert.deepEqual(counts, { slow: 0, fast: 100 });
  });

  it('probes an unmeasured deployment with one request at a time', () => {
    const known = candidate('known');
    const fresh = candidate('fresh');
    known.state.recordSuccess(100);
    assert.equal(pickDeployment([known, fresh], options({ strategy: 'lowest-latency' }))?.name, 'fresh');
    fresh.state.inFlight = 1;
    assert.equal(pickDeployment([known, fresh], options({ strategy: 'lowest-latency' }))?.name, 'known');
  });

  it('explores: a slow (or recovered) deployment still gets about the exploration share', () => {
    const fast = candidate('fast');
    const slow = candidate('slow');
    fast.state.recordSuccess(50);
    slow.state.recordSuccess(5_000);
    const counts = countPicks(
      [slow, fast],
      options({ strategy: 'lowest-latency', exploration: 0.2, random: seededRandom(7) }),
      1_000,
    );
    // Exploration picks uniformly: about half of 20% goes to the slow one.
    assert.ok((counts.slow as number) > 60 && (counts.slow as number) < 140, JSON.stringify(counts));
  });
});
