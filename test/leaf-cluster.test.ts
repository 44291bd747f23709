/**
 * Issue 19 groundwork ("nodes at the edge join as NATS leaf nodes"): what a hub with JetStream and a
 * leaf without it do for llm-proxy, proved on the nats-server of this machine (2.9.10) with the
 * @nats-io 3.4.0 packages. Each test starts its own hub and leaf (test/helpers/leaf-cluster.ts) and
 * tears them down. Measured values are printed as test diagnostics.
 *
 * - A leaf client's JetStream publish, JetStream API requests and KV operations reach the hub's
 *   stream and buckets, as long as the leaf maps its JetStream API to the hub's domain
 *   (`default_js_domain`, as deploy/nats/leaf.conf does); without it the link carries the publish
 *   but denies the API and KV (503 at once), unless the client names the domain itself.
 * - Queue subscribers on the hub and on the leaf share the queue group, and each server serves its
 *   own clients with its own members first; the other side's members take over when it has none.
 * - A subject served only on the leaf is reachable from the hub, and a hub request gets no-responders
 *   at once (not a timeout) as soon as the leaf's subscriber, or the leaf itself, is gone.
 * - With the link cut, a leaf client's JetStream publish fails at once with no-responders (503);
 *   with the link partitioned silently it times out. After the link comes back a retry with the same
 *   `Nats-Msg-Id` is stored once, also when the first attempt was stored and only its ack was lost.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { NoRespondersError, TimeoutError, type NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { startLeafCluster, type LeafClusterHandle, type LeafClusterOptions } from './helpers/leaf-cluster.js';
import { AckInbox } from '../src/usage/ack-inbox.js';

const STREAM = 'LLM_USAGE';
const STREAM_SUBJECTS = ['llm.usage.>'];
const EVENT_SUBJECT = 'llm.usage.agent-sofia';
const BUCKET = 'LLM_LIMITS';
const HUB_CONF = fileURLToPath(new URL('../deploy/nats/hub.conf', import.meta.url));
const LEAF_CONF = fileURLToPath(new URL('../deploy/nats/leaf.conf', import.meta.url));

type Side = 'hub' | 'leaf';
type Open = (side: Side, name: string) => Promise<NatsConnection>;

/** Runs `body` with a fresh hub and leaf; closes every connection it opened and both servers, whatever happens. */
async function withLeafCluster(
  options: LeafClusterOptions,
  body: (cluster: LeafClusterHandle, open: Open) => Promise<void>,
): Promise<void> {
  const cluster = await startLeafCluster(options);
  const connections: NatsConnection[] = [];
  const open: Open = async (side, name) => {
    const connection = await connect({
      servers: side === 'hub' ? cluster.hubUrl : cluster.leafUrl,
      name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 100,
    });
    connections.push(connection);
    return connection;
  };
  try {
    await body(cluster, open);
  } finally {
    await Promise.allSettled(connections.map((connection) => connection.close()));
    await cluster.close();
  }
}

/** The error and its causes, outermost first: `JetStreamNotEnabled: … <- RequestError: … <- NoResponders: …`. */
function errorChain(error: unknown): string {
  const links: string[] = [];
  for (let current = error; current instanceof Error; current = current.cause) {
    links.push(`${current.name}: ${current.message}`);
  }
  return links.join(' <- ');
}

function causedByNoResponders(error: unknown): boolean {
  for (let current = error; current instanceof Error; current = current.cause) {
    if (current instanceof NoRespondersError) return true;
  }
  return false;
}

/** Rejection of `promise` (fails if it resolves) and how long it took. */
async function failure(promise: Promise<unknown>): Promise<{ error: unknown; ms: number }> {
  const started = performance.now();
  try {
    await promise;
  } catch (error) {
    return { error, ms: performance.now() - started };
  }
  assert.fail('expected a failure');
}

const ms = (value: number) => `${value.toFixed(1)} ms`;

test('deploy/nats/hub.conf and leaf.conf load in nats-server and agree on the JetStream domain', () => {
  for (const file of [HUB_CONF, LEAF_CONF]) {
    const result = spawnSync('nats-server', ['-t', '-c', file], { encoding: 'utf8' });
    assert.equal(result.status, 0, `${file}: ${result.stderr}${result.stdout}`);
  }
  const hub = readFileSync(HUB_CONF, 'utf8');
  const leaf = readFileSync(LEAF_CONF, 'utf8');
  const domain = /^jetstream\s*\{[^}]*\bdomain:\s*"?([A-Za-z0-9_-]+)"?/m.exec(hub)?.[1];
  assert.equal(domain, 'hub', 'the hub runs JetStream in a domain');
  assert.match(hub, /^leafnodes\s*\{\s*port:\s*7422\s*\}/m);
  assert.match(leaf, /^leafnodes\s*\{\s*remotes:\s*\[\s*\{\s*url:\s*"nats-leaf:\/\/[^"]+:7422"/m);
  assert.match(leaf, new RegExp(`^default_js_domain:\\s*\\{\\s*"\\$G":\\s*"?${domain}"?\\s*\\}`, 'm'));
  assert.doesNotMatch(leaf, /^jetstream/m, 'the leaf has no JetStream of its own');
});

test('without default_js_domain the link carries a JetStream publish but denies the JetStream API and KV (503 at once); a client naming the domain gets through', async (t) => {
  await withLeafCluster({ defaultJsDomain: false }, async (cluster, open) => {
    const hub = await open('hub', 'hub-admin');
    const leaf = await open('leaf', 'edge-worker');
    await (await jetstreamManager(hub)).streams.add({ name: STREAM, subjects: STREAM_SUBJECTS });
    await (await new Kvm(hub).create(BUCKET)).put('k', 'from-hub');

    // The event's subject and the ack's inbox are ordinary subjects: they cross.
    const ack = await jetstream(leaf, { timeout: 2_000 }).publish(EVENT_SUBJECT, 'event', { msgID: 'plain-1' });
    assert.equal(ack.stream, STREAM);
    assert.equal(ack.domain, cluster.domain);

    // $JS.API.> is denied across the link: nats.js sees no responders and calls it JetStreamNotEnabled.
    const api = await failure(jetstreamManager(leaf, { timeout: 2_000 }));
    assert.ok(causedByNoResponders(api.error), errorChain(api.error));
    assert.ok(api.ms < 500, ms(api.ms));
    // KV too: a get is a JetStream API request, a put a publish on $KV.<bucket>.<key>.
    const kv = await new Kvm(jetstream(leaf, { timeout: 2_000 })).open(BUCKET);
    const get = await failure(kv.get('k'));
    const put = await failure(kv.put('k', 'from-leaf'));
    for (const { error, ms: took } of [get, put]) {
      assert.ok(causedByNoResponders(error), errorChain(error));
      assert.ok(took < 500, ms(took));
    }

    // Naming the hub's domain ($JS.hub.API…, which the hub maps to its own API) works without the leaf's mapping.
    const inDomain = jetstream(leaf, { domain: cluster.domain, timeout: 2_000 });
    assert.equal(
      (await (await jetstreamManager(leaf, { domain: cluster.domain })).streams.info(STREAM)).state.messages,
      1,
    );
    const domainKv = await new Kvm(inDomain).open(BUCKET);
    assert.equal((await domainKv.get('k'))?.string(), 'from-hub');
    await domainKv.put('k', 'from-leaf');
    assert.equal((await (await new Kvm(hub).open(BUCKET)).get('k'))?.string(), 'from-leaf');

    t.diagnostic(`JetStream API from the leaf without the mapping: ${errorChain(api.error)} after ${ms(api.ms)}`);
    t.diagnostic(`KV get / put: ${errorChain(get.error)} after ${ms(get.ms)} / ${ms(put.ms)}`);
  });
});

test("a leaf client's JetStream publish, JetStream API and KV reach the hub (default_js_domain, as deploy/nats/leaf.conf)", async (t) => {
  await withLeafCluster({}, async (cluster, open) => {
    const hub = await open('hub', 'hub-aggregator');
    const leaf = await open('leaf', 'edge-worker');

    // What a worker does at start, from the leaf: create the stream and the bucket (on the hub).
    const leafManager = await jetstreamManager(leaf, { timeout: 2_000 });
    await leafManager.streams.add({ name: STREAM, subjects: STREAM_SUBJECTS });
    const leafKv = await new Kvm(jetstream(leaf, { timeout: 2_000 })).create(BUCKET, { history: 1 });
    const hubManager = await jetstreamManager(hub);
    assert.deepEqual((await hubManager.streams.info(STREAM)).config.subjects, STREAM_SUBJECTS);

    // A JetStream publish from the leaf: acked by the hub's stream (in the hub's domain).
    const ack = await jetstream(leaf, { timeout: 2_000 }).publish(EVENT_SUBJECT, '{"n":1}', { msgID: 'a-1' });
    assert.deepEqual(
      { stream: ack.stream, seq: ack.seq, duplicate: ack.duplicate, domain: ack.domain },
      {
        stream: STREAM,
        seq: 1,
        duplicate: false,
        domain: cluster.domain,
      },
    );
    // The worker's own publish path (AckInbox: publish with a reply and Nats-Msg-Id, the ack on one inbox).
    const acks = new AckInbox(leaf, 2_000);
    try {
      assert.deepEqual(await acks.publish(EVENT_SUBJECT, '{"n":2}', 'a-2'), {
        stream: STREAM,
        seq: 2,
        duplicate: false,
      });
      assert.equal((await acks.publish(EVENT_SUBJECT, '{"n":2}', 'a-2')).duplicate, true);
    } finally {
      acks.close();
    }
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 2);
    const stored = await hubManager.streams.getMessage(STREAM, { seq: 2 });
    assert.equal(stored?.string(), '{"n":2}');

    // KV: a put from the leaf is read on the hub, a put on the hub is read on the leaf; CAS works across.
    const revision = await leafKv.put('agent-sofia', '1');
    const hubKv = await new Kvm(hub).open(BUCKET);
    assert.equal((await hubKv.get('agent-sofia'))?.string(), '1');
    await hubKv.update('agent-sofia', '2', revision);
    assert.equal((await leafKv.get('agent-sofia'))?.string(), '2');
    await assert.rejects(leafKv.update('agent-sofia', '3', revision), 'a stale revision is refused from the leaf too');

    const started = performance.now();
    const rounds = 50;
    for (let index = 0; index < rounds; index += 1) await leafKv.get('agent-sofia');
    t.diagnostic(
      `KV get from the leaf (hub over the link, loopback): ${ms((performance.now() - started) / rounds)} each`,
    );
  });
});

test('queue subscribers in one group on the hub and on the leaf: each server serves its own clients with its own members first', async (t) => {
  await withLeafCluster({}, async (cluster, open) => {
    const subject = 'llm.proxy.request';
    const queue = 'llm-proxy';
    const hubWorker = await open('hub', 'hub-worker');
    const leafWorker = await open('leaf', 'edge-worker');
    const hubClient = await open('hub', 'hub-agent');
    const leafClient = await open('leaf', 'edge-agent');
    const serve = (connection: NatsConnection, name: Side) =>
      connection.subscribe(subject, {
        queue,
        callback: (_, message) => {
          message.respond(name);
        },
      });
    const tally = async (client: NatsConnection, requests: number) => {
      const counts = { hub: 0, leaf: 0 };
      for (let index = 0; index < requests; index += 1) {
        const reply = await client.request(subject, '', { timeout: 2_000 });
        counts[reply.string() as Side] += 1;
      }
      return counts;
    };

    const hubMember = serve(hubWorker, 'hub');
    let leafMember = serve(leafWorker, 'leaf');
    await Promise.all([hubWorker.flush(), leafWorker.flush()]);
    // Each side knows the other's member before counting (else locality would prove nothing).
    await cluster.waitForLinkInterest('hub', subject);
    await cluster.waitForLinkInterest('leaf', subject);

    const fromLeaf = await tally(leafClient, 50);
    const fromHub = await tally(hubClient, 50);
    assert.deepEqual(fromLeaf, { hub: 0, leaf: 50 }, 'requests of leaf clients stay on the leaf');
    assert.deepEqual(fromHub, { hub: 50, leaf: 0 }, 'requests of hub clients stay on the hub');

    // The leaf's member goes: its clients are served by the hub's, at once.
    leafMember.unsubscribe();
    await leafWorker.flush();
    assert.deepEqual(await tally(leafClient, 10), { hub: 10, leaf: 0 });
    const hubForgets = await cluster.waitForLinkInterest('hub', subject, false);

    // The hub's member goes (the leaf's is back): hub clients are served by the leaf.
    leafMember = serve(leafWorker, 'leaf');
    await leafWorker.flush();
    const hubLearns = await cluster.waitForLinkInterest('hub', subject);
    hubMember.unsubscribe();
    await hubWorker.flush();
    assert.deepEqual(await tally(hubClient, 10), { hub: 0, leaf: 10 });
    leafMember.unsubscribe();

    t.diagnostic(`leaf clients: ${JSON.stringify(fromLeaf)}; hub clients: ${JSON.stringify(fromHub)}`);
    t.diagnostic(
      `the hub saw the leaf's queue member leave within ${hubForgets} ms and come back within ${hubLearns} ms (monitoring poll)`,
    );
  });
});

/**
 * Hub requests (25 ms timeout each) until one fails with no responders; how long that took, that request's
 * own time, and how many timed out before (a request that crossed the link before the hub learned the
 * subscriber was gone is dropped on the leaf: the requester only sees its timeout).
 */
async function untilNoResponders(connection: NatsConnection, subject: string, timeoutMs = 5_000) {
  const started = performance.now();
  let timeouts = 0;
  let replies = 0;
  while (performance.now() - started < timeoutMs) {
    const sent = performance.now();
    try {
      await connection.request(subject, '', { timeout: 25 });
      replies += 1;
    } catch (error) {
      if (causedByNoResponders(error)) {
        const now = performance.now();
        return { afterMs: now - started, requestMs: now - sent, timeouts, replies };
      }
      if (!(error instanceof TimeoutError)) throw error;
      timeouts += 1;
    }
  }
  throw new Error(`no no-responders within ${timeoutMs} ms (${timeouts} timeouts, ${replies} replies)`);
}

test('a subject served only on the leaf is reachable from the hub; once its subscriber or the leaf is gone a hub request gets no responders at once', async (t) => {
  await withLeafCluster({}, async (cluster, open) => {
    const subject = 'edge.only.echo';
    const hubClient = await open('hub', 'hub-agent');
    const serve = async () => {
      const service = await open('leaf', 'edge-service');
      service.subscribe(subject, {
        callback: (_, message) => {
          message.respond('edge');
        },
      });
      await service.flush();
      await cluster.waitForLinkInterest('hub', subject);
      assert.equal((await hubClient.request(subject, '', { timeout: 2_000 })).string(), 'edge');
      return service;
    };

    // 1. The leaf's client disconnects.
    const first = await serve();
    await first.close();
    const clientGone = await untilNoResponders(hubClient, subject);

    // 2. The leaf stops (its client still subscribed, now reconnecting).
    const second = await serve();
    await cluster.stopLeaf();
    const leafGone = await untilNoResponders(hubClient, subject);

    for (const gone of [clientGone, leafGone]) {
      assert.ok(gone.afterMs < 1_000, `no responders ${ms(gone.afterMs)} after`);
      assert.ok(gone.requestMs < 500, `the failing request took ${ms(gone.requestMs)}`);
    }

    // 3. The leaf comes back: its client reconnects and resubscribes, and the hub reaches it again.
    const restartMs = await cluster.startLeaf();
    const reconnected = performance.now();
    await cluster.waitForLinkInterest('hub', subject);
    assert.equal((await hubClient.request(subject, '', { timeout: 2_000 })).string(), 'edge');
    assert.ok(!second.isClosed());

    t.diagnostic(
      `leaf client closed: no responders after ${ms(clientGone.afterMs)} (that request ${ms(clientGone.requestMs)}, ${clientGone.timeouts} timeouts before)`,
    );
    t.diagnostic(
      `leaf stopped: no responders after ${ms(leafGone.afterMs)} (that request ${ms(leafGone.requestMs)}, ${leafGone.timeouts} timeouts before)`,
    );
    t.diagnostic(
      `leaf restarted: link up ${restartMs} ms after launch, the service reachable from the hub ${ms(performance.now() - reconnected)} later`,
    );
  });
});

test("link cut: a leaf client's JetStream publish fails at once with no responders; after the link is back a retry with the same Nats-Msg-Id is stored once", async (t) => {
  await withLeafCluster({}, async (cluster, open) => {
    const hub = await open('hub', 'hub-aggregator');
    const leaf = await open('leaf', 'edge-worker');
    const hubManager = await jetstreamManager(hub);
    await hubManager.streams.add({ name: STREAM, subjects: STREAM_SUBJECTS });
    const js = jetstream(leaf, { timeout: 2_000 });

    await cluster.dropLink();
    const cut = await failure(js.publish(EVENT_SUBJECT, 'event', { msgID: 'cut-1' }));
    assert.equal((cut.error as Error).name, 'JetStreamNotEnabled', errorChain(cut.error));
    assert.ok(causedByNoResponders(cut.error), errorChain(cut.error));
    assert.ok(cut.ms < 500, ms(cut.ms));
    // The worker's publish path sees the same 503, and keeps the event for a retry (not a permanent refusal).
    const acks = new AckInbox(leaf, 2_000);
    const inbox = await failure(acks.publish(EVENT_SUBJECT, 'event', 'cut-1'));
    acks.close();
    assert.match(String(inbox.error), /503 no responders/);
    assert.ok(inbox.ms < 500, ms(inbox.ms));
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 0);

    const backMs = await cluster.restoreLink();
    const stored = await js.publish(EVENT_SUBJECT, 'event', { msgID: 'cut-1' });
    assert.deepEqual({ seq: stored.seq, duplicate: stored.duplicate }, { seq: 1, duplicate: false });
    const again = await js.publish(EVENT_SUBJECT, 'event', { msgID: 'cut-1' });
    assert.deepEqual({ seq: again.seq, duplicate: again.duplicate }, { seq: 1, duplicate: true });
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 1);

    t.diagnostic(`JetStream publish, link cut: ${errorChain(cut.error)} after ${ms(cut.ms)}`);
    t.diagnostic(`AckInbox publish, link cut: ${String(inbox.error)} after ${ms(inbox.ms)}`);
    t.diagnostic(`link carrying messages again ${backMs} ms after the proxy accepted again`);
  });
});

test("link partitioned silently: the leaf's JetStream publish times out, a hub request to a leaf-only subject times out (no 503); an ack lost on the way back is made good by the retry's Nats-Msg-Id", async (t) => {
  await withLeafCluster({}, async (cluster, open) => {
    const hub = await open('hub', 'hub-aggregator');
    const leaf = await open('leaf', 'edge-worker');
    const hubManager = await jetstreamManager(hub);
    await hubManager.streams.add({ name: STREAM, subjects: STREAM_SUBJECTS });
    const js = jetstream(leaf, { timeout: 1_000 });
    const subject = 'edge.only.echo';
    leaf.subscribe(subject, {
      callback: (_, message) => {
        message.respond('edge');
      },
    });
    await leaf.flush();
    await cluster.waitForLinkInterest('hub', subject);

    // Both ways lost: both servers still list the link (their pings have not failed yet).
    await cluster.dropLink('silent');
    const lost = await failure(js.publish(EVENT_SUBJECT, 'event', { msgID: 'silent-1' }));
    assert.ok(lost.error instanceof TimeoutError, errorChain(lost.error));
    const request = await failure(hub.request(subject, '', { timeout: 1_000 }));
    assert.ok(request.error instanceof TimeoutError, errorChain(request.error));
    assert.equal(await cluster.hubLeafCount(), 1, 'the hub still lists the leaf');
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 0);
    const backMs = await cluster.restoreLink();

    // Only the hub's side lost: the publish is stored, its ack never arrives.
    await cluster.dropLink('silent-to-leaf');
    const ackLost = await failure(js.publish(EVENT_SUBJECT, 'event', { msgID: 'silent-2' }));
    assert.ok(ackLost.error instanceof TimeoutError, errorChain(ackLost.error));
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 1, 'stored although unacknowledged');
    const backAgainMs = await cluster.restoreLink();
    const retry = await js.publish(EVENT_SUBJECT, 'event', { msgID: 'silent-2' });
    assert.deepEqual({ seq: retry.seq, duplicate: retry.duplicate }, { seq: 1, duplicate: true });
    const first = await js.publish(EVENT_SUBJECT, 'event', { msgID: 'silent-1' });
    assert.deepEqual({ seq: first.seq, duplicate: first.duplicate }, { seq: 2, duplicate: false });
    assert.equal((await hubManager.streams.info(STREAM)).state.messages, 2);

    t.diagnostic(`silent partition: JetStream publish ${errorChain(lost.error)} after ${ms(lost.ms)}`);
    t.diagnostic(
      `silent partition: hub request to the leaf-only subject ${errorChain(request.error)} after ${ms(request.ms)}`,
    );
    t.diagnostic(
      `ack lost: ${errorChain(ackLost.error)} after ${ms(ackLost.ms)}; the retry was acked as a duplicate of seq 1`,
    );
    t.diagnostic(`link carrying messages again ${backMs} ms and ${backAgainMs} ms after the restores`);
  });
});
