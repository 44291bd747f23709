import type { ChildProcess } from 'node:child_process';

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
