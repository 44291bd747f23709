import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdirSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { delimiter, join, resolve } from 'node:path';

/** Printed when `llm-proxy dev` needs a NATS server and none is installed. */
export const NATS_INSTALL_HELP = `llm-proxy needs a NATS server with JetStream, and none answers at the NATS URL.
Install nats-server, then run this command again (it starts one for you):
  Debian/Ubuntu:  sudo apt-get install -y nats-server
  macOS:          brew install nats-server
  Go:             go install github.com/nats-io/nats-server/v2@latest
  Binaries:       the release page of the nats-io/nats-server repository on GitHub
Or point NATS_URL at a running server (JetStream enabled), e.g. NATS_URL=nats://127.0.0.1:4222.`;

/** True when something at host:port speaks the NATS protocol (sends `INFO` first). */
export function isNatsReachable(url: string, timeoutMs = 1_000): Promise<boolean> {
  const parsed = new URL(url.includes('://') ? url : `nats://${url}`);
  const port = Number(parsed.port || 4222);
  return new Promise((resolvePromise) => {
    const socket = netConnect(port, parsed.hostname);
    const done = (result: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolvePromise(result);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    socket.once('data', (data: Buffer) => done(data.toString().startsWith('INFO')));
    socket.once('error', () => done(false));
  });
}

/** The full path of an executable on PATH, or undefined. */
export function findOnPath(name: string, path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter)) {
    if (dir === '') continue;
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

export interface DevNatsServer {
  url: string;
  pid: number;
  storeDir: string;
  stop(): Promise<void>;
}

/**
 * Starts `nats-server -js` as a child process on the URL's host and port,
 * JetStream store under `storeDir` (default `.llm-proxy/nats`), and waits
 * until it answers. For development only: production runs its own server.
 */
export async function startDevNatsServer(options: {
  url: string;
  executable: string;
  storeDir?: string;
  timeoutMs?: number;
}): Promise<DevNatsServer> {
  const parsed = new URL(options.url.includes('://') ? options.url : `nats://${options.url}`);
  const port = parsed.port || '4222';
  const host = parsed.hostname === 'localhost' ? '127.0.0.1' : parsed.hostname;
  const storeDir = resolve(options.storeDir ?? join('.llm-proxy', 'nats'));
  mkdirSync(storeDir, { recursive: true });
  // Its own process group: Ctrl-C in the terminal must reach the worker (which drains, using NATS)
  // and not kill the server under it; we stop the server ourselves afterwards.
  const child: ChildProcess = spawn(options.executable, ['-js', '-a', host, '-p', port, '-sd', storeDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
    detached: true,
  });
  const killOnExit = () => child.kill('SIGTERM');
  process.once('exit', killOnExit);
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (stderr.length < 20_000) stderr += chunk.toString();
  });
  const exited = new Promise<void>((resolveExit) => child.once('exit', () => resolveExit()));
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const url = `nats://${host}:${port}`;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`nats-server exited at start: ${stderr.trim().slice(-1_000)}`);
    if (await isNatsReachable(url, 500)) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `nats-server did not answer at ${url} within ${options.timeoutMs ?? 10_000} ms: ${stderr.trim().slice(-1_000)}`,
      );
    }
    await new Promise((resolveWait) => setTimeout(resolveWait, 100));
  }
  return {
    url,
    pid: child.pid!,
    storeDir,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
      await exited;
      clearTimeout(timer);
      process.off('exit', killOnExit);
    },
  };
}
