import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './ports.js';

/**
 * A PostgreSQL server of the test's own (initdb in a temp dir, trust auth, a free loopback port), which
 * the test may stop (fast shutdown), kill (SIGKILL) and start again on the same port with the same data.
 *
 * The binaries are run directly; as root, under the `postgres` user through spawn's uid/gid rather than
 * `runuser`: runuser turns a SIGINT into a SIGTERM (smart shutdown) and, killed itself, leaves the
 * postmaster running, so the signals a test sends would not be the ones PostgreSQL gets.
 */
export interface PostgresServerHandle {
  /** Admin URL: user postgres, database postgres. */
  url: string;
  port: number;
  dataDir: string;
  /** Fast shutdown (SIGINT: open transactions are rolled back, connections closed), and wait for exit. */
  stop(): Promise<void>;
  /** SIGKILL the postmaster and wait for it to exit (its backends exit on their own; the next start recovers). */
  kill(): Promise<void>;
  /** Start again on the same port and data, once it accepts connections. */
  start(): Promise<void>;
  /** Stop and remove the data directory. */
  cleanup(): Promise<void>;
}

export interface PostgresServerOptions {
  sharedBuffers?: string;
  /** How long a start may take (a start after a kill waits for the old backends to let go). */
  startTimeoutMs?: number;
}

/** The bin directory of the newest PostgreSQL under /usr/lib/postgresql, or undefined (then: PATH). */
function findBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((name) => /^\d+(\.\d+)?$/.test(name) && existsSync(join(root, name, 'bin', 'postgres')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

/** uid and gid to run the server as: the `postgres` user when we are root (PostgreSQL refuses root). */
function serverUser(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((entry) => entry.startsWith('postgres:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new Error('running as root, and there is no postgres user');
  return { uid: Number(uid), gid: Number(gid) };
}

const live = new Set<ChildProcess>();
const dirs = new Set<string>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitForExit(child: ChildProcess, timeoutMs: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), timeoutMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

/** Messages after which the same start, tried again a little later, may work (the previous server's leftovers). */
const LEFTOVERS =
  /pre-existing shared memory block|lock file .* already exists|could not bind|could not create any TCP\/IP sockets/;

export async function startPostgresServer(options: PostgresServerOptions = {}): Promise<PostgresServerHandle> {
  const binDir = findBinDir();
  const bin = (name: string) => (binDir === undefined ? name : join(binDir, name));
  const user = serverUser();
  const root = mkdtempSync(join(tmpdir(), 'llm-proxy-pg-'));
  dirs.add(root);
  const dataDir = join(root, 'data');
  if (user !== undefined) chownSync(root, user.uid, user.gid);
  const asUser = user === undefined ? {} : { uid: user.uid, gid: user.gid };
  const env = { ...process.env, LC_ALL: 'C', LANG: 'C' };

  const init = spawnSync(
    bin('initdb'),
    ['-D', dataDir, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--locale=C', '--no-sync'],
    { ...asUser, env, encoding: 'utf8', cwd: root },
  );
  if (init.status !== 0) {
    rmSync(root, { recursive: true, force: true });
    dirs.delete(root);
    throw new Error(`initdb failed (${init.error?.message ?? init.status}): ${init.stderr ?? ''}`.trim());
  }

  let port = 0;
  let child: ChildProcess | undefined;
  const url = () => `postgres://postgres@127.0.0.1:${port}/postgres`;

  /** One try: resolves once it answers, rejects with its output when it exits first. */
  const launch = async (deadline: number): Promise<void> => {
    const args = ['-D', dataDir, '-p', String(port), '-k', root, '-c', 'listen_addresses=127.0.0.1'];
    // No fsync: only the OS could lose what is written, and it does not crash in a test. (synchronous_commit
    // stays on: a commit a client was told of must survive a SIGKILL of the server.)
    args.push('-c', 'fsync=off', '-c', 'full_page_writes=off');
    args.push('-c', `shared_buffers=${options.sharedBuffers ?? '32MB'}`, '-c', 'max_connections=50');
    const started = spawn(bin('postgres'), args, { ...asUser, env, cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
    child = started;
    live.add(started);
    let output = '';
    started.stderr?.on('data', (chunk: Buffer) => {
      output = (output + chunk.toString()).slice(-20_000);
    });
    started.once('exit', () => live.delete(started));
    for (;;) {
      if (exited(started)) throw new Error(`postgres exited (${started.exitCode ?? started.signalCode}): ${output}`);
      const client = new pg.Client({ connectionString: url(), connectionTimeoutMillis: 1_000 });
      client.on('error', () => undefined);
      try {
        await client.connect();
        // The port is ours only if the server answering is this one (a free port can be taken meanwhile).
        const { rows } = await client.query<{ dir: string }>('SELECT current_setting($1) AS dir', ['data_directory']);
        if (rows[0]?.dir !== dataDir) throw new Error(`port ${port} is held by another PostgreSQL (${rows[0]?.dir})`);
        return;
      } catch (error) {
        if (error instanceof Error && error.message.includes('held by another')) {
          started.kill('SIGKILL');
          await waitForExit(started, 10_000);
          throw error;
        }
      } finally {
        await client.end().catch(() => undefined);
      }
      if (Date.now() > deadline) {
        started.kill('SIGKILL');
        await waitForExit(started, 10_000);
        throw new Error(`postgres did not accept connections on ${port}: ${output}`);
      }
      await sleep(30);
    }
  };

  /** Starts on `port`, trying again while the previous server's processes still hold its memory, lock or port. */
  const startOnPort = async (): Promise<void> => {
    const deadline = Date.now() + (options.startTimeoutMs ?? 30_000);
    for (;;) {
      try {
        return await launch(deadline);
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        if (!LEFTOVERS.test(message) || Date.now() > deadline) throw error;
        await sleep(100);
      }
    }
  };

  const halt = async (signal: NodeJS.Signals, timeoutMs: number): Promise<void> => {
    const current = child;
    if (current === undefined || exited(current)) return;
    current.kill(signal);
    if (await waitForExit(current, timeoutMs)) return;
    current.kill('SIGKILL');
    await waitForExit(current, 10_000);
  };

  // A free port can be taken before the server binds it (suites run side by side): then try another.
  for (let attempt = 1; ; attempt += 1) {
    port = await freePort();
    try {
      await launch(Date.now() + (options.startTimeoutMs ?? 30_000));
      break;
    } catch (error) {
      if (attempt >= 3) {
        rmSync(root, { recursive: true, force: true });
        dirs.delete(root);
        throw error;
      }
    }
  }

  return {
    url: url(),
    port,
    dataDir,
    stop: () => halt('SIGINT', 30_000),
    kill: () => halt('SIGKILL', 10_000),
    async start() {
      if (child !== undefined && !exited(child)) throw new Error('postgres is running');
      await startOnPort();
    },
    async cleanup() {
      await halt('SIGINT', 10_000);
      rmSync(root, { recursive: true, force: true });
      dirs.delete(root);
    },
  };
}
