/**
 * A real nats-server cluster with JetStream on loopback, for one suite.
 *
 * ```ts
 * const cluster = await startNatsCluster();          // 3 nodes, JetStream meta leader elected, R3 placement checked
 * const nc = await connect({ servers: cluster.urls });
 * const leader = await cluster.streamLeader(nc, 'LLM_USAGE');   // the node that leads the stream
 * await leader.kill();                                 // SIGKILL
 * await leader.restart();                              // same ports, same store directory
 * await cluster.dispose();                             // kill every node, remove the store directories
 * ```
 *
 * Each node has its own config file (`server_name`, `listen`, `cluster {name, listen, routes}`,
 * `jetstream {store_dir}`) and its own store directory under one temp directory. Ports come from
 * `freePort`; as in nats-server.ts, a node only counts as up when the server answering on its port
 * greets with its own `server_name` (another suite's server may have taken the port meanwhile), and a
 * start that fails that way is retried on fresh ports.
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstreamManager, StorageType, type StreamInfo } from '@nats-io/jetstream';
import { NatsServerProcess, sleep } from './child-processes.js';
import { freePort } from './ports.js';

export interface NatsClusterNode {
  /** `server_name` (what JetStream reports as a stream's `cluster.leader`). */
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly clusterPort: number;
  readonly storeDir: string;
  /** True while this node's process runs. */
  readonly running: boolean;
  /** The tail of the node's log (nats-server logs to stderr). */
  logs(): string;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** SIGTERM (lame duck is not used) and wait for exit. */
  stop(): Promise<void>;
  /** Start again on the same ports and store directory; resolves once it answers. */
  restart(): Promise<void>;
}

export interface NatsClusterHandle {
  readonly name: string;
  readonly nodes: NatsClusterNode[];
  /** Client URLs of every node, in node order. */
  readonly urls: string[];
  /** The node named `name` (a stream's `cluster.leader`). */
  node(name: string): NatsClusterNode;
  /** The node that leads `stream` now (asks through `connection`; retries while there is no leader, up to `timeoutMs`). */
  streamLeader(connection: NatsConnection, stream: string, timeoutMs?: number): Promise<NatsClusterNode>;
  /**
   * Resolves with the stream's info once it has a leader and `replicas` - 1 followers that are all
   * current and online (polls up to `timeoutMs`, default 30 s).
   */
  waitForStreamReplicas(
    connection: NatsConnection,
    stream: string,
    replicas: number,
    timeoutMs?: number,
  ): Promise<StreamInfo>;
  /** Kill every node and remove the store directories. */
  dispose(): Promise<void>;
}

export interface NatsClusterOptions {
  /** Nodes (default 3). */
  size?: number;
  /** Extra lines for every node's config file. */
  extraConfig?: string;
  /** How long to wait for the cluster to place a replicated stream (default 30 s). */
  readyTimeoutMs?: number;
}

class ClusterNode implements NatsClusterNode {
  readonly name: string;
  readonly storeDir: string;
  readonly #configPath: string;
  port = 0;
  clusterPort = 0;
  readonly #process: NatsServerProcess;

  constructor(root: string, name: string) {
    this.name = name;
    const dir = join(root, name);
    mkdirSync(dir, { recursive: true });
    this.storeDir = join(dir, 'js');
    this.#configPath = join(dir, 'server.conf');
    this.#process = new NatsServerProcess(name, this.#configPath);
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.#process.running;
  }

  logs(): string {
    return this.#process.logs();
  }

  writeConfig(clusterName: string, peers: ClusterNode[], extraConfig: string | undefined): void {
    const routes = peers
      .filter((peer) => peer !== this)
      .map((peer) => `    "nats-route://127.0.0.1:${peer.clusterPort}"`);
    const lines = [
      `server_name: "${this.name}"`,
      `listen: "127.0.0.1:${this.port}"`,
      'cluster {',
      `  name: "${clusterName}"`,
      `  listen: "127.0.0.1:${this.clusterPort}"`,
      '  routes: [',
      ...routes,
      '  ]',
      '}',
      `jetstream { store_dir: "${this.storeDir}", max_memory_store: 268435456, max_file_store: 2147483648 }`,
    ];
    if (extraConfig !== undefined) lines.push(extraConfig);
    writeFileSync(this.#configPath, `${lines.join('\n')}\n`);
  }

  launch(timeoutMs = 10_000): Promise<void> {
    return this.#process.launch(this.port, timeoutMs);
  }

  kill(): Promise<void> {
    return this.#process.stop('SIGKILL');
  }

  stop(): Promise<void> {
    return this.#process.stop('SIGTERM');
  }

  restart(): Promise<void> {
    return this.launch();
  }
}

/**
 * Polls until JetStream answers and can place a stream with `replicas`
 * replicas (the meta leader is elected and knows enough peers): creates a
 * small memory stream, waits for its leader, deletes it.
 */
async function waitForJetStream(connection: NatsConnection, replicas: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const probe = `CLUSTER_PROBE_${Date.now()}`;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const manager = await jetstreamManager(connection, { timeout: 2_000 });
      await manager.streams
        .add({ name: probe, subjects: [`cluster-probe.${probe}`], storage: StorageType.Memory, num_replicas: replicas })
        .catch(async (error: unknown) => {
          // A retry after a timed-out create may find it there already.
          await manager.streams.info(probe).catch(() => {
            throw error;
          });
        });
      const info = await manager.streams.info(probe);
      if (info.cluster?.leader !== undefined && (info.cluster.replicas ?? []).length === replicas - 1) {
        await manager.streams.delete(probe);
        return;
      }
    } catch (error) {
      lastError = error;
    }
    await sleep(100);
  }
  throw new Error(
    `JetStream did not become ready with ${replicas} replicas within ${timeoutMs} ms: ${String(lastError)}`,
  );
}

/** Starts a `size`-node cluster (default 3) with JetStream, on free loopback ports, and waits until it can place an R`size` stream. */
export async function startNatsCluster(options: NatsClusterOptions = {}): Promise<NatsClusterHandle> {
  const size = options.size ?? 3;
  const root = mkdtempSync(join(tmpdir(), 'llm-proxy-nats-cluster-'));
  // Unique per suite (the port guard checks the name): `lpc-<temp dir suffix>`, nodes `lpc-<suffix>-n1`…
  const clusterName = `lpc-${basename(root)
    .slice('llm-proxy-nats-cluster-'.length)
    .replace(/[^A-Za-z0-9]/g, '')}`;
  const nodes = Array.from({ length: size }, (_, index) => new ClusterNode(root, `${clusterName}-n${index + 1}`));

  // A free port can be taken before a node binds it (suites run side by side): then start over on fresh ports.
  for (let attempt = 1; ; attempt += 1) {
    const ports = new Set<number>();
    while (ports.size < size * 2) ports.add(await freePort());
    const list = [...ports];
    nodes.forEach((node, index) => {
      node.port = list[index * 2]!;
      node.clusterPort = list[index * 2 + 1]!;
    });
    for (const node of nodes) node.writeConfig(clusterName, nodes, options.extraConfig);
    try {
      await Promise.all(nodes.map((node) => node.launch()));
      break;
    } catch (error) {
      await Promise.all(nodes.map((node) => node.kill()));
      if (attempt >= 3) {
        rmSync(root, { recursive: true, force: true });
        throw error;
      }
    }
  }

  const handle: NatsClusterHandle = {
    name: clusterName,
    nodes,
    get urls() {
      return nodes.map((node) => node.url);
    },
    node(name: string) {
      const found = nodes.find((node) => node.name === name);
      if (found === undefined)
        throw new Error(
          `no node named ${name} in ${clusterName} (nodes: ${nodes.map((node) => node.name).join(', ')})`,
        );
      return found;
    },
    async streamLeader(connection, stream, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      let last: unknown;
      while (Date.now() < deadline) {
        try {
          const manager = await jetstreamManager(connection, { timeout: 2_000, checkAPI: false });
          const leader = (await manager.streams.info(stream)).cluster?.leader;
          if (leader !== undefined && leader !== '') return handle.node(leader);
          last = 'no leader';
        } catch (error) {
          last = error;
        }
        await sleep(50);
      }
      throw new Error(`stream ${stream} has no leader after ${timeoutMs} ms: ${String(last)}`);
    },
    async waitForStreamReplicas(connection, stream, replicas, timeoutMs = 30_000) {
      const deadline = Date.now() + timeoutMs;
      let last: unknown;
      while (Date.now() < deadline) {
        try {
          const manager = await jetstreamManager(connection, { timeout: 2_000, checkAPI: false });
          const info = await manager.streams.info(stream);
          const followers = info.cluster?.replicas ?? [];
          if (
            info.config.num_replicas === replicas &&
            info.cluster?.leader !== undefined &&
            followers.length === replicas - 1 &&
            followers.every((peer) => peer.current && !peer.offline)
          ) {
            return info;
          }
          last = JSON.stringify(info.cluster);
        } catch (error) {
          last = error;
        }
        await sleep(100);
      }
      throw new Error(`stream ${stream} not at ${replicas} current replicas after ${timeoutMs} ms: ${String(last)}`);
    },
    async dispose() {
      await Promise.all(nodes.map((node) => node.kill()));
      rmSync(root, { recursive: true, force: true });
    },
  };

  try {
    const connection = await connect({
      servers: handle.urls,
      name: 'nats-cluster-probe',
      reconnectTimeWait: 250,
      maxReconnectAttempts: -1,
    });
    try {
      await waitForJetStream(connection, size, options.readyTimeoutMs ?? 30_000);
    } finally {
      await connection.close();
    }
  } catch (error) {
    const logs = nodes.map((node) => `--- ${node.name}\n${node.logs().slice(-1500)}`).join('\n');
    await handle.dispose();
    throw new Error(`${(error as Error).message}\n${logs}`);
  }
  return handle;
}
