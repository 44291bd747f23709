/**
 * Starting and stopping the bench's processes: each one optionally pinned to
 * a CPU set with `taskset` (which execs the command, so the pid we hold is the
 * real process's and /proc sampling sees it), its output in a log file.
 */
import { execFileSync, spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { closeSync, createWriteStream, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface ManagedProcess {
  name: string;
  pid: number;
  child: ChildProcess;
  /** SIGTERM, then SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

export interface SpawnOptions {
  name: string;
  command: string;
  args: string[];
  /** CPU list for taskset ("0", "1", "0,1"); undefined = not pinned. */
  cpus?: string;
  env?: NodeJS.ProcessEnv;
  logDir: string;
  /** Wait for a `{"ready":true,...}` line on stdout and return what it carried. */
  waitForReadyLine?: boolean;
  /** Open an IPC channel (node children only). */
  ipc?: boolean;
  readyTimeoutMs?: number;
}

/** Children still running: killed if the bench itself exits early (a crash, a timeout), so none is left behind. */
const liveChildren = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL');
});

export function tasksetAvailable(): boolean {
  try {
    execFileSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

export async function spawnManaged(
  options: SpawnOptions,
): Promise<{ process: ManagedProcess; ready: Record<string, unknown> }> {
  mkdirSync(options.logDir, { recursive: true });
  const logPath = join(options.logDir, `${options.name}.log`);
  const [command, args] =
    options.cpus === undefined
      ? [options.command, options.args]
      : ['taskset', ['-c', options.cpus, options.command, ...options.args]];
  // Without a ready line to read, the process writes its log straight to the file (as a
  // production worker would), not through a pipe that this process has to keep emptying.
  const direct = options.waitForReadyLine !== true;
  const logFd = direct ? openSync(logPath, 'w') : undefined;
  const output = logFd ?? 'pipe';
  const stdio: StdioOptions = options.ipc === true ? ['ignore', output, output, 'ipc'] : ['ignore', output, output];
  const child = spawn(command, args, { stdio, env: options.env ?? process.env });
  if (logFd !== undefined) closeSync(logFd);
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  const log = direct ? undefined : createWriteStream(logPath);
  if (log !== undefined) child.stderr?.pipe(log, { end: false });
  let ready: Record<string, unknown> = {};
  if (log !== undefined) {
    ready = await new Promise<Record<string, unknown>>((resolve, reject) => {
      let buffered = '';
      const timer = setTimeout(
        () => reject(new Error(`${options.name} did not report ready (see ${logPath})`)),
        options.readyTimeoutMs ?? 20_000,
      );
      // Lines before the ready line (V8's --trace-gc output under --node-flags, say) go to the log.
      const onData = (chunk: Buffer): void => {
        buffered += chunk.toString('utf8');
        for (let newline = buffered.indexOf('\n'); newline >= 0; newline = buffered.indexOf('\n')) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          let parsed: unknown;
          try {
            parsed = line.startsWith('{') ? JSON.parse(line) : undefined;
          } catch {
            parsed = undefined;
          }
          if (typeof parsed !== 'object' || parsed === null || (parsed as { ready?: unknown }).ready !== true) {
            log.write(`${line}\n`);
            continue;
          }
          child.stdout?.off('data', onData);
          clearTimeout(timer);
          if (buffered !== '') log.write(buffered);
          child.stdout?.pipe(log, { end: false });
          resolve(parsed as Record<string, unknown>);
          return;
        }
      };
      child.stdout?.on('data', onData);
      child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`${options.name} exited (${code}) before it was ready (see ${logPath})`));
      });
    });
  }
  if (child.pid === undefined) throw new Error(`${options.name} did not start`);
  const managed: ManagedProcess = {
    name: options.name,
    pid: child.pid,
    child,
    async stop(graceMs = 10_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        if (!(await waitForExit(child, graceMs))) {
          child.kill('SIGKILL');
          await waitForExit(child, 5_000);
        }
      }
      log?.end();
    },
  };
  return { process: managed, ready };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function waitForNatsGreeting(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
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

export interface NatsServerProcess extends ManagedProcess {
  url: string;
  version: string;
}

/** nats-server on a free loopback port with JetStream in a temp store (removed at stop). */
export async function startNatsServer(options: { cpus?: string; logDir: string }): Promise<NatsServerProcess> {
  const port = await freePort();
  const storeDir = mkdtempSync(join(tmpdir(), 'llm-proxy-bench-nats-'));
  const configPath = join(storeDir, 'server.conf');
  writeFileSync(
    configPath,
    [`listen: "127.0.0.1:${port}"`, `jetstream { store_dir: "${join(storeDir, 'js')}" }`, 'max_payload: 8MB', ''].join(
      '\n',
    ),
  );
  let version = 'unknown';
  try {
    version = execFileSync('nats-server', ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // Reported as unknown; the start below fails loudly if the binary is missing.
  }
  const { process: managed } = await spawnManaged({
    name: 'nats-server',
    command: 'nats-server',
    args: ['-c', configPath],
    cpus: options.cpus,
    logDir: options.logDir,
  });
  await Promise.race([
    waitForNatsGreeting(port, 10_000),
    new Promise((_, reject) =>
      managed.child.once('exit', (code) =>
        reject(new Error(`nats-server exited (${code}), see ${options.logDir}/nats-server.log`)),
      ),
    ),
  ]);
  return {
    ...managed,
    url: `nats://127.0.0.1:${port}`,
    version,
    async stop(graceMs?: number) {
      await managed.stop(graceMs);
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}
