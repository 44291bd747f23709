/**
 * A hub nats-server with JetStream and a leaf nats-server without it, on loopback, for one test
 * (issue 19: nodes at the edge join as NATS leaf nodes).
 *
 * ```ts
 * const cluster = await startLeafCluster();           // both up, the leaf link up and carrying interest
 * const edge = await connect({ servers: cluster.leafUrl });
 * await cluster.dropLink();                            // the link is cut (sockets reset); both servers keep running
 * const ms = await cluster.restoreLink();              // accepted again; resolves when the link carries messages again
 * await cluster.stopLeaf(); await cluster.startLeaf(); // the leaf restarted on the same ports
 * await cluster.close();                               // kill both, close the proxy, remove the temp dir
 * ```
 *
 * The leaf does not dial the hub's leafnode port itself but a small TCP proxy in this process, which
 * forwards to it: that is how the link can be cut and restored while both servers run. `dropLink()`
 * cuts it the way a crashed peer or a refused connection would (sockets reset, new ones refused:
 * both servers notice at once), `dropLink('silent')` the way a network partition would (sockets stay
 * open, bytes vanish both ways: the servers notice only when their pings go unanswered), and
 * `dropLink('silent-to-leaf')` loses only what the hub sends (a publish reaches the hub, its ack
 * never comes back). `restoreLink()` resets whatever the proxy still holds and accepts again; the
 * leaf redials on its own (`leafnodes.reconnect`, 1 s by default).
 *
 * Configs mirror deploy/nats/hub.conf and leaf.conf: the hub runs JetStream in a domain (`hub`
 * unless told), the leaf has no JetStream and maps the JetStream API of its global account to the
 * hub's domain (`default_js_domain`), so that clients of the leaf use `$JS.API`, `$KV`, `$OBJ` as
 * usual. Without that mapping nats-server (2.9) denies `$JS.API.>`, `$KV.>` and `$OBJ.>` across
 * the link (`defaultJsDomain: false` shows it). Ports come from `freePort`; a server counts as up
 * only when its client port greets with its own `server_name`, and a start that loses a port race
 * is retried on fresh ports (as in nats-server.ts).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { NatsServerProcess, sleep } from './child-processes.js';
import { freePort } from './ports.js';

/** How `dropLink` breaks the link. */
export type LinkCut = 'reset' | 'silent' | 'silent-to-leaf';

export interface LeafClusterOptions {
  /** The hub's JetStream domain (default `hub`). */
  domain?: string;
  /** Map the leaf's `$JS.API`, `$KV`, `$OBJ` to the hub's domain (`default_js_domain`; default true). */
  defaultJsDomain?: boolean;
  /** Extra lines for the hub's config file. */
  hubConfig?: string;
  /** Extra lines for the leaf's config file. */
  leafConfig?: string;
  /** How long start, startLeaf and restoreLink wait for the link (default 15 s). */
  linkTimeoutMs?: number;
}

export interface LeafClusterHandle {
  /** Client URL of the hub. */
  readonly hubUrl: string;
  /** Client URL of the leaf. */
  readonly leafUrl: string;
  /** The hub's JetStream domain. */
  readonly domain: string;
  readonly hubName: string;
  readonly leafName: string;
  /** The hub's leafnode port (what the proxy forwards to). */
  readonly hubLeafnodePort: number;
  /** The port the leaf dials: the proxy's. */
  readonly proxyPort: number;
  /** The hub's monitoring port (`/leafz`, `/varz`…). */
  readonly hubMonitorPort: number;
  /** The leaf's monitoring port. */
  readonly leafMonitorPort: number;
  /** True while the leaf's process runs. */
  readonly leafRunning: boolean;
  /** The tail of each server's log (nats-server logs to stderr). */
  hubLogs(): string;
  leafLogs(): string;
  /** Leaf connections the hub reports now (its `/leafz`). */
  hubLeafCount(): Promise<number>;
  /**
   * Subjects the server `at` has interest in from across the link (its `/leafz?subs=1`): on the hub,
   * the leaf's subscriptions; on the leaf, the hub's. Queue subscriptions are listed by subject only.
   */
  linkInterest(at: 'hub' | 'leaf'): Promise<string[]>;
  /** Resolves when `linkInterest(at)` has `subject` (or, with `present` false, no longer has it); returns the ms waited. */
  waitForLinkInterest(at: 'hub' | 'leaf', subject: string, present?: boolean, timeoutMs?: number): Promise<number>;
  /** Resolves once the link is up and carries a request from the leaf to the hub and its reply back; returns the ms waited. */
  waitForLink(timeoutMs?: number): Promise<number>;
  /** SIGTERM the leaf and wait for it to exit (the hub sees the link close at once). */
  stopLeaf(): Promise<void>;
  /** Start the leaf again on the same ports; resolves when the link is up (returns the ms that took). */
  startLeaf(): Promise<number>;
  /** Break the link while both servers run (see LinkCut). `reset` resolves once neither server lists the link. */
  dropLink(cut?: LinkCut): Promise<void>;
  /** Let the leaf connect again; resolves when the link carries messages, with the ms that took. */
  restoreLink(): Promise<number>;
  /** Kill both servers, close the proxy, remove the temp dir. */
  close(): Promise<void>;
}

/** A TCP forwarder from `listenPort` to `targetPort` that can reset, black-hole or refuse what it carries. */
class LinkProxy {
  readonly #server: Server;
  readonly #pairs = new Set<{ leaf: Socket; hub: Socket }>();
  #mode: 'open' | LinkCut = 'open';

  constructor(
    readonly listenPort: number,
    readonly targetPort: number,
  ) {
    this.#server = createServer((leaf) => this.#accept(leaf));
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen(this.listenPort, '127.0.0.1', () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
  }

  #accept(leaf: Socket): void {
    leaf.on('error', () => undefined);
    // While the link is down the leaf's redials are refused: accepted, then reset at once.
    if (this.#mode !== 'open') {
      leaf.resetAndDestroy();
      return;
    }
    const hub = netConnect(this.targetPort, '127.0.0.1');
    hub.on('error', () => undefined);
    const pair = { leaf, hub };
    this.#pairs.add(pair);
    leaf.setNoDelay(true);
    hub.setNoDelay(true);
    leaf.on('data', (chunk: Buffer) => {
      if (this.#mode === 'open' || this.#mode === 'silent-to-leaf') hub.write(chunk);
    });
    hub.on('data', (chunk: Buffer) => {
      if (this.#mode === 'open') leaf.write(chunk);
    });
    const end = () => {
      this.#pairs.delete(pair);
      if (!leaf.destroyed) leaf.destroy();
      if (!hub.destroyed) hub.destroy();
    };
    leaf.once('close', end);
    hub.once('close', end);
  }

  /** Sockets carried now (one while the link is up). */
  get connections(): number {
    return this.#pairs.size;
  }

  cut(mode: LinkCut): void {
    this.#mode = mode;
    if (mode === 'reset') this.#resetAll();
  }

  restore(): void {
    // A black-holed link has lost bytes in the middle of the protocol: it cannot resume, only be redialed.
    this.#resetAll();
    this.#mode = 'open';
  }

  #resetAll(): void {
    for (const { leaf, hub } of this.#pairs) {
      leaf.resetAndDestroy();
      hub.resetAndDestroy();
    }
    this.#pairs.clear();
  }

  close(): Promise<void> {
    this.#resetAll();
    return new Promise((resolve) => this.#server.close(() => resolve()));
  }
}

async function monitor(port: number, path: string): Promise<Record<string, unknown>> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2_000) });
  if (!response.ok) throw new Error(`GET ${path} on ${port}: ${response.status}`);
  return (await response.json()) as Record<string, unknown>;
}

async function leafInterest(port: number): Promise<string[]> {
  const leafz = (await monitor(port, '/leafz?subs=1')) as { leafs?: Array<{ subscriptions_list?: string[] }> };
  return (leafz.leafs ?? []).flatMap((leaf) => leaf.subscriptions_list ?? []);
}

async function leafCount(port: number): Promise<number> {
  const leafz = await monitor(port, '/leafz');
  return typeof leafz.leafnodes === 'number' ? leafz.leafnodes : 0;
}

/** Starts a hub (JetStream, leafnode listener) and a leaf connected to it through the proxy; resolves when the link is up. */
export async function startLeafCluster(options: LeafClusterOptions = {}): Promise<LeafClusterHandle> {
  const domain = options.domain ?? 'hub';
  const linkTimeoutMs = options.linkTimeoutMs ?? 15_000;
  const root = mkdtempSync(join(tmpdir(), 'llm-proxy-leaf-'));
  // Unique per test: the port guard checks the name.
  const suffix = basename(root)
    .slice('llm-proxy-leaf-'.length)
    .replace(/[^A-Za-z0-9]/g, '');
  const hub = new NatsServerProcess(`lpl-${suffix}-hub`, join(root, 'hub.conf'));
  const leaf = new NatsServerProcess(`lpl-${suffix}-leaf`, join(root, 'leaf.conf'));
  const ports = { hub: 0, hubLeafnode: 0, hubMonitor: 0, leaf: 0, leafMonitor: 0, proxy: 0 };
  let proxy: LinkProxy | undefined;

  const writeConfigs = () => {
    writeFileSync(
      hub.configPath,
      [
        `server_name: "${hub.name}"`,
        `listen: "127.0.0.1:${ports.hub}"`,
        `http: "127.0.0.1:${ports.hubMonitor}"`,
        `jetstream { store_dir: "${join(root, 'hub-js')}", domain: "${domain}" }`,
        // The hub tells a leaf its leafnode address (INFO leafnode_urls, even with no_advertise on 2.9.10) and the
        // leaf redials the addresses it learned in turn: advertise the proxy, or the leaf's next redial goes around it.
        `leafnodes { listen: "127.0.0.1:${ports.hubLeafnode}", advertise: "127.0.0.1:${ports.proxy}" }`,
        options.hubConfig ?? '',
        '',
      ].join('\n'),
    );
    writeFileSync(
      leaf.configPath,
      [
        `server_name: "${leaf.name}"`,
        `listen: "127.0.0.1:${ports.leaf}"`,
        `http: "127.0.0.1:${ports.leafMonitor}"`,
        `leafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:${ports.proxy}" } ] }`,
        (options.defaultJsDomain ?? true) ? `default_js_domain: { "$G": "${domain}" }` : '',
        options.leafConfig ?? '',
        '',
      ].join('\n'),
    );
  };

  const hubLeafCount = () => leafCount(ports.hubMonitor);
  const linkInterest = (at: 'hub' | 'leaf') => leafInterest(at === 'hub' ? ports.hubMonitor : ports.leafMonitor);

  /** Up when the hub lists the leaf and a request from the leaf reaches the hub and is answered. */
  const waitForLink = async (timeoutMs = linkTimeoutMs): Promise<number> => {
    const started = Date.now();
    const deadline = started + timeoutMs;
    let last: unknown = 'the hub lists no leaf connection';
    while (Date.now() < deadline) {
      try {
        if ((await hubLeafCount()) > 0) break;
      } catch (error) {
        last = error;
      }
      await sleep(10);
    }
    // The hub's interest reaches the leaf right after the connect: wait until it carries a request.
    const probe = `leaf-cluster-probe.${suffix}`;
    const hubConnection = await connect({ servers: `nats://127.0.0.1:${ports.hub}`, name: 'leaf-cluster-probe' });
    const leafConnection = await connect({ servers: `nats://127.0.0.1:${ports.leaf}`, name: 'leaf-cluster-probe' });
    try {
      hubConnection.subscribe(probe, {
        callback: (_, message) => {
          message.respond('pong');
        },
      });
      await hubConnection.flush();
      while (Date.now() < deadline) {
        try {
          await leafConnection.request(probe, '', { timeout: 250 });
          // The link must run through the proxy, or dropLink would cut nothing.
          if (proxy === undefined || proxy.connections === 0)
            throw new Error('the leaf reached the hub around the proxy');
          return Date.now() - started;
        } catch (error) {
          last = error;
        }
        await sleep(10);
      }
    } finally {
      await Promise.all([hubConnection.close(), leafConnection.close()]);
    }
    throw new Error(
      `the leaf link did not come up within ${timeoutMs} ms: ${String(last)}\n--- hub\n${hub.logs().slice(-1500)}\n--- leaf\n${leaf.logs().slice(-1500)}`,
    );
  };

  // A free port can be taken before a server binds it (suites run side by side): then start over on fresh ports.
  for (let attempt = 1; ; attempt += 1) {
    const taken = new Set<number>();
    while (taken.size < 6) taken.add(await freePort());
    const list = [...taken];
    for (const [index, key] of (Object.keys(ports) as Array<keyof typeof ports>).entries()) ports[key] = list[index]!;
    writeConfigs();
    try {
      proxy = new LinkProxy(ports.proxy, ports.hubLeafnode);
      await proxy.listen();
      await hub.launch(ports.hub);
      await leaf.launch(ports.leaf);
      // The monitoring ports were free a moment ago: check that they are ours.
      for (const [port, name] of [
        [ports.hubMonitor, hub.name],
        [ports.leafMonitor, leaf.name],
      ] as const) {
        const varz = await monitor(port, '/varz');
        if (varz.server_name !== name)
          throw new Error(`monitoring port ${port} belongs to ${String(varz.server_name)}`);
      }
      break;
    } catch (error) {
      await Promise.all([hub.stop('SIGKILL'), leaf.stop('SIGKILL'), proxy?.close()]);
      if (attempt >= 3) {
        rmSync(root, { recursive: true, force: true });
        throw error;
      }
    }
  }
  const linkProxy = proxy!;

  const handle: LeafClusterHandle = {
    hubUrl: `nats://127.0.0.1:${ports.hub}`,
    leafUrl: `nats://127.0.0.1:${ports.leaf}`,
    domain,
    hubName: hub.name,
    leafName: leaf.name,
    hubLeafnodePort: ports.hubLeafnode,
    proxyPort: ports.proxy,
    hubMonitorPort: ports.hubMonitor,
    leafMonitorPort: ports.leafMonitor,
    get leafRunning() {
      return leaf.running;
    },
    hubLogs: () => hub.logs(),
    leafLogs: () => leaf.logs(),
    hubLeafCount,
    linkInterest,
    async waitForLinkInterest(at, subject, present = true, timeoutMs = linkTimeoutMs) {
      const started = Date.now();
      while (Date.now() - started < timeoutMs) {
        if ((await linkInterest(at)).includes(subject) === present) return Date.now() - started;
        await sleep(5);
      }
      throw new Error(`the ${at} ${present ? 'never saw' : 'still sees'} interest in ${subject} across the link`);
    },
    waitForLink,
    async stopLeaf() {
      await leaf.stop('SIGTERM');
    },
    async startLeaf() {
      const started = Date.now();
      await leaf.launch(ports.leaf);
      await waitForLink();
      return Date.now() - started;
    },
    async dropLink(cut: LinkCut = 'reset') {
      linkProxy.cut(cut);
      if (cut !== 'reset') return;
      const deadline = Date.now() + linkTimeoutMs;
      while (Date.now() < deadline) {
        const [onHub, onLeaf] = await Promise.all([hubLeafCount(), leaf.running ? leafCount(ports.leafMonitor) : 0]);
        if (onHub === 0 && onLeaf === 0) return;
        await sleep(10);
      }
      throw new Error(`the leaf link was cut but a server still lists it after ${linkTimeoutMs} ms`);
    },
    async restoreLink() {
      const started = Date.now();
      linkProxy.restore();
      await waitForLink();
      return Date.now() - started;
    },
    async close() {
      await Promise.all([hub.stop('SIGKILL'), leaf.stop('SIGKILL'), linkProxy.close()]);
      rmSync(root, { recursive: true, force: true });
    },
  };

  try {
    await waitForLink();
  } catch (error) {
    await handle.close();
    throw error;
  }
  return handle;
}
