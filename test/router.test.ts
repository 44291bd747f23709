/**
 * The router end to end over real HTTP: the provider adapters (undici) against
 * fake OpenAI-compatible servers on loopback that fail on command.
 */
import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it } from 'node:test';
import { resolveConfig, type ResolvedConfig } from '../src/config/load.js';
import type { ConfigInput } from '../src/config/schema.js';
import { ProxyError } from '../src/contract/errors.js';
import type { ChatRequest } from '../src/contract/request.js';
import { createProviders, type ProviderSet } from '../src/providers/registry.js';
import { createRouter, type Router, type RoutedCall } from '../src/router/index.js';
import { fakeBehaviours, startFakeOpenAI, type FakeOpenAI } from './fakes/index.js';
import { freePort } from './helpers/ports.js';
import { seededRandom } from './helpers/seeded-random.js';

const FAKE_NAMES = ['alpha', 'beta', 'gamma'] as const;
type FakeName = (typeof FAKE_NAMES)[number];

const fakes = new Map<FakeName, FakeOpenAI>();
let deadPort = 0;
const openSets: ProviderSet[] = [];

before(async () => {
  for (const name of FAKE_NAMES) fakes.set(name, await startFakeOpenAI());
  deadPort = await freePort();
});

after(async () => {
  await Promise.all(openSets.map((set) => set.close()));
  await Promise.all([...fakes.values()].map((fake) => fake.close()));
});

beforeEach(() => {
  for (const fake of fakes.values()) {
    fake.clearQueue();
    fake.setDefault(fakeBehaviours.ok());
  }
});

function fake(name: FakeName): FakeOpenAI {
  return fakes.get(name) as FakeOpenAI;
}

/** A router over every fake (providers named after them) plus `dead`, a port nobody listens on. */
function makeRouter(
  models: ConfigInput['models'],
  routing: ConfigInput['routing'] = {},
  seed?: number,
): { router: Router; config: ResolvedConfig } {
  const providers: ConfigInput['providers'] = { dead: { type: 'openai', base_url: `http://127.0.0.1:${deadPort}/v1` } };
  for (const name of FAKE_NAMES) providers[name] = { type: 'openai', base_url: fake(name).baseUrl };
  const config = resolveConfig(
    {
      providers,
      models,
      routing: { ...routing, retry: { base_backoff_ms: 10, max_backoff_ms: 50, jitter: 0, ...routing.retry } },
    },
    'router.test',
    {},
  );
  const set = createProviders(config);
  openSets.push(set);
  const router = createRouter({
    config,
    providers: set.providers,
    ...(seed === undefined ? {} : { random: seededRandom(seed) }),
  });
  return { router, config };
}

function call(
  model: string,
  overrides: Partial<ChatRequest> = {},
  timeoutMs = 10_000,
  signal = new AbortController().signal,
): RoutedCall {
  return {
    request: { model, messages: [{ role: 'user', content: 'hello' }], ...overrides },
    signal,
    deadlineAt: Date.now() + timeoutMs,
  };
}

async function rejected(promise: Promise<unknown>): Promise<ProxyError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ProxyError, `expected a ProxyError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a rejection');
}

function summary(attempts: Array<{ provider: string; error_code: string | null }> | undefined): string[] {
  return (attempts ?? []).map((attempt) => `${attempt.provider}:${attempt.error_code ?? 'ok'}`);
}

describe('router over HTTP', () => {
  it('a retry lands on a healthy deployment', async () => {
    const { router } = makeRouter({
      m: {
        deployments: [
          { provider: 'alpha', physical_name: 'gpt-a', weight: 1_000_000 },
          { provider: 'beta', physical_name: 'gpt-b', weight: 1 },
        ],
      },
    });
    fake('alpha').enqueue(fakeBehaviours.serverError(500));
    const response = await router.chat(call('m'));
    assert.deepEqual(summary(response.attempts), ['alpha:upstream_error', 'beta:ok']);
    assert.equal(response.content, 'echo: hello');
    assert.deepEqual(response.target, { model: 'm', provider: 'beta', physicalName: 'gpt-b' });
    assert.equal(fake('beta').chatRequests.at(-1)?.body.model, 'gpt-b');
    const served = response.attempts[1];
    assert.ok(
      (served?.prompt_tokens ?? 0) > 0 && (served?.completion_tokens ?? 0) > 0,
      'tokens on the attempt that consumed them',
    );
  });

  it('follows the fallback chain in order', async () => {
    const { router } = makeRouter(
      {
        m: { provider: 'alpha', physical_name: 'a', fallbacks: ['n', 'o'] },
        n: { provider: 'beta', physical_name: 'b' },
        o: { provider: 'gamma', physical_name: 'c' },
      },
      { retry: { attempts: 1 } },
    );
    const before = FAKE_NAMES.map((name) => fake(name).chatRequests.length);
    fake('alpha').enqueue(fakeBehaviours.serverError(503));
    fake('beta').enqueue(fakeBehaviours.reset());
    const response = await router.chat(call('m'));
    assert.deepEqual(summary(response.attempts), ['alpha:upstream_error', 'beta:upstream_error', 'gamma:ok']);
    assert.equal(response.target.model, 'o');
    const [alphaTime, betaTime, gammaTime] = FAKE_NAMES.map(
      (name, index) => fake(name).chatRequests[before[index] as number]?.time ?? NaN,
    );
    assert.ok(
      (alphaTime as number) <= (betaTime as number) && (betaTime as number) <= (gammaTime as number),
      'in order',
    );
  });

  it('honours Retry-After: a 503 is retried only after it, and a 429 keeps the deployment out until it has passed', async () => {
    const { router } = makeRouter({ m: { provider: 'alpha', physical_name: 'a' } }, { cooldown: { duration_ms: 100 } });
    fake('alpha').enqueue({ kind: 'status', status: 503, message: 'overloaded', headers: { 'retry-after': '1' } });
    const first = fake('alpha').chatRequests.length;
    const response = await router.chat(call('m'));
    assert.deepEqual(summary(response.attempts), ['alpha:upstream_error', 'alpha:ok']);
    const [failed, retried] = fake('alpha').chatRequests.slice(first);
    assert.ok((retried?.time as number) - (failed?.time as number) >= 950, 'waited for Retry-After: 1');

    fake('alpha').enqueue(fakeBehaviours.rateLimited(1));
    const limited = await rejected(router.chat(call('m')));
    assert.equal(limited.code, 'rate_limited');
    assert.ok((limited.retryAfterMs ?? 0) > 900);
    assert.equal(router.health()[0]?.state, 'cooling_down');
    const count = fake('alpha').chatRequests.length;
    const refused = await rejected(router.chat(call('m')));
    assert.equal(refused.code, 'no_provider_available');
    assert.ok((refused.retryAfterMs ?? 0) > 500);
    assert.equal(fake('alpha').chatRequests.length, count, 'no call before Retry-After has passed');
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    assert.equal((await router.chat(call('m'))).attempts.length, 1);
  });

  it('a Retry-After beyond the request deadline is not waited for', async () => {
    const { router } = makeRouter({ m: { provider: 'alpha', physical_name: 'a' } });
    fake('alpha').enqueue({ kind: 'status', status: 503, message: 'overloaded', headers: { 'retry-after': '30' } });
    const started = Date.now();
    const error = await rejected(router.chat(call('m', { timeout_ms: 3_000 })));
    assert.ok(Date.now() - started < 2_000);
    assert.equal(error.code, 'upstream_error');
    assert.equal(error.retryAfterMs, 30_000);
  });

  it('cooldown starts after N failures and ends after its duration', async () => {
    const { router } = makeRouter(
      {
        m: {
          deployments: [
            { provider: 'alpha', physical_name: 'a' },
            { provider: 'beta', physical_name: 'b' },
          ],
        },
      },
      { cooldown: { failures: 2, window_ms: 60_000, duration_ms: 600 } },
      11,
    );
    fake('alpha').setDefault(fakeBehaviours.serverError(500));
    for (let index = 0; index < 50 && router.health()[0]?.state === 'healthy'; index++) await router.chat(call('m'));
    const [alpha, beta] = router.health();
    assert.equal(alpha?.state, 'cooling_down');
    assert.equal(alpha?.recent_failures, 0, 'failures start afresh once cooling down');
    assert.equal(beta?.state, 'healthy');
    const alphaCalls = fake('alpha').chatRequests.length;
    for (let index = 0; index < 10; index++) assert.equal((await router.chat(call('m'))).target.provider, 'beta');
    assert.equal(fake('alpha').chatRequests.length, alphaCalls, 'no traffic while cooling down');

    fake('alpha').setDefault(fakeBehaviours.ok());
    await new Promise((resolve) => setTimeout(resolve, 650));
    assert.equal(router.health()[0]?.state, 'healthy');
    let alphaServed = 0;
    for (let index = 0; index < 20; index++)
      if ((await router.chat(call('m'))).target.provider === 'alpha') alphaServed++;
    assert.ok(alphaServed >= 3, `alpha takes traffic again (${alphaServed}/20)`);
  });

  it('respects the weights (1,000 requests, 3:1)', async () => {
    const { router } = makeRouter(
      {
        m: {
          deployments: [
            { provider: 'alpha', physical_name: 'a', weight: 3 },
            { provider: 'beta', physical_name: 'b', weight: 1 },
          ],
        },
      },
      {},
      2026,
    );
    const counts = { alpha: 0, beta: 0 } as Record<string, number>;
    for (let batch = 0; batch < 50; batch++) {
      const responses = await Promise.all(Array.from({ length: 20 }, () => router.chat(call('m'))));
      for (const response of responses) counts[response.target.provider] = (counts[response.target.provider] ?? 0) + 1;
    }
    assert.equal((counts.alpha ?? 0) + (counts.beta ?? 0), 1_000);
    assert.ok(Math.abs((counts.alpha ?? 0) - 750) <= 40, JSON.stringify(counts));
  });

  it('lowest-latency prefers the faster deployment and, exploring, notices when the other recovers', async () => {
    const { router } = makeRouter(
      {
        m: {
          deployments: [
            { provider: 'alpha', physical_name: 'a' },
            { provider: 'beta', physical_name: 'b' },
          ],
          routing: { strategy: 'lowest-latency' },
        },
      },
      { exploration: 0.2 },
      5,
    );
    fake('alpha').setDefault(fakeBehaviours.slowHeaders(120));
    let alphaServed = 0;
    for (let index = 0; index < 40; index++)
      if ((await router.chat(call('m'))).target.provider === 'alpha') alphaServed++;
    assert.ok(alphaServed <= 12, `the slow one serves little (${alphaServed}/40)`);
    fake('alpha').setDefault(fakeBehaviours.ok());
    fake('beta').setDefault(fakeBehaviours.slowHeaders(120));
    let lastTen = 0;
    for (let index = 0; index < 60; index++) {
      const served = (await router.chat(call('m'))).target.provider;
      if (index >= 50 && served === 'alpha') lastTen++;
    }
    assert.ok(lastTen >= 7, `alpha, fast again, is found (${lastTen}/10 of the last requests)`);
    assert.ok((router.health()[0]?.ewma_latency_ms ?? Infinity) < (router.health()[1]?.ewma_latency_ms ?? 0));
  });

  it('the request deadline wins over retries and fallbacks', async () => {
    const { router } = makeRouter(
      { m: { provider: 'alpha', physical_name: 'a', fallbacks: ['n'] }, n: { provider: 'beta', physical_name: 'b' } },
      { retry: { attempts: 5 } },
    );
    fake('alpha').setDefault(fakeBehaviours.hang());
    fake('beta').setDefault(fakeBehaviours.hang());
    const closedBefore = fake('alpha').closedByClient;
    const started = Date.now();
    const error = await rejected(router.chat(call('m', { timeout_ms: 600 })));
    const elapsed = Date.now() - started;
    assert.equal(error.code, 'upstream_timeout');
    assert.ok(elapsed >= 550 && elapsed < 3_000, `took ${elapsed} ms`);
    assert.deepEqual(summary(error.attempts), ['alpha:upstream_timeout']);
    await fake('alpha').waitForClosedByClient(closedBefore + 1, 5_000);
    assert.equal(router.health()[0]?.recent_failures, 0, "the request's own deadline is not the deployment's failure");
  });

  it('a deployment timeout moves on to the next deployment within the request deadline', async () => {
    const { router } = makeRouter({
      m: {
        deployments: [
          { provider: 'alpha', physical_name: 'a', weight: 1_000_000, timeout_ms: 300 },
          { provider: 'beta', physical_name: 'b', weight: 1 },
        ],
      },
    });
    fake('alpha').enqueue(fakeBehaviours.hang());
    const response = await router.chat(call('m', { timeout_ms: 5_000 }));
    assert.deepEqual(summary(response.attempts), ['alpha:upstream_timeout', 'beta:ok']);
    assert.ok((response.attempts[0]?.latency_ms ?? 0) >= 280);
  });

  it('streaming falls back before the first chunk', async () => {
    const { router } = makeRouter(
      { m: { provider: 'alpha', physical_name: 'a', fallbacks: ['n'] }, n: { provider: 'beta', physical_name: 'b' } },
      { retry: { attempts: 1 } },
    );
    fake('alpha').enqueue(fakeBehaviours.serverError(502));
    const stream = await router.stream(call('m', { stream: true }));
    assert.equal(stream.target.model, 'n');
    assert.deepEqual(summary(stream.attempts), ['alpha:upstream_error', 'beta:ok']);
    let text = '';
    for await (const event of stream.events) if (event.type === 'delta') text += event.content ?? '';
    assert.equal(text, 'echo: hello');
  });

  it('streaming also falls back when the stream breaks before its first content', async () => {
    const { router } = makeRouter(
      { m: { provider: 'alpha', physical_name: 'a', fallbacks: ['n'] }, n: { provider: 'beta', physical_name: 'b' } },
      { retry: { attempts: 1 } },
    );
    fake('alpha').enqueue({ kind: 'stream-cut', afterChunks: 0 });
    const stream = await router.stream(call('m', { stream: true }));
    assert.equal(stream.target.model, 'n');
    for await (const _event of stream.events) {
      // drain
    }
  });

  it('streaming does not switch after the first chunk: the error is thrown from the iterable', async () => {
    const { router } = makeRouter(
      { m: { provider: 'alpha', physical_name: 'a', fallbacks: ['n'] }, n: { provider: 'beta', physical_name: 'b' } },
      { retry: { attempts: 1 } },
    );
    fake('alpha').enqueue({ kind: 'stream-cut', afterChunks: 2, content: 'one two three four' });
    const betaBefore = fake('beta').chatRequests.length;
    const stream = await router.stream(call('m', { stream: true }));
    assert.equal(stream.target.provider, 'alpha');
    let text = '';
    const error = await rejected(
      (async () => {
        for await (const event of stream.events) if (event.type === 'delta') text += event.content ?? '';
      })(),
    );
    assert.ok(text.length > 0, 'part of the answer arrived first');
    assert.equal(error.code, 'upstream_error');
    assert.deepEqual(summary(error.attempts), ['alpha:upstream_error']);
    assert.equal(fake('beta').chatRequests.length, betaBefore, 'no silent switch');
    assert.equal(router.health()[0]?.in_flight, 0);
  });

  it('all deployments of all fallbacks down: no_provider_available, quickly', async () => {
    const { router } = makeRouter(
      {
        m: {
          deployments: [
            { provider: 'dead', physical_name: 'x' },
            { provider: 'alpha', physical_name: 'a' },
          ],
          fallbacks: ['n'],
        },
        n: { provider: 'beta', physical_name: 'b' },
      },
      { cooldown: { failures: 1, window_ms: 60_000, duration_ms: 60_000 }, retry: { attempts: 1 } },
    );
    fake('alpha').setDefault(fakeBehaviours.serverError(500));
    fake('beta').setDefault(fakeBehaviours.rateLimited());
    const first = await rejected(router.chat(call('m')));
    assert.equal(first.attempts?.length, 3);
    assert.ok(
      router.health().every((row) => row.state === 'cooling_down'),
      JSON.stringify(router.health()),
    );
    const started = Date.now();
    const second = await rejected(router.chat(call('m')));
    assert.ok(Date.now() - started < 200, 'at once');
    assert.equal(second.code, 'no_provider_available');
    assert.deepEqual(second.attempts, []);
    assert.ok((second.retryAfterMs ?? 0) > 50_000);
  });

  it('a connection refused is no_provider_available for that deployment and the next one serves', async () => {
    const { router } = makeRouter({
      m: {
        deployments: [
          { provider: 'dead', physical_name: 'x', weight: 1_000_000 },
          { provider: 'gamma', physical_name: 'c', weight: 1 },
        ],
      },
    });
    const response = await router.chat(call('m'));
    assert.deepEqual(summary(response.attempts), ['dead:no_provider_available', 'gamma:ok']);
  });
});
