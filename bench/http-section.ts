/**
 * The `http` section of `npm run bench`: the HTTP path measured as gateways measure theirs, with one
 * HTTP load generator (autocannon) against (a) the fake upstream directly, (b) llm-proxy's front door →
 * NATS → worker → the same upstream, and (c) Portkey's open-source gateway → the same upstream, when it
 * is installed in a scratch folder (`--portkey-dir`). Non-streaming OpenAI chat requests, closed loop at
 * 1/16/64 connections. Latencies come from autocannon's per-response times (fractions of a ms): its own
 * histogram keeps whole milliseconds, too coarse for a +0.5 ms goal.
 */
import autocannon from 'autocannon';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, type ManagedProcess, spawnManaged } from './processes.js';
import { ProcessSampler, usageFromSamples } from './proc-stats.js';
import { summarize } from './stats.js';
import { type HttpPoint, type HttpSection, type HttpTarget, ms } from './http-report.js';

async function waitUntil(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

interface Endpoint {
  target: HttpTarget;
  url: string;
  headers: Record<string, string>;
  /** Processes whose CPU counts for this target. */
  pids: Map<string, number>;
}

async function load(
  endpoint: Endpoint,
  body: string,
  connections: number,
  durationMs: number,
): Promise<{ throughput: number; errors: number; latencies: number[] }> {
  const latencies: number[] = [];
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    const instance = autocannon(
      {
        url: endpoint.url,
        method: 'POST',
        headers: { 'content-type': 'application/json', ...endpoint.headers },
        body,
        connections,
        duration: durationMs / 1000,
      },
      (error, finished) => (error ? reject(error) : resolve(finished)),
    );
    instance.on('response', (_client, statusCode, _bytes, responseTime) => {
      if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
    });
  });
  return {
    throughput: latencies.length / (durationMs / 1000),
    errors: result.errors + result.timeouts + result.non2xx,
    latencies,
  };
}

export interface HttpSectionContext {
  cliMain: string;
  natsUrl: string;
  natsPid: number;
  workerPids: number[];
  upstreamOrigin: string;
  /** The worker's config file (the front door reads its `http` and `nats` sections). */
  configPath: string;
  body: Record<string, unknown>;
  logDir: string;
  env: NodeJS.ProcessEnv;
  connections: number[];
  durationMs: number;
  warmupMs: number;
  portkeyDir: string | undefined;
  log(line: string): void;
}

/** Portkey's server script in a folder where `npm install @portkey-ai/gateway` ran, or why not. */
export function portkeyScript(dir: string | undefined): { script: string } | { skipped: string } {
  const advice = 'install with `npm install @portkey-ai/gateway` in a scratch folder and pass --portkey-dir';
  if (dir === undefined || dir === '') return { skipped: advice };
  const script = join(dir, 'node_modules', '@portkey-ai', 'gateway', 'build', 'start-server.js');
  return existsSync(script) ? { script } : { skipped: `${script} not found: ${advice}` };
}

export async function runHttpSection(context: HttpSectionContext): Promise<HttpSection> {
  const started: ManagedProcess[] = [];
  const body = JSON.stringify(context.body);
  const endpoints: Endpoint[] = [
    {
      target: 'direct',
      url: `${context.upstreamOrigin}/v1/chat/completions`,
      headers: { authorization: 'Bearer bench' },
      pids: new Map(),
    },
  ];
  let portkeySkipped: string | undefined;
  try {
    const port = await freePort();
    const frontDoor = (
      await spawnManaged({
        name: 'http',
        command: process.execPath,
        args: [
          context.cliMain,
          'http',
          '--config',
          context.configPath,
          '--nats',
          context.natsUrl,
          '--port',
          String(port),
        ],
        logDir: context.logDir,
        env: context.env,
      })
    ).process;
    started.push(frontDoor);
    const frontDoorUrl = `http://127.0.0.1:${port}`;
    await waitUntil(async () => (await fetch(`${frontDoorUrl}/readyz`)).status === 200, 'the front door to be ready');
    const pids = new Map([
      ['http', frontDoor.pid],
      ['nats-server', context.natsPid],
    ]);
    for (const [index, pid] of context.workerPids.entries()) pids.set(`worker-${index}`, pid);
    endpoints.push({ target: 'llm-proxy', url: `${frontDoorUrl}/v1/chat/completions`, headers: {}, pids });

    const portkey = portkeyScript(context.portkeyDir);
    if ('skipped' in portkey) portkeySkipped = portkey.skipped;
    else {
      const portkeyPort = await freePort();
      const managed = (
        await spawnManaged({
          name: 'portkey',
          command: process.execPath,
          args: [portkey.script, `--port=${portkeyPort}`, '--headless'],
          logDir: context.logDir,
          env: { ...context.env, NODE_ENV: 'production' },
        })
      ).process;
      started.push(managed);
      const endpoint: Endpoint = {
        target: 'portkey',
        url: `http://127.0.0.1:${portkeyPort}/v1/chat/completions`,
        headers: {
          authorization: 'Bearer bench',
          'x-portkey-provider': 'openai',
          'x-portkey-custom-host': `${context.upstreamOrigin}/v1`,
        },
        pids: new Map([['portkey', managed.pid]]),
      };
      try {
        await waitUntil(
          async () =>
            (
              await fetch(endpoint.url, {
                method: 'POST',
                headers: { 'content-type': 'application/json', ...endpoint.headers },
                body,
              })
            ).status === 200,
          'Portkey to answer',
        );
        endpoints.push(endpoint);
      } catch (error) {
        portkeySkipped = `it did not answer: ${String(error)}`;
      }
    }

    // Fresh processes (the front door, Portkey) first compile their hot paths: warm each up at 16 connections.
    for (const endpoint of endpoints) await load(endpoint, body, 16, Math.max(2_000, context.warmupMs));
    const points: HttpPoint[] = [];
    for (const connections of context.connections) {
      for (const endpoint of endpoints) {
        if (context.warmupMs > 0) await load(endpoint, body, connections, context.warmupMs);
        const sampler = new ProcessSampler(endpoint.pids);
        sampler.start(250);
        const run = await load(endpoint, body, connections, context.durationMs);
        const samples = sampler.stop();
        let cores: number | null = null;
        const split: string[] = [];
        if (endpoint.pids.size > 0) {
          cores = 0;
          for (const [name, list] of samples) {
            const share = (usageFromSamples(list)?.cpuPercent ?? 0) / 100;
            cores += share;
            split.push(`${name} ${share.toFixed(2)}`);
          }
        }
        const point: HttpPoint = {
          target: endpoint.target,
          connections,
          throughput: run.throughput,
          errors: run.errors,
          latency: summarize(run.latencies),
          cores,
        };
        context.log(
          `http ${endpoint.target} c=${connections}: ${Math.round(point.throughput)} req/s, p50 ${ms(point.latency.p50)} ms, p99 ${ms(point.latency.p99)} ms, cores ${cores === null ? '–' : `${cores.toFixed(2)} (${split.join(', ')})`}, errors ${point.errors}`,
        );
        points.push(point);
      }
    }
    return { points, ...(portkeySkipped !== undefined ? { portkeySkipped } : {}) };
  } finally {
    for (const managed of started.reverse()) await managed.stop(5_000);
  }
}
