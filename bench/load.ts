/**
 * The bench's load generator, its own process (forked by run.ts with an IPC
 * channel): `node .bench-build/bench/load.js --nats-url URL --upstream ORIGIN`.
 * It receives jobs (closed loop, open loop, streams, bursts), runs them
 * against one target, and answers with latency summaries.
 */
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parseArgs } from 'node:util';
import { Pool } from 'undici';
import {
  BENCH_MODELS,
  BENCH_SUBJECTS,
  UPSTREAM_CONNECTIONS,
  benchRequestBody,
  physicalName,
  upstreamBasePath,
  type BenchModelKey,
} from './bench-config.js';
import { createGatewayCaller, type GatewayCaller } from './gateway-caller.js';
import type {
  BurstJob,
  ClosedJob,
  FromLoadGenerator,
  LoadResult,
  OpenJob,
  StreamJob,
  StreamTiming,
  Target,
  ToLoadGenerator,
} from './load-protocol.js';
import { isMainModule } from './main-module.js';
import { summarize } from './stats.js';
import { FAKE_CONTENT } from './upstream.js';

/** A failed call, with the short code the report counts it under. */
export class CallError extends Error {
  constructor(readonly code: string) {
    super(code);
    this.name = 'CallError';
  }
}

interface Callers {
  call(target: Target, model: BenchModelKey): Promise<void>;
  stream(target: 'direct' | 'gateway', model: BenchModelKey): Promise<StreamTiming>;
}

const JSON_HEADERS = { 'content-type': 'application/json' };

function errorCode(error: unknown): string {
  if (error instanceof CallError) return error.code;
  if (error instanceof Error) {
    const cause = (error as { cause?: unknown }).cause;
    if (error.name === 'TimeoutError' || (cause instanceof Error && cause.name === 'TimeoutError')) return 'timeout';
    if (cause instanceof Error && cause.name === 'NoRespondersError') return 'no_responders';
    const code = (error as { code?: unknown }).code;
    if (typeof code === 'string') return code;
    return error.name;
  }
  return 'unknown';
}

function buildCallers(connection: NatsConnection, pool: Pool, gateway: GatewayCaller, timeoutMs: number): Callers {
  const natsBodies = new Map<BenchModelKey, Uint8Array>();
  const directBodies = new Map<BenchModelKey, { path: string; body: string; streamBody: string }>();
  for (const key of Object.keys(BENCH_MODELS) as BenchModelKey[]) {
    const model = BENCH_MODELS[key];
    natsBodies.set(key, new TextEncoder().encode(JSON.stringify(benchRequestBody(model.name))));
    const upstreamBody = { ...benchRequestBody(physicalName(key)), metadata: undefined };
    directBodies.set(key, {
      path: `${upstreamBasePath(model.behaviour)}/chat/completions`,
      body: JSON.stringify(upstreamBody),
      streamBody: JSON.stringify({ ...upstreamBody, stream: true }),
    });
  }

  const callDirect = async (model: BenchModelKey): Promise<void> => {
    const direct = directBodies.get(model)!;
    const response = await pool.request({
      method: 'POST',
      path: direct.path,
      headers: JSON_HEADERS,
      body: direct.body,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    if (response.statusCode !== 200) {
      await response.body.dump();
      throw new CallError(`http_${response.statusCode}`);
    }
    const reply = (await response.body.json()) as { choices: Array<{ message: { content: string } }> };
    if (reply.choices[0]?.message.content !== FAKE_CONTENT) throw new CallError('bad_content');
  };

  const callNats = async (subject: string, model: BenchModelKey, isEcho: boolean): Promise<void> => {
    const body = natsBodies.get(model)!;
    const reply = await connection.request(subject, body, { timeout: timeoutMs });
    if (isEcho) {
      if (reply.data.length !== body.length) throw new CallError('bad_echo');
      return;
    }
    const parsed = reply.json<{ content?: string; error?: { code?: string } }>();
    if (parsed.error !== undefined) throw new CallError(parsed.error.code ?? 'error');
    if (parsed.content !== FAKE_CONTENT) throw new CallError('bad_content');
  };

  const streamDirect = async (model: BenchModelKey): Promise<StreamTiming> => {
    const direct = directBodies.get(model)!;
    const start = performance.now();
    const response = await pool.request({
      method: 'POST',
      path: direct.path,
      headers: JSON_HEADERS,
      body: direct.streamBody,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
    if (response.statusCode !== 200) {
      await response.body.dump();
      throw new CallError(`http_${response.statusCode}`);
    }
    let buffer = '';
    let ttftMs = Number.NaN;
    let last = 0;
    let chunks = 0;
    const gapsMs: number[] = [];
    for await (const piece of response.body) {
      buffer += (piece as Buffer).toString('utf8');
      let boundary: number;
      while ((boundary = buffer.indexOf('\n\n')) >= 0) {
        const event = buffer.slice(0, boundary);
        buffer = buffer.slice(boundary + 2);
        if (!event.startsWith('data: ')) continue;
        const data = event.slice('data: '.length);
        if (data === '[DONE]') continue;
        const parsed = JSON.parse(data) as { choices?: Array<{ delta?: { content?: string } }> };
        const content = parsed.choices?.[0]?.delta?.content;
        if (content === undefined || content === '') continue;
        const now = performance.now();
        if (chunks === 0) ttftMs = now - start;
        else gapsMs.push(now - last);
        last = now;
        chunks++;
      }
    }
    if (chunks === 0) throw new CallError('no_chunks');
    return { ttftMs, gapsMs, chunks };
  };

  return {
    call(target, model) {
      switch (target) {
        case 'direct':
          return callDirect(model);
        case 'echo':
          return callNats(BENCH_SUBJECTS.echo, model, true);
        case 'bare':
          return callNats(BENCH_SUBJECTS.bare, model, false);
        case 'gateway':
          return gateway.chat(BENCH_MODELS[model].name);
      }
    },
    stream(target, model) {
      return target === 'direct' ? streamDirect(model) : gateway.stream(BENCH_MODELS[model].name);
    },
  };
}

class Recorder {
  readonly latencies: number[] = [];
  readonly serviceLatencies: number[] = [];
  readonly sendLags: number[] = [];
  readonly errors: Record<string, number> = {};
  ok = 0;

  fail(error: unknown): void {
    const code = errorCode(error);
    this.errors[code] = (this.errors[code] ?? 0) + 1;
  }
}

async function runClosed(callers: Callers, job: ClosedJob): Promise<LoadResult> {
  const loop = async (durationMs: number, recorder: Recorder): Promise<number> => {
    const start = performance.now();
    const end = start + durationMs;
    await Promise.all(
      Array.from({ length: job.concurrency }, async () => {
        while (performance.now() < end) {
          const sent = performance.now();
          try {
            await callers.call(job.target, job.model);
            recorder.latencies.push(performance.now() - sent);
            recorder.ok++;
          } catch (error) {
            recorder.fail(error);
          }
        }
      }),
    );
    return performance.now() - start;
  };
  if (job.warmupMs > 0) await loop(job.warmupMs, new Recorder());
  const recorder = new Recorder();
  const elapsedMs = await loop(job.durationMs, recorder);
  return {
    ok: recorder.ok,
    errors: recorder.errors,
    elapsedMs,
    throughput: recorder.ok / (elapsedMs / 1000),
    latency: summarize(recorder.latencies),
  };
}

/**
 * Open loop: request i is due at start + i/rate, and its latency counts from
 * then, so time spent waiting behind a slow reply (or a late timer) shows up.
 */
async function runOpen(callers: Callers, job: OpenJob): Promise<LoadResult> {
  const schedule = async (durationMs: number, recorder: Recorder): Promise<number> => {
    const intervalMs = 1000 / job.rate;
    const total = Math.max(1, Math.round((job.rate * durationMs) / 1000));
    const pending: Array<Promise<void>> = [];
    const start = performance.now();
    let lastCompletion = start;
    let sent = 0;
    const fire = (intendedAt: number): void => {
      const sentAt = performance.now();
      recorder.sendLags.push(sentAt - intendedAt);
      pending.push(
        callers.call(job.target, job.model).then(
          () => {
            const now = performance.now();
            lastCompletion = Math.max(lastCompletion, now);
            recorder.latencies.push(now - intendedAt);
            recorder.serviceLatencies.push(now - sentAt);
            recorder.ok++;
          },
          (error: unknown) => {
            lastCompletion = Math.max(lastCompletion, performance.now());
            recorder.fail(error);
          },
        ),
      );
    };
    await new Promise<void>((resolve) => {
      const tick = (): void => {
        const now = performance.now();
        while (sent < total && start + sent * intervalMs <= now) {
          fire(start + sent * intervalMs);
          sent++;
        }
        if (sent >= total) resolve();
        else setTimeout(tick, Math.max(0, start + sent * intervalMs - performance.now()));
      };
      tick();
    });
    await Promise.all(pending);
    return lastCompletion - start;
  };
  if (job.warmupMs > 0) await schedule(job.warmupMs, new Recorder());
  const recorder = new Recorder();
  const elapsedMs = await schedule(job.durationMs, recorder);
  return {
    ok: recorder.ok,
    errors: recorder.errors,
    elapsedMs,
    throughput: recorder.ok / (Math.max(elapsedMs, job.durationMs) / 1000),
    latency: summarize(recorder.latencies),
    serviceLatency: summarize(recorder.serviceLatencies),
    sendLag: summarize(recorder.sendLags),
  };
}

async function runStream(callers: Callers, job: StreamJob): Promise<LoadResult> {
  const recorder = new Recorder();
  const ttfts: number[] = [];
  const gaps: number[] = [];
  let chunks = 0;
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: job.concurrency }, async () => {
      while (next < job.count) {
        next++;
        const sent = performance.now();
        try {
          const timing = await callers.stream(job.target, job.model);
          recorder.latencies.push(performance.now() - sent);
          ttfts.push(timing.ttftMs);
          gaps.push(...timing.gapsMs);
          chunks += timing.chunks;
          recorder.ok++;
        } catch (error) {
          recorder.fail(error);
        }
      }
    }),
  );
  const elapsedMs = performance.now() - start;
  return {
    ok: recorder.ok,
    errors: recorder.errors,
    elapsedMs,
    throughput: recorder.ok / (elapsedMs / 1000),
    latency: summarize(recorder.latencies),
    ttft: summarize(ttfts),
    chunkGap: summarize(gaps),
    chunksPerStream: recorder.ok === 0 ? 0 : chunks / recorder.ok,
  };
}

async function runBurst(callers: Callers, job: BurstJob): Promise<LoadResult> {
  const recorder = new Recorder();
  const start = performance.now();
  await Promise.all(
    Array.from({ length: job.count }, async () => {
      const sent = performance.now();
      try {
        await callers.call(job.target, job.model);
        recorder.latencies.push(performance.now() - sent);
        recorder.ok++;
      } catch (error) {
        recorder.fail(error);
      }
    }),
  );
  const elapsedMs = performance.now() - start;
  return {
    ok: recorder.ok,
    errors: recorder.errors,
    elapsedMs,
    throughput: recorder.ok / (elapsedMs / 1000),
    latency: summarize(recorder.latencies),
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'nats-url': { type: 'string' },
      upstream: { type: 'string' },
      'timeout-ms': { type: 'string', default: '30000' },
      'gateway-via': { type: 'string', default: 'client' },
      agents: { type: 'string', default: '1' },
    },
  });
  const send = (message: FromLoadGenerator): void => {
    process.send?.(message);
  };
  const timeoutMs = Number(values['timeout-ms']);
  const natsUrl = values['nats-url'] ?? 'nats://127.0.0.1:4222';
  // noAsyncTraces: nats.js otherwise captures a stack trace per request, which would charge the generator's CPU.
  const connection = await connect({ servers: natsUrl, noAsyncTraces: true });
  const pool = new Pool(values.upstream!, { connections: UPSTREAM_CONNECTIONS, keepAliveTimeout: 60_000 });
  const gateway = await createGatewayCaller({
    connection,
    timeoutMs,
    via: values['gateway-via'] === 'raw' ? 'raw' : 'client',
    agents: Math.max(1, Number(values.agents) || 1),
  });
  const callers = buildCallers(connection, pool, gateway, timeoutMs);

  process.on('message', (raw: ToLoadGenerator) => {
    if (raw.type === 'stop') {
      void (async () => {
        await gateway.close();
        await connection.drain();
        await pool.close();
        process.exit(0);
      })();
      return;
    }
    const { id, job } = raw;
    const running =
      job.kind === 'closed'
        ? runClosed(callers, job)
        : job.kind === 'open'
          ? runOpen(callers, job)
          : job.kind === 'stream'
            ? runStream(callers, job)
            : runBurst(callers, job);
    running.then(
      (result) => send({ type: 'result', id, result }),
      (error: unknown) =>
        send({ type: 'failed', id, message: error instanceof Error ? (error.stack ?? error.message) : String(error) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', client: gateway.kind });
}

if (isMainModule(import.meta.url)) await main();
