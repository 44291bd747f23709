import { spawn, type ChildProcess } from 'node:child_process';
import { waitForServer } from './nats-server.js';

/** What the helpers that run servers as child processes (nats-cluster, leaf-cluster) share. */

export const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

export function waitForExit(child: ChildProcess | undefined): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/** Children still running when the test process exits are killed (a crashed test must not leave servers behind). */
const living = new Set<ChildProcess>();
let exitHookInstalled = false;
export function track(child: ChildProcess): void {
  living.add(child);
  child.once('exit', () => living.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const process_ of living) process_.kill('SIGKILL');
  });
}

/** One nats-server process with its config file; restartable on the same ports. */
export class NatsServerProcess {
  #child: ChildProcess | undefined;
  #stderr = '';

  constructor(
    readonly name: string,
    readonly configPath: string,
  ) {}

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  logs(): string {
    return this.#stderr;
  }

  async launch(port: number, timeoutMs = 10_000): Promise<void> {
    if (this.running) throw new Error(`${this.name} is already running`);
    const child = spawn('nats-server', ['-c', this.configPath], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#child = child;
    track(child);
    child.stderr?.on('data', (chunk: Buffer) => {
      this.#stderr += chunk.toString();
      if (this.#stderr.length > 200_000) this.#stderr = this.#stderr.slice(-100_000);
    });
    const exited = new Promise<never>((_, reject) =>
      child.once('exit', (code, signal) =>
        reject(new Error(`nats-server ${this.name} exited (${code ?? signal}): ${this.#stderr.slice(-2000)}`)),
      ),
    );
    exited.catch(() => undefined);
    try {
      await Promise.race([waitForServer(port, this.name, timeoutMs), exited]);
    } catch (error) {
      child.kill('SIGKILL');
      await waitForExit(child);
      throw error;
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    this.#child?.kill(signal);
    await waitForExit(this.#child);
  }
}
