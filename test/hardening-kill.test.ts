/**
 * Issue 12, item 5: "answered ⇒ billed" under SIGKILL. A worker process is killed under load (30 %
 * streams); every request that got its reply (or its stream's terminal message) must have its usage
 * event in LLM_USAGE. The event is written right before the reply on the same connection, so a reply
 * that reached the server means its event did too.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '@nats-io/transport-node';
import { createInbox, type NatsConnection } from '@nats-io/nats-core';
import { startFakeOpenAI } from './fakes/index.js';
import { startNatsServer } from './helpers/nats-server.js';
import { startChildWorker, testConfig, waitForUsageEvents } from './helpers/worker.js';

type Outcome = 'answered' | 'unanswered';

/** A plain request: answered when any reply (an answer or a coded error) came back. */
async function plain(client: NatsConnection, requestId: string): Promise<Outcome> {
  const body = JSON.stringify({
    model: 'gpt-test',
    messages: [{ role: 'user', content: `hi ${requestId}` }],
    request_id: requestId,
  });
  try {
    const reply = await client.request('llm.proxy.request', body, { timeout: 3_000 });
    return reply.data.length > 0 ? 'answered' : 'unanswered';
  } catch {
    return 'unanswered';
  }
}

/** A raw stream: answered when its terminal message (`end`, `error`, or a plain error body) came back. */
function streamed(client: NatsConnection, requestId: string): Promise<Outcome> {
  const body = JSON.stringify({
    model: 'gpt-test',
    messages: [{ role: 'user', content: `hi ${requestId}` }],
    request_id: requestId,
    stream: true,
  });
  const inbox = createInbox();
  return new Promise((resolve) => {
    const subscription = client.subscribe(inbox, {
      callback: (_error, message) => {
        const mark = message.headers?.get('LLM-Stream');
        const terminal =
          mark === 'end' ||
          mark === 'error' ||
          (mark === '' && message.data.length > 0 && 'error' in (message.json() as object));
        const noResponders = message.data.length === 0 && message.headers?.code === 503;
        if (!terminal && !noResponders) return;
        clearTimeout(timer);
        subscription.unsubscribe();
        resolve(terminal ? 'answered' : 'unanswered');
      },
    });
    const timer = setTimeout(() => {
      subscription.unsubscribe();
      resolve('unanswered');
    }, 3_000);
    client.publish('llm.proxy.request', body, { reply: inbox });
  });
}

test('a SIGKILLed worker loses no event of a request it answered (load with 30 % streams)', {
  timeout: 120_000,
}, async () => {
  const nats = await startNatsServer();
  const openai = await startFakeOpenAI();
  openai.setDefault({ kind: 'ok', delayMs: 1, chunks: 4, chunkIntervalMs: 1 });
  const config = testConfig(
    { openai: openai.baseUrl },
    { cache: { enabled: false }, logging: { level: 'info', requests: 'none' } },
  );
  const worker = await startChildWorker({ natsUrl: nats.url, config });
  const client = await connect({ servers: nats.url });
  const outcomes = new Map<string, Outcome>();
  try {
    let next = 0;
    let stop = false;
    const caller = async (lane: number) => {
      while (!stop) {
        const requestId = `kill-${lane}-${next++}`;
        const outcome = await (next % 10 < 3 ? streamed(client, requestId) : plain(client, requestId));
        outcomes.set(requestId, outcome);
      }
    };
    const callers = Array.from({ length: 24 }, (_, lane) => caller(lane));
    // Load long enough to be in full swing, then the kill, mid-load.
    while (outcomes.size < 600) await new Promise((resolve) => setTimeout(resolve, 20));
    worker.signal('SIGKILL');
    await worker.exited;
    await new Promise((resolve) => setTimeout(resolve, 300));
    stop = true;
    await Promise.all(callers);

    const answered = [...outcomes].filter(([, outcome]) => outcome === 'answered').map(([requestId]) => requestId);
    assert.ok(answered.length >= 600, `${answered.length} answered before the kill`);
    // Everything the server received is stored by now; give JetStream a moment for the last writes.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const events = await waitForUsageEvents(client, 1, { timeoutMs: 10_000 });
    const billed = new Set(events.map((event) => event.request_id));
    const lost = answered.filter((requestId) => !billed.has(requestId));
    assert.deepEqual(lost, [], `${lost.length} of ${answered.length} answered requests have no usage event`);
    assert.equal(new Set(events.map((event) => event.event_id)).size, events.length, 'no event stored twice');
  } finally {
    await client.close();
    await worker.dispose();
    await openai.close();
    await nats.dispose();
  }
});
