/**
 * The operations page in a real browser (Debian's chromium driven by playwright-core), over a real
 * nats-server, an in-process worker, an aggregator, `llm-proxy ui`'s server and the front door:
 * login with the secret, the numbers on the page equal what was sent (requests per model, tokens,
 * cost, errors, tail rows, the worker's id, an agent near its budget), the page follows new requests,
 * and nothing under /ui answers without the secret. Saves docs/ui.png for README.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { chromium, type Page } from 'playwright-core';
import { UsageAggregator } from '../src/aggregator/aggregator.js';
import { startUiServer } from '../src/cli/commands/ui.js';
import { createClient } from '../src/client/index.js';
import { aggregatorSchema } from '../src/config/aggregator-schema.js';
import { startFrontDoor } from '../src/http/front-door.js';
import { createLogger } from '../src/telemetry/logger.js';
import { SESSION_MS, UiSessions } from '../src/ui/ui-auth.js';
import { OTHER_MODEL, TAIL_SIZE, TrafficWindow } from '../src/ui/ui-window.js';
import { startFakeOpenAI } from './fakes/index.js';
import { startNatsServer } from './helpers/nats-server.js';
import { REPO_ROOT, startInProcessWorker, testConfig, waitForUsageEvents } from './helpers/worker.js';

const CHROMIUM = [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find(
  (path): path is string => path !== undefined && path !== '' && existsSync(path),
);
/** The page's document, in the callbacks of page.waitForFunction (they run in the browser; tsc has no DOM types here). */
interface PageNode {
  textContent: string | null;
}
declare const document: {
  querySelector(selector: string): PageNode | null;
  querySelectorAll(selector: string): Iterable<PageNode>;
};

const SECRET = 'ui-test-secret-7f3a9c2e51';
const silent = createLogger({ level: 'silent' });

/** Waits until the text of `selector` is `expected` (the page redraws every half second or so). */
async function waitForText(page: Page, selector: string, expected: string, timeoutMs = 15_000): Promise<void> {
  try {
    await page.waitForFunction(
      ([css, text]) => document.querySelector(css as string)?.textContent?.trim() === text,
      [selector, expected],
      { timeout: timeoutMs, polling: 100 },
    );
  } catch {
    const actual = await page
      .locator(selector)
      .first()
      .textContent({ timeout: 100 })
      .catch(() => null);
    assert.fail(`${selector}: expected "${expected}", the page shows ${JSON.stringify(actual)}`);
  }
}

const row = (panel: string, key: string) => `#${panel} tr[data-key="${key}"]`;

test('the operations page shows what was sent, follows new requests and needs the secret', {
  skip: CHROMIUM === undefined ? 'no chromium binary: apt-get install -y chromium (.ci/run does)' : false,
  timeout: 90_000,
}, async (t) => {
  // Stopped in the reverse order of their start.
  const cleanups: Array<() => Promise<unknown>> = [];
  t.after(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup().catch((error: unknown) => console.error(error));
  });
  const nats = await startNatsServer({ jetstream: true });
  cleanups.push(() => nats.dispose());
  const openai = await startFakeOpenAI();
  cleanups.push(() => openai.close());
  openai.setDefault({ kind: 'ok', content: 'fine', usage: { promptTokens: 100, completionTokens: 50 } });
  const config = testConfig(
    { openai: openai.baseUrl },
    {
      // gpt-test: $0.15 / $0.60 per 1k → 100 + 50 tokens cost $0.045; gpt-cheap: $0.002.
      models: {
        'gpt-cheap': {
          provider: 'openai',
          physical_name: 'gpt-4o',
          cost_per_1k_prompt: 0.01,
          cost_per_1k_completion: 0.02,
        },
      },
      limits: {
        enabled: true,
        backend: 'nats',
        default: { rpm: null },
        agents: { 'agent:alpha': { daily_usd: 0.15 } },
      },
    },
  );
  const worker = await startInProcessWorker({ natsUrl: nats.url, config, env: { LLM_PROXY_SECRET: SECRET } });
  cleanups.push(() => worker.stop());
  const aggregatorConnection = await connect({ servers: nats.url });
  const aggregator = await UsageAggregator.start({
    connection: aggregatorConnection,
    subjectPrefix: 'llm',
    usageStream: worker.config.nats.usage_stream,
    aggregator: aggregatorSchema.parse({ instance_id: 'ui-test' }),
    secret: SECRET,
  });
  cleanups.push(async () => {
    await aggregator.stop();
    await aggregatorConnection.close();
  });
  const ui = await startUiServer({
    config: worker.config,
    servers: nats.url,
    secret: SECRET,
    port: 0,
    logger: silent,
    intervals: { servicesMs: 400, spendMs: 500, limitsMs: 500, flushMs: 150 },
  });
  cleanups.push(() => ui.close());
  const frontDoor = await startFrontDoor({
    http: worker.config.http,
    connecting: connect({ servers: nats.url }),
    subjectPrefix: 'llm',
    secret: SECRET,
    logger: silent,
    port: 0,
    host: '127.0.0.1',
  });
  cleanups.push(() => frontDoor.close());
  const client = await createClient({ servers: nats.url, secret: SECRET });
  cleanups.push(() => client.close());

  const ask = (agent: string, microdao: string, model: string) =>
    client.chat({
      model,
      max_tokens: 50,
      messages: [{ role: 'user', content: 'hello' }],
      metadata: { agent_id: agent, microdao_id: microdao },
    });
  for (let index = 0; index < 3; index++) await ask('agent:alpha', 'microdao:7', 'gpt-test');
  for (let index = 0; index < 2; index++) await ask('agent:beta', 'microdao:9', 'gpt-cheap');
  openai.enqueue({ kind: 'status', status: 500, message: 'upstream broke' });
  await assert.rejects(ask('agent:beta', 'microdao:9', 'gpt-cheap'));
  const events = await waitForUsageEvents(client.connection, 6);
  assert.deepEqual(
    events.map((event) => [event.agent_id, event.model, event.status, event.total_tokens, event.cost_usd]),
    [
      ...Array(3).fill(['agent:alpha', 'gpt-test', 'ok', 150, 0.045]),
      ...Array(2).fill(['agent:beta', 'gpt-cheap', 'ok', 150, 0.002]),
      ['agent:beta', 'gpt-cheap', 'error', 0, 0],
    ],
    'the events the page should add up',
  );

  await t.test('without the secret, /ui and its events are refused', async () => {
    for (const base of [ui.url, frontDoor.url]) {
      const page = await fetch(`${base}/ui`);
      assert.equal(page.status, 401, `${base}/ui`);
      const body = await page.text();
      assert.match(body, /<form method="post" action="\/ui\/login">/);
      assert.ok(!body.includes(SECRET));
      assert.equal((await fetch(`${base}/ui/events`)).status, 401, `${base}/ui/events`);
      assert.equal((await fetch(`${base}/ui/assets/app.js`)).status, 401, `${base}/ui/assets/app.js`);
      const wrong = await fetch(`${base}/ui/login`, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: 'secret=guess',
        redirect: 'manual',
      });
      assert.equal(wrong.status, 401);
      assert.equal(wrong.headers.get('set-cookie'), null);
    }
  });

  await t.test("the front door's /ui: a session from the form, then the page and a snapshot", async () => {
    const login = await fetch(`${frontDoor.url}/ui/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ secret: SECRET }).toString(),
      redirect: 'manual',
    });
    assert.equal(login.status, 303);
    const cookie = login.headers.get('set-cookie') ?? '';
    assert.match(cookie, /^llmp_ui=v1\.\d+\.[\w-]{43}; Path=\/ui; HttpOnly; SameSite=Strict; Max-Age=43200$/);
    assert.ok(!cookie.includes(SECRET));
    const session = cookie.split(';')[0] as string;
    const page = await fetch(`${frontDoor.url}/ui`, { headers: { cookie: session } });
    assert.equal(page.status, 200);
    assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
    assert.ok(!(await page.text()).includes(SECRET));
    // Any process sharing the secret accepts the session.
    assert.equal((await fetch(`${ui.url}/ui`, { headers: { cookie: session } })).status, 200);
    const abort = new AbortController();
    const events = await fetch(`${frontDoor.url}/ui/events`, { headers: { cookie: session }, signal: abort.signal });
    assert.equal(events.status, 200);
    assert.match(events.headers.get('content-type') ?? '', /text\/event-stream/);
    // The front door's feed started with this page, after the requests: it read them back from the
    // stream (the last hour), so its figures already count them.
    const timer = setTimeout(() => abort.abort(), 15_000);
    const decoder = new TextDecoder();
    let text = '';
    let snapshot: { workers: Array<{ id: string }>; traffic: { models: Array<{ model: string; requests: number }> } };
    let tail: Array<{ agent_id: string }> = [];
    const ready = () =>
      snapshot?.workers.some((row) => row.id === worker.worker.id) &&
      snapshot.traffic.models.find((row) => row.model === 'gpt-test')?.requests === 3 &&
      tail.length === 6;
    try {
      for await (const chunk of events.body as AsyncIterable<Uint8Array>) {
        text += decoder.decode(chunk, { stream: true });
        for (let end = text.indexOf('\n\n'); end !== -1; end = text.indexOf('\n\n')) {
          const [name, data] = text
            .slice(0, end)
            .split('\n')
            .map((line) => line.replace(/^(event|data): /, ''));
          text = text.slice(end + 2);
          if (name === 'snapshot') snapshot = JSON.parse(data as string);
          if (name === 'events') {
            const message = JSON.parse(data as string);
            tail = message.reset ? message.events : tail.concat(message.events);
          }
        }
        if (ready()) break;
      }
    } catch {
      // Aborted: the assertions below say what was missing.
    } finally {
      clearTimeout(timer);
      abort.abort();
    }
    assert.ok(snapshot!, 'a snapshot');
    assert.ok(
      snapshot.workers.some((row) => row.id === worker.worker.id),
      'the worker, found through $SRV',
    );
    assert.deepEqual(
      snapshot.traffic.models.map((row) => [row.model, row.requests]).sort(),
      [
        ['gpt-cheap', 3],
        ['gpt-test', 3],
      ],
      'the last hour, read back from LLM_USAGE',
    );
    assert.equal(tail.length, 6, 'the tail, read back too');
  });

  await t.test('in chromium: the numbers, the updates, the tail filter', async () => {
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    cleanups.push(() => browser.close());
    const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
    const page = await context.newPage();
    const scriptErrors: string[] = [];
    page.on('pageerror', (error) => scriptErrors.push(error.message));
    page.on('console', (message) => {
      if (message.text().startsWith('panel failed')) scriptErrors.push(message.text());
    });
    const response = await page.goto(`${ui.url}/ui`);
    assert.equal(response?.status(), 401);
    await page.fill('#secret', SECRET);
    await Promise.all([page.waitForURL(`${ui.url}/ui`), page.click('button[type=submit]')]);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 15_000 });
    const [cookie] = await context.cookies();
    assert.equal(cookie?.name, 'llmp_ui');
    assert.equal(cookie?.httpOnly, true);
    assert.equal(cookie?.sameSite, 'Strict');
    assert.ok(!page.url().includes(SECRET));

    // Services: the worker by its id; the aggregator.
    await waitForText(page, `${row('workers', worker.worker.id)} td.id`, worker.worker.id);
    await waitForText(page, `${row('workers', worker.worker.id)} td.requests`, '6');
    await waitForText(page, `${row('workers', worker.worker.id)} td.errors`, '1');
    await page.waitForSelector('#aggregators tbody tr[data-key]');
    // Traffic of the last hour, per model, from the live events.
    await waitForText(page, `${row('traffic-table', 'gpt-test')} td.requests`, '3');
    await waitForText(page, `${row('traffic-table', 'gpt-test')} td.errors`, '0');
    await waitForText(page, `${row('traffic-table', 'gpt-cheap')} td.requests`, '3');
    await waitForText(page, `${row('traffic-table', 'gpt-cheap')} td.errors`, '1');
    await waitForText(page, `${row('traffic-table', 'gpt-cheap')} td.error-rate`, '33.3%');
    // Tokens and cost today, from the aggregators.
    await waitForText(page, '#spend-today .spend-models tr[data-key="gpt-test"] td.tokens', '450');
    await waitForText(page, '#spend-today tr[data-key="gpt-test"] td.cost', '$0.1350');
    await waitForText(page, '#spend-today tr[data-key="gpt-cheap"] td.tokens', '300');
    await waitForText(page, '#spend-today tr[data-key="gpt-cheap"] td.cost', '$0.004000');
    await waitForText(page, '#spend-today .spend-agents tr[data-key="agent:alpha"] td.cost', '$0.1350');
    await waitForText(page, '#spend-today .spend-microdaos tr[data-key="microdao:9"] td.requests', '3');
    await waitForText(page, '#spend-today .total-cost', '$0.1390');
    await waitForText(page, '#spend-month .total-requests', '6 requests');
    // Deployments, and agent:alpha at 90 % of its daily budget.
    await waitForText(page, '#deployments tr[data-key="gpt-test|openai|gpt-4o-mini"] td.state', 'healthy');
    await waitForText(
      page,
      '#limits tr[data-key="agent:alpha|agent agent:alpha|daily_usd"] td.used',
      '$0.1350 of $0.1500',
    );
    await waitForText(page, '#limits tr[data-key="agent:alpha|agent agent:alpha|daily_usd"] td.state', 'near');
    // The tail: six rows, the failure among them.
    assert.equal(await page.locator('#tail tbody tr[data-key]').count(), 6);
    assert.equal(await page.locator('#tail tbody tr[data-key] td.status', { hasText: 'error' }).count(), 1);

    // New requests: the page follows.
    for (let index = 0; index < 2; index++) await ask('agent:gamma', 'microdao:9', 'gpt-cheap');
    await waitForText(page, `${row('traffic-table', 'gpt-cheap')} td.requests`, '5');
    await waitForText(page, '#spend-today .total-requests', '8 requests');
    await waitForText(page, '#spend-today .spend-agents tr[data-key="agent:gamma"] td.cost', '$0.004000');
    await waitForText(page, `${row('workers', worker.worker.id)} td.requests`, '8');
    assert.equal(await page.locator('#tail tbody tr[data-key] td.agent', { hasText: 'agent:gamma' }).count(), 2);

    // README's picture: written when missing, refreshed with UI_SCREENSHOT=1 (not at every run: it is tracked).
    const screenshot = join(REPO_ROOT, 'docs/ui.png');
    if (process.env.UI_SCREENSHOT === '1' || !existsSync(screenshot)) {
      mkdirSync(join(REPO_ROOT, 'docs'), { recursive: true });
      await page.screenshot({ path: screenshot, fullPage: true });
    }

    // The tail's filter: only agent:alpha's three requests.
    await page.fill('#tail-filter input[name=agent]', 'agent:alpha');
    await page.waitForFunction(
      () => {
        const agents = [...document.querySelectorAll('#tail tbody tr[data-key] td.agent')].map(
          (cell) => cell.textContent,
        );
        return agents.length === 3 && agents.every((agent) => agent === 'agent:alpha');
      },
      undefined,
      { timeout: 10_000 },
    );
    assert.ok(!(await page.content()).includes(SECRET), 'the secret is nowhere in the page');
    assert.deepEqual(scriptErrors, [], "the page's scripts ran without an error");

    // Signing out ends the session: the form again.
    await Promise.all([page.waitForURL(`${ui.url}/ui`), page.click('form.logout button')]);
    await page.waitForSelector('form[action="/ui/login"]');
    assert.deepEqual(await context.cookies(), []);
  });
});

test('ui sessions: a cookie from another secret, tampered or expired is refused', () => {
  const sessions = new UiSessions(SECRET);
  const now = Date.now();
  const token = sessions.issue(now);
  assert.equal(sessions.valid(token, now), true);
  assert.equal(new UiSessions('another-secret').valid(token, now), false);
  assert.equal(sessions.valid(`${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`, now), false);
  const [version, expiry, signature] = token.split('.');
  assert.equal(sessions.valid(`${version}.${Number(expiry) + 1}.${signature}`, now), false, 'a longer life');
  assert.equal(sessions.valid(token, now + SESSION_MS + 1), false, 'expired');
  assert.equal(sessions.valid(undefined, now), false);
  assert.equal(new UiSessions(undefined).valid(undefined, now), true, 'no secret: open, as every route');
});

test('the traffic window stays bounded whatever model names clients invent', () => {
  const window = new TrafficWindow();
  const base = {
    v: 1 as const,
    ts: new Date().toISOString(),
    agent_id: 'agent:x',
    microdao_id: null,
    channel_id: null,
    provider: null,
    model_resolved: null,
    prompt_tokens: 0,
    completion_tokens: 0,
    total_tokens: 0,
    tokens_estimated: false,
    cost_usd: 0,
    latency_ms: 0,
    ttft_ms: null,
    stream: false,
    cached: false,
    attempts: 0,
    worker_id: 'w',
  };
  for (let index = 0; index < 500; index++) {
    window.add({
      ...base,
      request_id: `r-${index}`,
      model: `made-up-${index}`,
      status: 'rejected',
      error_code: 'model_not_found',
    });
  }
  window.add({ ...base, request_id: 'ok', model: 'gpt-test', status: 'ok', error_code: null, latency_ms: 120 });
  const { models } = window.traffic();
  assert.deepEqual(
    models.map((model) => [model.model, model.requests]),
    [
      [OTHER_MODEL, 500],
      ['gpt-test', 1],
    ],
  );
  assert.equal(models[1]?.p50_ms !== null && models[1]!.p50_ms >= 120 && models[1]!.p50_ms < 145, true);
  assert.equal(window.tail().length, TAIL_SIZE);
});
