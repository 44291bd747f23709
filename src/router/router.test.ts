import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resolveConfig } from '../config/load.js';
import type { ConfigInput } from '../config/schema.js';
import { ProxyError } from '../contract/errors.js';
import type { ChatRequest } from '../contract/request.js';
import type { Provider, ProviderCall, ProviderResponse, ProviderStreamEvent } from '../providers/types.js';
import { createRouter } from './index.js';
import type { RoutedCall } from './types.js';
import type { CancelSignal } from '../providers/transport/cancellation.js';

/*
 * Routing logic over small in-process providers (no HTTP here: test/router.test.ts
 * does the same over the real adapters and fake servers). Each provider plays a
 * script of steps, one per call, then repeats its default.
 */
type Step =
  | { kind: 'ok'; content?: string; delayMs?: number }
  | { kind: 'fail'; error: () => ProxyError }
  | { kind: 'hang' }
  /** Streams: yields `before` deltas, then throws `error`. */
  | { kind: 'stream-fail'; before: number; error: () => ProxyError; emptyFirst?: boolean };

function abortReason(signal: CancelSignal): unknown {
  return signal.reason instanceof ProxyError ? signal.reason : new ProxyError('cancelled', 'cancelled');
}

function waitOrAbort(ms: number, signal: CancelSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(abortReason(signal));
    const timer = ms === Infinity ? undefined : setTimeout(resolve, ms);
    signal.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        reject(abortReason(signal));
      },
      { once: true },
    );
  });
}

class ScriptedProvider implements Provider {
  readonly type = 'openai' as const;
  readonly calls: ProviderCall[] = [];
  private readonly script: Step[] = [];
  defaultStep: Step = { kind: 'ok' };

  constructor(readonly name: string) {}

  answers(...steps: Step[]): this {
    this.script.push(...steps);
    return this;
  }

  private next(call: ProviderCall): Step {
    this.calls.push(call);
    return this.script.shift() ?? this.defaultStep;
  }

  async chat(call: ProviderCall): Promise<ProviderResponse> {
    const step = this.next(call);
    if (step.kind === 'fail') throw step.error();
    if (step.kind === 'hang') await waitOrAbort(Infinity, call.signal);
    if (step.kind === 'ok' && step.delayMs !== undefined) await waitOrAbort(step.delayMs, call.signal);
    return {
      content: step.kind === 'ok' ? (step.content ?? `${this.name} says hi`) : '',
      finishReason: 'stop',
      usage: { promptTokens: 5, completionTokens: 3 },
      modelResolved: `${call.model}-resolved`,
    };
  }

  async *stream(call: ProviderCall): AsyncIterable<ProviderStreamEvent> {
    const step = this.next(call);
    yield { type: 'model', modelResolved: `${call.model}-resolved` };
    if (step.kind === 'fail') throw step.error();
    if (step.kind === 'hang') await waitOrAbort(Infinity, call.signal);
    if (step.kind === 'stream-fail') {
      if (step.emptyFirst === true) yield { type: 'delta', content: '' };
      for (let index = 0; index < step.before; index++) yield { type: 'delta', content: `${this.name}-${index} ` };
      throw step.error();
    }
    yield { type: 'delta', content: `${this.name} ` };
    yield { type: 'delta', content: 'streams' };
    yield { type: 'finish', finishReason: 'stop' };
    yield { type: 'usage', usage: { promptTokens: 5, completionTokens: 2 } };
  }
}

const serverError = (): ProxyError => new ProxyError('upstream_error', 'upstream 500', { upstreamStatus: 500 });
const badRequest = (): ProxyError => new ProxyError('invalid_request', 'upstream 400', { upstreamStatus: 400 });
const rateLimited = (retryAfterMs?: number) => (): ProxyError =>
  new ProxyError('rate_limited', 'upstream 429', {
    upstreamStatus: 429,
    ...(retryAfterMs === undefined ? {} : { retryAfterMs }),
  });
const contextTooLong = (): ProxyError =>
  new ProxyError('invalid_request', 'context length exceeded', { upstreamStatus: 400, contextLengthExceeded: true });

function setup(
  models: ConfigInput['models'],
  routing: ConfigInput['routing'] = {},
  providerNames = ['a', 'b', 'c', 'd'],
) {
  const providersConfig: ConfigInput['providers'] = {};
  const providers = new Map<string, ScriptedProvider>();
  for (const name of providerNames) {
    providersConfig[name] = { type: 'openai', base_url: `http://${name}.test/v1` };
    providers.set(name, new ScriptedProvider(name));
  }
  const config = resolveConfig({
    providers: providersConfig,
    models,
    routing: { retry: { base_backoff_ms: 1, max_backoff_ms: 5, jitter: 0 }, ...routing },
  });
  const router = createRouter({ config, providers });
  const provider = (name: string): ScriptedProvider => providers.get(name) as ScriptedProvider;
  return { router, provider };
}

function call(
  model: string,
  overrides: Partial<ChatRequest> = {},
  timeoutMs = 5_000,
  signal = new AbortController().signal,
): RoutedCall {
  return {
    request: { model, messages: [{ role: 'user', content: 'hi' }], ...overrides },
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

const twoDeployments = {
  m: {
    deployments: [
      { provider: 'a', physical_name: 'pa' },
      { provider: 'b', physical_name: 'pb' },
    ],
  },
};

describe('router: resolving', () => {
  it('answers model_not_found for an unknown model, with empty attempts', async () => {
    const { router } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    assert.equal(router.hasModel('m'), true);
    assert.equal(router.hasModel('nope'), false);
    const error = await rejected(router.chat(call('nope')));
    assert.equal(error.code, 'model_not_found');
    assert.deepEqual(error.attempts, []);
  });

  it('sends the physical name and returns target and a single attempt with tokens', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    const response = await router.chat(call('m'));
    assert.equal(provider('a').calls[0]?.model, 'pa');
    assert.deepEqual(response.target, { model: 'm', provider: 'a', physicalName: 'pa' });
    assert.equal(response.attempts.length, 1);
    assert.deepEqual(
      { ...response.attempts[0], latency_ms: 0 },
      {
        model: 'm',
        provider: 'a',
        model_resolved: 'pa-resolved',
        error_code: null,
        latency_ms: 0,
        prompt_tokens: 5,
        completion_tokens: 3,
      },
    );
  });

  it('lists models with deployments, weights, states and fallbacks', () => {
    const { router } = setup({
      m: {
        deployments: [
          { provider: 'a', physical_name: 'pa', weight: 3 },
          { provider: 'b', physical_name: 'pb' },
        ],
        fallbacks: ['n'],
        cost_per_1k_prompt: 0.5,
      },
      n: { provider: 'c', physical_name: 'pc' },
    });
    const [m] = router.listModels();
    assert.deepEqual(m, {
      name: 'm',
      provider: 'a',
      physical_name: 'pa',
      max_tokens: null,
      cost_per_1k_prompt: 0.5,
      cost_per_1k_completion: 0,
      deployments: [
        { provider: 'a', physical_name: 'pa', weight: 3, state: 'healthy' },
        { provider: 'b', physical_name: 'pb', weight: 1, state: 'healthy' },
      ],
      fallbacks: ['n'],
    });
  });
});

describe('router: retries', () => {
  it('retries a retryable failure on the other deployment, and records both attempts', async () => {
    const { router, provider } = setup({
      m: {
        deployments: [
          { provider: 'a', physical_name: 'pa', weight: 1_000_000 },
          { provider: 'b', physical_name: 'pb', weight: 1 },
        ],
      },
    });
    provider('a').answers({ kind: 'fail', error: serverError });
    const response = await router.chat(call('m'));
    assert.equal(response.content, 'b says hi');
    assert.deepEqual(
      response.attempts.map((attempt) => [attempt.provider, attempt.model_resolved, attempt.error_code]),
      [
        ['a', 'pa', 'upstream_error'],
        ['b', 'pb-resolved', null],
      ],
    );
  });

  it('a failing deployment is followed by the other one, never itself, while the other is untried', async () => {
    const { router, provider } = setup(twoDeployments);
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    for (let index = 0; index < 20; index++) {
      const response = await router.chat(call('m'));
      assert.equal(response.target.provider, 'b');
      assert.ok(response.attempts.length <= 2);
    }
  });

  it('retries the only deployment with backoff, up to retry.attempts tries', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa' } },
      { retry: { attempts: 3, base_backoff_ms: 1, max_backoff_ms: 2, jitter: 0 } },
    );
    provider('a').answers({ kind: 'fail', error: serverError }, { kind: 'fail', error: serverError });
    const response = await router.chat(call('m'));
    assert.equal(response.attempts.length, 3);
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    const error = await rejected(router.chat(call('m')));
    assert.equal(error.code, 'upstream_error');
    assert.equal(error.attempts?.length, 3);
  });

  it('never retries a non-retryable error, nor falls back for it', async () => {
    const { router, provider } = setup({
      ...twoDeployments,
      m: { ...twoDeployments.m, fallbacks: ['n'] },
      n: { provider: 'c', physical_name: 'pc' },
    });
    provider('a').defaultStep = { kind: 'fail', error: badRequest };
    provider('b').defaultStep = { kind: 'fail', error: badRequest };
    const error = await rejected(router.chat(call('m')));
    assert.equal(error.code, 'invalid_request');
    assert.equal(error.attempts?.length, 1);
    assert.equal(provider('c').calls.length, 0);
  });

  it('a deployment that refuses for its own reason (401) is not tried again, but another deployment or a fallback is', async () => {
    const unauthorized = (): ProxyError =>
      new ProxyError('upstream_error', 'a: Incorrect API key', { upstreamStatus: 401, retryable: false });
    const { router, provider } = setup(
      {
        m: {
          deployments: [
            { provider: 'a', physical_name: 'pa', weight: 1_000_000 },
            { provider: 'b', physical_name: 'pb', weight: 1 },
          ],
          fallbacks: ['n'],
        },
        n: { provider: 'c', physical_name: 'pc' },
      },
      { retry: { attempts: 5 } },
    );
    provider('a').defaultStep = { kind: 'fail', error: unauthorized };
    const response = await router.chat(call('m'));
    assert.deepEqual(
      response.attempts.map((attempt) => [attempt.provider, attempt.error_code]),
      [
        ['a', 'upstream_error'],
        ['b', null],
      ],
    );
    provider('b').defaultStep = { kind: 'fail', error: unauthorized };
    const fallback = await router.chat(call('m'));
    assert.equal(fallback.target.model, 'n');
    assert.equal(fallback.attempts.filter((attempt) => attempt.provider === 'a').length, 1);
    assert.ok((router.health()[0]?.recent_failures ?? 0) >= 1);
  });

  it('does not sleep past the deadline for a Retry-After: fails at once with the upstream error', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    provider('a').defaultStep = {
      kind: 'fail',
      error: () => new ProxyError('upstream_error', '503', { upstreamStatus: 503, retryAfterMs: 60_000 }),
    };
    const started = Date.now();
    const error = await rejected(router.chat(call('m', {}, 2_000)));
    assert.ok(Date.now() - started < 1_500, 'gave up without waiting');
    assert.equal(error.code, 'upstream_error');
    assert.equal(error.retryAfterMs, 60_000);
    assert.equal(error.attempts?.length, 1);
  });

  it('waits for a short Retry-After before retrying the same deployment', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    provider('a').answers({
      kind: 'fail',
      error: () => new ProxyError('upstream_error', '503', { upstreamStatus: 503, retryAfterMs: 300 }),
    });
    const started = Date.now();
    const response = await router.chat(call('m'));
    assert.ok(Date.now() - started >= 290, 'waited for the Retry-After');
    assert.equal(response.attempts.length, 2);
  });
});

describe('router: cooldown', () => {
  it('takes a deployment out after N failures, gives it no traffic, and brings it back after the duration', async () => {
    const { router, provider } = setup(twoDeployments, {
      cooldown: { failures: 2, window_ms: 10_000, duration_ms: 400 },
    });
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    while (router.health()[0]?.state === 'healthy') await router.chat(call('m'));
    const health = router.health();
    assert.equal(health[0]?.state, 'cooling_down');
    assert.ok(health[0]?.cooldown_until !== null);
    assert.equal(health[1]?.state, 'healthy');
    const callsBefore = provider('a').calls.length;
    for (let index = 0; index < 20; index++) assert.equal((await router.chat(call('m'))).attempts.length, 1);
    assert.equal(provider('a').calls.length, callsBefore, 'no traffic while cooling down');
    await new Promise((resolve) => setTimeout(resolve, 450));
    provider('a').defaultStep = { kind: 'ok' };
    assert.equal(router.health()[0]?.state, 'healthy');
    let servedByA = 0;
    for (let index = 0; index < 40; index++) if ((await router.chat(call('m'))).target.provider === 'a') servedByA++;
    assert.ok(servedByA > 5, `a serves again (${servedByA}/40)`);
  });

  it('a 429 takes the deployment out at once, for its Retry-After when longer than the duration', async () => {
    const { router, provider } = setup(twoDeployments, {
      cooldown: { failures: 5, window_ms: 10_000, duration_ms: 100 },
    });
    provider('a').defaultStep = { kind: 'fail', error: rateLimited(60_000) };
    while (provider('a').calls.length === 0) await router.chat(call('m'));
    const [a] = router.health();
    assert.equal(a?.state, 'cooling_down');
    const until = Date.parse(a?.cooldown_until as string);
    assert.ok(until - Date.now() > 55_000 && until - Date.now() <= 60_000);
  });

  it('answers no_provider_available at once when every deployment of the model and its fallbacks is cooling down', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] }, n: { provider: 'b', physical_name: 'pb' } },
      { cooldown: { failures: 1, window_ms: 10_000, duration_ms: 30_000 } },
    );
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    provider('b').defaultStep = { kind: 'fail', error: serverError };
    const first = await rejected(router.chat(call('m')));
    assert.equal(first.code, 'upstream_error');
    assert.deepEqual(
      first.attempts?.map((attempt) => attempt.provider),
      ['a', 'b'],
    );
    const started = Date.now();
    const second = await rejected(router.chat(call('m')));
    assert.ok(Date.now() - started < 100);
    assert.equal(second.code, 'no_provider_available');
    assert.deepEqual(second.attempts, []);
    assert.ok((second.retryAfterMs ?? 0) > 29_000);
    assert.match(second.message, /"m", "n"/);
  });

  it('a cancelled call or one cut by the request deadline does not count against the deployment', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa' } },
      { cooldown: { failures: 1, window_ms: 10_000, duration_ms: 30_000 } },
    );
    provider('a').answers({ kind: 'hang' }, { kind: 'hang' });
    assert.equal((await rejected(router.chat(call('m', { timeout_ms: 50 })))).code, 'upstream_timeout');
    const controller = new AbortController();
    const pending = router.chat(call('m', {}, 5_000, controller.signal));
    setTimeout(() => controller.abort(new ProxyError('cancelled', 'client went away')), 30);
    const cancelled = await rejected(pending);
    assert.equal(cancelled.code, 'cancelled');
    assert.equal(cancelled.message, 'client went away');
    assert.equal(router.health()[0]?.state, 'healthy');
    assert.equal(router.health()[0]?.recent_failures, 0);
  });
  it('a hang that uses up a deadline the request did not choose counts against the deployment', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa' } },
      { cooldown: { failures: 1, window_ms: 10_000, duration_ms: 30_000 } },
    );
    provider('a').answers({ kind: 'hang' });
    assert.equal((await rejected(router.chat(call('m', {}, 100)))).code, 'upstream_timeout');
    assert.equal(router.health()[0]?.state, 'cooling_down');
  });
});

describe('router: fallbacks', () => {
  it('follows the fallback chain in order, and stops at the first that answers', async () => {
    const { router, provider } = setup(
      {
        m: { provider: 'a', physical_name: 'pa', fallbacks: ['n', 'o', 'p'] },
        n: { provider: 'b', physical_name: 'pb' },
        o: { provider: 'c', physical_name: 'pc' },
        p: { provider: 'd', physical_name: 'pd' },
      },
      { retry: { attempts: 1 } },
    );
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    provider('b').defaultStep = { kind: 'fail', error: rateLimited() };
    const response = await router.chat(call('m'));
    assert.deepEqual(response.target, { model: 'o', provider: 'c', physicalName: 'pc' });
    assert.deepEqual(
      response.attempts.map((attempt) => [attempt.provider, attempt.error_code]),
      [
        ['a', 'upstream_error'],
        ['b', 'rate_limited'],
        ['c', null],
      ],
    );
    assert.equal(provider('d').calls.length, 0);
  });

  it('guards against fallback cycles', async () => {
    const { router, provider } = setup(
      {
        m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] },
        n: { provider: 'b', physical_name: 'pb', fallbacks: ['m'] },
      },
      { retry: { attempts: 1 } },
    );
    provider('a').defaultStep = { kind: 'fail', error: serverError };
    provider('b').defaultStep = { kind: 'fail', error: serverError };
    const error = await rejected(router.chat(call('m')));
    assert.equal(error.code, 'upstream_error');
    assert.deepEqual(
      error.attempts?.map((attempt) => attempt.provider),
      ['a', 'b'],
    );
  });

  it('goes to context_fallbacks (not the other deployments nor fallbacks) when the context is too long', async () => {
    const { router, provider } = setup({
      m: {
        deployments: [
          { provider: 'a', physical_name: 'pa' },
          { provider: 'b', physical_name: 'pb' },
        ],
        fallbacks: ['n'],
        context_fallbacks: ['big'],
      },
      n: { provider: 'c', physical_name: 'pc' },
      big: { provider: 'd', physical_name: 'pd-128k' },
    });
    provider('a').defaultStep = { kind: 'fail', error: contextTooLong };
    provider('b').defaultStep = { kind: 'fail', error: contextTooLong };
    const response = await router.chat(call('m'));
    assert.equal(response.target.model, 'big');
    assert.equal(response.attempts.length, 2);
    assert.equal(provider('c').calls.length, 0);
  });

  it('without context_fallbacks, the context error is final', async () => {
    const { router, provider } = setup({
      m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] },
      n: { provider: 'b', physical_name: 'pb' },
    });
    provider('a').defaultStep = { kind: 'fail', error: contextTooLong };
    const error = await rejected(router.chat(call('m')));
    assert.equal(error.contextLengthExceeded, true);
    assert.equal(provider('b').calls.length, 0);
  });
});

describe('router: deadlines', () => {
  it('the request deadline bounds all retries and fallbacks together', async () => {
    const { router, provider } = setup(
      {
        m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'], timeout_ms: 200 },
        n: { provider: 'b', physical_name: 'pb', timeout_ms: 200 },
      },
      { retry: { attempts: 5 } },
    );
    provider('a').defaultStep = { kind: 'hang' };
    provider('b').defaultStep = { kind: 'hang' };
    const started = Date.now();
    const error = await rejected(router.chat(call('m', { timeout_ms: 500 })));
    const elapsed = Date.now() - started;
    assert.equal(error.code, 'upstream_timeout');
    assert.ok(elapsed >= 450 && elapsed < 2_000, `took ${elapsed} ms`);
    assert.ok((error.attempts?.length ?? 0) >= 2);
    assert.match(error.message, /deadline/);
  });

  it('a deployment timeout ends the attempt and the retry goes elsewhere', async () => {
    const { router, provider } = setup({
      m: {
        deployments: [
          { provider: 'a', physical_name: 'pa', timeout_ms: 100, weight: 1_000 },
          { provider: 'b', physical_name: 'pb', weight: 1 },
        ],
      },
    });
    provider('a').answers({ kind: 'hang' });
    let response = await router.chat(call('m'));
    if (response.attempts.length === 1) response = await router.chat(call('m'));
    assert.deepEqual(
      response.attempts.map((attempt) => [attempt.provider, attempt.error_code]),
      [
        ['a', 'upstream_timeout'],
        ['b', null],
      ],
    );
  });

  it('uses deadlineAt from the call, and deadlineFor falls back to the longest of default and model timeouts', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa', timeout_ms: 300_000 } });
    assert.equal(router.deadlineFor({ model: 'm', messages: [] } as unknown as ChatRequest, 1_000), 301_000);
    assert.equal(
      router.deadlineFor({ model: 'm', messages: [], timeout_ms: 50 } as unknown as ChatRequest, 1_000),
      1_050,
    );
    provider('a').defaultStep = { kind: 'hang' };
    const error = await rejected(router.chat(call('m', {}, 100)));
    assert.equal(error.code, 'upstream_timeout');
  });

  it('passes the caller signal reason through', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    provider('a').defaultStep = { kind: 'hang' };
    const controller = new AbortController();
    const reason = new ProxyError('cancelled', 'worker shutting down');
    const pending = router.chat(call('m', {}, 5_000, controller.signal));
    setTimeout(() => controller.abort(reason), 20);
    const error = await rejected(pending);
    assert.equal(error, reason);
    assert.equal(error.attempts?.length, 1);
    assert.equal(router.health()[0]?.in_flight, 0);
  });
});

describe('router: streaming', () => {
  async function collect(events: AsyncIterable<ProviderStreamEvent>): Promise<string> {
    let text = '';
    for await (const event of events) if (event.type === 'delta') text += event.content ?? '';
    return text;
  }

  it('falls back before the first delta', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] }, n: { provider: 'b', physical_name: 'pb' } },
      { retry: { attempts: 1 } },
    );
    provider('a').answers({ kind: 'stream-fail', before: 0, error: serverError });
    const stream = await router.stream(call('m'));
    assert.equal(stream.target.model, 'n');
    assert.deepEqual(
      stream.attempts.map((attempt) => [attempt.provider, attempt.error_code]),
      [
        ['a', 'upstream_error'],
        ['b', null],
      ],
    );
    assert.equal(await collect(stream.events), 'b streams');
    assert.equal(stream.attempts[1]?.model_resolved, 'pb-resolved');
    assert.equal(stream.attempts[1]?.completion_tokens, 2);
    assert.equal(router.health()[1]?.in_flight, 0);
  });

  it('an empty delta (a role-only chunk) does not end the time for fallbacks', async () => {
    const { router, provider } = setup(
      { m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] }, n: { provider: 'b', physical_name: 'pb' } },
      { retry: { attempts: 1 } },
    );
    provider('a').answers({ kind: 'stream-fail', before: 0, emptyFirst: true, error: serverError });
    const stream = await router.stream(call('m'));
    assert.equal(stream.target.model, 'n');
    assert.equal(await collect(stream.events), 'b streams');
  });

  it('after the first delta a failure is thrown from the iterable, never a switch', async () => {
    const { router, provider } = setup({
      m: { provider: 'a', physical_name: 'pa', fallbacks: ['n'] },
      n: { provider: 'b', physical_name: 'pb' },
    });
    provider('a').answers({ kind: 'stream-fail', before: 2, error: serverError });
    const stream = await router.stream(call('m'));
    assert.equal(stream.target.provider, 'a');
    const seen: string[] = [];
    const error = await rejected(
      (async () => {
        for await (const event of stream.events) if (event.type === 'delta') seen.push(event.content ?? '');
      })(),
    );
    assert.deepEqual(seen, ['a-0 ', 'a-1 ']);
    assert.equal(error.code, 'upstream_error');
    assert.equal(error.attempts?.[0]?.error_code, 'upstream_error');
    assert.equal(provider('b').calls.length, 0);
    assert.equal(router.health()[0]?.in_flight, 0);
  });

  it('a consumer that stops early releases the deployment and aborts the upstream call', async () => {
    const { router, provider } = setup({ m: { provider: 'a', physical_name: 'pa' } });
    const stream = await router.stream(call('m'));
    assert.equal(router.health()[0]?.in_flight, 1);
    for await (const event of stream.events) if (event.type === 'delta') break;
    assert.equal(router.health()[0]?.in_flight, 0);
    assert.equal(provider('a').calls[0]?.signal.aborted, true);
  });
});
