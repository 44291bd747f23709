/**
 * Start llm-proxy workers for tests: in-process (fast, full access to the
 * Worker object and its log lines) or as a child process running the real CLI
 * (`llm-proxy worker`), for signals, exit codes and rolling restarts.
 *
 * ```ts
 * const nats = await startNatsServer();
 * const openai = await startFakeOpenAI();
 * const config = testConfig({ openai: openai.baseUrl });           // models gpt-test (openai), local-test (ollama)…
 * const worker = await startInProcessWorker({ natsUrl: nats.url, config, env: { FAKE_OPENAI_KEY: 'sk-test' } });
 * worker.logs.lines;            // every JSON log line the worker wrote
 * await worker.stop();          // graceful stop; returns the ShutdownReport
 *
 * const child = await startChildWorker({ natsUrl: nats.url, config, env: {…} });
 * child.signal('SIGTERM'); const { code } = await child.exited;   // 0 after a clean drain
 *
 * const events = await waitForUsageEvents(connection, 3);           // from the LLM_USAGE stream
 * ```
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { jetstreamManager } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { resolveConfig, type ConfigInput, type ResolvedConfig } from '../../src/config/index.js';
import type { UsageEvent } from '../../src/contract/usage-event.js';
import { createLogger } from '../../src/telemetry/logger.js';
import { startWorker, type ShutdownReport, type Worker, type WorkerOptions } from '../../src/worker/index.js';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** The API key the test config expects in `FAKE_OPENAI_KEY` (and the fake can require). */
export const TEST_API_KEY = 'sk-test-SECRET-0123456789abcdef';

/**
 * A config document for tests. Providers: `openai` (type openai, key from
 * `FAKE_OPENAI_KEY`) and `local` (type ollama), pointing at the fakes' URLs.
 * Models: `gpt-test` → openai `gpt-4o-mini` ($0.15/$0.60 per 1k, to make costs visible),
 * `local-test` → local `llama3.2:3b` (free). `overrides` are merged on top (shallow per section).
 */
export function testConfig(
  urls: { openai?: string; ollama?: string },
  overrides: Partial<ConfigInput> = {},
): ConfigInput {
  const providers: ConfigInput['providers'] = {};
  const models: ConfigInput['models'] = {};
  if (urls.openai !== undefined) {
    providers.openai = { type: 'openai', base_url: urls.openai, api_key_env: 'FAKE_OPENAI_KEY' };
    models['gpt-test'] = {
      provider: 'openai',
      physical_name: 'gpt-4o-mini',
      cost_per_1k_prompt: 0.15,
      cost_per_1k_completion: 0.6,
    };
  }
  if (urls.ollama !== undefined) {
    providers.local = { type: 'ollama', base_url: urls.ollama };
    models['local-test'] = { provider: 'local', physical_name: 'llama3.2:3b' };
  }
  return {
    ...overrides,
    providers: { ...providers, ...(overrides.providers ?? {}) },
    models: { ...models, ...(overrides.models ?? {}) },
    routing: { retry: { attempts: 1 }, cooldown: { failures: 1_000 }, ...(overrides.routing ?? {}) },
    worker: { heartbeat_ms: 200, drain_timeout_ms: 10_000, ...(overrides.worker ?? {}) },
    logging: { level: 'info', ...(overrides.logging ?? {}) },
    // The seed's default (10 requests/minute per agent) would throttle most suites; limits tests set their own.
    limits: overrides.limits ?? { enabled: false },
  };
}

/** Captured log lines of an in-process worker (pino JSON, one per line). */
export interface LogCapture {
  readonly lines: string[];
  /** The lines parsed. */
  records(): Array<Record<string, unknown>>;
  /** Everything, as one string (for "no secret anywhere" checks). */
  text(): string;
}

function captureLogs(): LogCapture & { write(line: string): void } {
  const lines: string[] = [];
  return {
    lines,
    write(line: string) {
      lines.push(line.trimEnd());
    },
    records: () => lines.map((line) => JSON.parse(line) as Record<string, unknown>),
    text: () => lines.join('\n'),
  };
}

export interface InProcessWorkerOptions extends Partial<Omit<WorkerOptions, 'config'>> {
  natsUrl: string;
  config: ConfigInput;
  /** Environment for the worker: provider keys (`FAKE_OPENAI_KEY`), `LLM_PROXY_SECRET`… Default: `FAKE_OPENAI_KEY` = TEST_API_KEY. */
  env?: Record<string, string>;
}

export interface InProcessWorker {
  worker: Worker;
  config: ResolvedConfig;
  logs: LogCapture;
  stop(options?: { drainTimeoutMs?: number }): Promise<ShutdownReport>;
}

export async function startInProcessWorker(options: InProcessWorkerOptions): Promise<InProcessWorker> {
  const env: Record<string, string> = { FAKE_OPENAI_KEY: TEST_API_KEY, ...(options.env ?? {}) };
  const config = resolveConfig(options.config, 'test config', env);
  const logs = captureLogs();
  const { natsUrl, config: _config, env: _env, ...rest } = options;
  const worker = await startWorker({
    secret: env.LLM_PROXY_SECRET ?? null,
    ...rest,
    config,
    servers: natsUrl,
    env,
    logger: options.logger ?? createLogger({ level: config.logging.level, destination: logs }),
  });
  return { worker, config, logs, stop: (stopOptions) => worker.stop(stopOptions) };
}

export interface ChildWorkerOptions {
  natsUrl: string;
  config: ConfigInput;
  /** Added to the child's environment (which otherwise has PATH/HOME only, plus FAKE_OPENAI_KEY). */
  env?: Record<string, string>;
  /** Milliseconds to wait for the "worker started" line. Default 20 s. */
  startTimeoutMs?: number;
}

export interface ChildWorker {
  readonly process: ChildProcess;
  readonly pid: number;
  /** stdout lines (JSON logs) so far. */
  readonly lines: string[];
  /** stderr so far. */
  stderr(): string;
  /** The worker id from its "worker started" line. */
  readonly workerId: string;
  signal(signal: NodeJS.Signals): void;
  /** Resolves on exit with the code (null when killed by a signal) and the signal. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first line containing `text`. */
  waitForLine(text: string, timeoutMs?: number): Promise<string>;
  /** SIGKILL if still running, and remove the temp config. */
  dispose(): Promise<void>;
}

/** Runs `node --import tsx src/cli/main.ts worker --config <temp file>` with NATS_URL set. */
export async function startChildWorker(options: ChildWorkerOptions): Promise<ChildWorker> {
  const dir = mkdtempSync(join(tmpdir(), 'llm-proxy-worker-'));
  const configPath = join(dir, 'config.yaml');
  writeFileSync(configPath, stringify(options.config));
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', join(REPO_ROOT, 'src/cli/main.ts'), 'worker', '--config', configPath],
    {
      cwd: REPO_ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '',
        NATS_URL: options.natsUrl,
        FAKE_OPENAI_KEY: TEST_API_KEY,
        // A free port for /metrics, /healthz and /readyz: tests run workers side by side.
        LLM_PROXY_METRICS_PORT: '0',
        ...(options.env ?? {}),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const lines: string[] = [];
  let stderr = '';
  let partial = '';
  const lineWaiters: Array<{ text: string; resolve: (line: string) => void }> = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    partial += chunk.toString();
    let newline: number;
    while ((newline = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, newline);
      partial = partial.slice(newline + 1);
      lines.push(line);
      for (const waiter of [...lineWaiters]) {
        if (line.includes(waiter.text)) {
          lineWaiters.splice(lineWaiters.indexOf(waiter), 1);
          waiter.resolve(line);
        }
      }
    }
  });
  child.stderr!.on('data', (chunk: Buffer) => {
    if (stderr.length < 100_000) stderr += chunk.toString();
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const waitForLine = (text: string, timeoutMs = 20_000): Promise<string> => {
    const existing = lines.find((line) => line.includes(text));
    if (existing !== undefined) return Promise.resolve(existing);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () =>
          reject(
            new Error(
              `no line with "${text}" within ${timeoutMs} ms; stderr: ${stderr.slice(-2000)}; stdout: ${lines.slice(-5).join('\n')}`,
            ),
          ),
        timeoutMs,
      );
      const waiter = {
        text,
        resolve: (line: string) => {
          clearTimeout(timer);
          resolve(line);
        },
      };
      lineWaiters.push(waiter);
      void exited.then(() => {
        if (lineWaiters.includes(waiter)) {
          clearTimeout(timer);
          reject(new Error(`worker exited before "${text}"; stderr: ${stderr.slice(-2000)}`));
        }
      });
    });
  };
  let startedLine: string;
  try {
    startedLine = await waitForLine('"worker started"', options.startTimeoutMs ?? 20_000);
  } catch (error) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
  const workerId = String((JSON.parse(startedLine) as { worker_id?: string }).worker_id);
  return {
    process: child,
    pid: child.pid!,
    lines,
    stderr: () => stderr,
    workerId,
    signal: (signal) => {
      child.kill(signal);
    },
    exited,
    waitForLine,
    async dispose() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * Usage events in the stream (default `LLM_USAGE`), oldest first, once at
 * least `count` are there (polls up to `timeoutMs`, default 10 s). Each comes
 * with its subject and `Nats-Msg-Id`.
 */
export async function waitForUsageEvents(
  connection: NatsConnection,
  count: number,
  options: { stream?: string; timeoutMs?: number } = {},
): Promise<Array<UsageEvent & { subject: string; msgId: string | undefined }>> {
  const stream = options.stream ?? 'LLM_USAGE';
  const manager = await jetstreamManager(connection);
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  for (;;) {
    let messages = 0;
    let firstSeq = 1;
    let lastSeq = 0;
    try {
      const info = await manager.streams.info(stream);
      messages = info.state.messages;
      firstSeq = info.state.first_seq;
      lastSeq = info.state.last_seq;
    } catch {
      // Not created yet.
    }
    if (messages >= count || Date.now() > deadline) {
      const events: Array<UsageEvent & { subject: string; msgId: string | undefined }> = [];
      for (let seq = firstSeq; seq <= lastSeq; seq++) {
        const stored = await manager.streams.getMessage(stream, { seq }).catch(() => null);
        if (stored === null) continue;
        events.push({
          ...(stored.json() as UsageEvent),
          subject: stored.subject,
          msgId: stored.header?.get('Nats-Msg-Id') || undefined,
        });
      }
      if (messages < count)
        throw new Error(`only ${messages} usage events in ${stream} after waiting; wanted ${count}`);
      return events;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The usage event of the request with this `request_id` (polls LLM_USAGE up to `timeoutMs`); throws when none came. */
export async function usageEventFor(
  connection: NatsConnection,
  requestId: string,
  timeoutMs = 10_000,
): Promise<UsageEvent & { subject: string; msgId: string | undefined }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const event = (await waitForUsageEvents(connection, 1, { timeoutMs })).find(
      (candidate) => candidate.request_id === requestId,
    );
    if (event !== undefined) return event;
    if (Date.now() > deadline) throw new Error(`no usage event for ${requestId}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
