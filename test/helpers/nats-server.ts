import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join, relative, resolve } from 'node:path';
import { connect as netConnect } from 'node:net';
import { freePort } from './ports.js';

export interface NatsServerHandle {
  url: string;
  port: number;
  storeDir: string;
  /** Graceful stop (SIGTERM) and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
  /** Start again on the same port and store directory. */
  restart(): Promise<void>;
  /** Stop and remove the store directory. */
  dispose(): Promise<void>;
}

export interface NatsServerOptions {
  jetstream?: boolean;
  maxPayload?: number;
  port?: number;
  /** Extra lines for the server's config file. */
  extraConfig?: string;
  /**
   * A config file included first (e.g. deploy/nats/nats-server.conf): the helper's own lines come after
   * it and win (listen, server_name, store_dir), then extraConfig.
   */
  include?: string;
  /** Added to the server's environment (variables the config refers to, such as `$NATS_WORKER_PASSWORD`). */
  env?: Record<string, string>;
}

/**
 * Resolves when the server on `port` greets with its INFO and that INFO
 * carries `name`: a port handed out by freePort can be taken by another
 * suite's server in the meantime, and a test must fail rather than talk to it.
 */
export function waitForServer(port: number, name: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const socket = netConnect(port, '127.0.0.1');
      let greeting = '';
      socket.on('data', (chunk: Buffer) => {
        greeting += chunk.toString();
        if (!greeting.includes('\r\n')) return;
        socket.destroy();
        if (greeting.includes(`"server_name":"${name}"`)) resolve();
        else reject(new Error(`port ${port} is held by another nats-server (${greeting.slice(0, 200).trim()})`));
      });
      socket.once('error', () => {
        socket.destroy();
        if (Date.now() > deadline) reject(new Error(`nats-server ${name} did not listen on ${port}`));
        else setTimeout(attempt, 25);
      });
    };
    attempt();
  });
}

function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Starts a real `nats-server` on a free port, JetStream in a temp dir, for one suite. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServerHandle> {
  let port = options.port ?? (await freePort());
  const storeDir = mkdtempSync(join(tmpdir(), 'llm-proxy-nats-'));
  const configPath = join(storeDir, 'server.conf');
  const name = `llm-proxy-test-${basename(storeDir)}`;
  const writeServerConfig = () => {
    const lines = [`listen: "127.0.0.1:${port}"`, `server_name: "${name}"`];
    // nats-server resolves an include against the including file's directory, even an absolute path.
    if (options.include !== undefined) lines.unshift(`include "${relative(storeDir, resolve(options.include))}"`);
    if (options.jetstream ?? true) lines.push(`jetstream { store_dir: "${join(storeDir, 'js')}" }`);
    if (options.maxPayload !== undefined) lines.push(`max_payload: ${options.maxPayload}`);
    if (options.extraConfig !== undefined) lines.push(options.extraConfig);
    writeFileSync(configPath, `${lines.join('\n')}\n`);
  };

  let child: ChildProcess;
  const launch = async () => {
    child = spawn('nats-server', ['-c', configPath], {
      stdio: ['ignore', 'ignore', 'pipe'],
      ...(options.env !== undefined ? { env: { ...process.env, ...options.env } } : {}),
    });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      if (stderr.length < 20_000) stderr += chunk.toString();
    });
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code) => reject(new Error(`nats-server exited (${code}): ${stderr.slice(-2000)}`))),
    );
    exited.catch(() => undefined);
    try {
      await Promise.race([waitForServer(port, name, 10_000), exited]);
    } catch (error) {
      child.kill('SIGKILL');
      await waitForExit(child);
      throw error;
    }
  };
  // A free port can be taken before the server binds it (suites run side by side): then try another.
  for (let attempt = 1; ; attempt += 1) {
    writeServerConfig();
    try {
      await launch();
      break;
    } catch (error) {
      if (options.port !== undefined || attempt >= 3) {
        rmSync(storeDir, { recursive: true, force: true });
        throw error;
      }
      port = await freePort();
    }
  }

  const handle: NatsServerHandle = {
    url: `nats://127.0.0.1:${port}`,
    port,
    storeDir,
    async stop() {
      child.kill('SIGTERM');
      await waitForExit(child);
    },
    async kill() {
      child.kill('SIGKILL');
      await waitForExit(child);
    },
    async restart() {
      await launch();
    },
    async dispose() {
      child.kill('SIGKILL');
      await waitForExit(child);
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
  return handle;
}
