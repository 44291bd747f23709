import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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
}

function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const socket = netConnect(port, '127.0.0.1');
      socket.once('data', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', () => {
        socket.destroy();
        if (Date.now() > deadline) reject(new Error(`nats-server did not listen on ${port}`));
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
  const port = options.port ?? (await freePort());
  const storeDir = mkdtempSync(join(tmpdir(), 'llm-proxy-nats-'));
  const configPath = join(storeDir, 'server.conf');
  const lines = [`listen: "127.0.0.1:${port}"`];
  if (options.jetstream ?? true) lines.push(`jetstream { store_dir: "${join(storeDir, 'js')}" }`);
  if (options.maxPayload !== undefined) lines.push(`max_payload: ${options.maxPayload}`);
  if (options.extraConfig !== undefined) lines.push(options.extraConfig);
  writeFileSync(configPath, lines.join('\n') + '\n');

  let child: ChildProcess;
  const launch = async () => {
    child = spawn('nats-server', ['-c', configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      if (stderr.length < 20_000) stderr += chunk.toString();
    });
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code) => reject(new Error(`nats-server exited (${code}): ${stderr.slice(-2000)}`))),
    );
    exited.catch(() => undefined);
    await Promise.race([waitForPort(port, 10_000), exited]);
  };
  await launch();

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
