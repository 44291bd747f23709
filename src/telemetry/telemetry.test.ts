import { test } from 'node:test';
import assert from 'node:assert/strict';
import { propagation, trace, type Context, type TextMapGetter, type TextMapPropagator } from '@opentelemetry/api';
import { headers as createHeaders } from '@nats-io/nats-core';
import { createLogger, requestLogger } from './logger.js';
import { extractTraceContext, startRequestSpan } from './tracing.js';

test('trace context is read from NATS headers through the registered propagator', () => {
  const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
  // A minimal W3C reader, enough to prove the getter hands the header through.
  const propagator: TextMapPropagator = {
    inject: () => undefined,
    fields: () => ['traceparent'],
    extract(context: Context, carrier: unknown, getter: TextMapGetter) {
      const value = getter.get(carrier, 'traceparent');
      const parts = (Array.isArray(value) ? value[0] : value)?.split('-');
      if (parts === undefined || parts.length !== 4) return context;
      return trace.setSpanContext(context, {
        traceId: parts[1]!,
        spanId: parts[2]!,
        traceFlags: Number.parseInt(parts[3]!, 16),
        isRemote: true,
      });
    },
  };
  propagation.setGlobalPropagator(propagator);
  try {
    const headers = createHeaders();
    headers.set('traceparent', `00-${traceId}-00f067aa0ba902b7-01`);
    assert.equal(trace.getSpanContext(extractTraceContext(headers))?.traceId, traceId);
    assert.equal(trace.getSpanContext(extractTraceContext(undefined)), undefined);
    // No SDK registered: the span is OTel's no-op, and cheap to end.
    startRequestSpan('llm.proxy.request', headers).end();
  } finally {
    propagation.disable();
  }
});

test('the logger redacts keys and secrets wherever they appear; request loggers carry the ids', () => {
  const lines: string[] = [];
  const logger = createLogger({ destination: { write: (line: string) => lines.push(line) } });
  requestLogger(logger, 'r-1', 'agent:sofia').info(
    {
      apiKey: 'sk-1',
      provider: { apiKey: 'sk-2', headers: { authorization: 'Bearer sk-3', 'x-internal-secret': 'sec-4' } },
      headers: { 'X-Internal-Secret': 'sec-5' },
    },
    'hello',
  );
  const cause = Object.assign(new Error('upstream said: Incorrect API key provided: abc-6'), {
    options: { headers: { Authorization: 'Bearer tok-7' } },
  });
  logger.error(
    { err: new Error('call failed with Bearer tok-8', { cause }), deep: [{ api_key: 'k-9' }], apiKey: null },
    'failed',
  );
  const text = lines.join('');
  for (const secret of ['sk-1', 'sk-2', 'sk-3', 'sec-4', 'sec-5', 'abc-6', 'tok-7', 'tok-8', 'k-9'])
    assert.ok(!text.includes(secret), `${secret} leaked: ${text}`);
  const failed = JSON.parse(lines[1]!);
  assert.equal(failed.err.type, 'Error');
  assert.match(failed.err.message, /call failed with Bearer \[redacted\]/);
  assert.equal(failed.err.cause.options.headers.Authorization, '[redacted]');
  const record = JSON.parse(lines[0]!);
  assert.equal(record.request_id, 'r-1');
  assert.equal(record.agent_id, 'agent:sofia');
  assert.equal(record.level, 'info');
});

test('stdout lines are batched, yet a lone line of a quiet process shows within the flush period, and the rest at exit', async () => {
  const { spawn } = await import('node:child_process');
  const { fileURLToPath } = await import('node:url');
  const loggerModule = fileURLToPath(new URL('./logger.ts', import.meta.url));
  // One line, then nothing for 1.5 s (far below the 4 KiB batch), then one more line and a normal exit.
  const script = `
    const { createLogger } = await import(${JSON.stringify(loggerModule)});
    const logger = createLogger({ level: 'info' });
    logger.info('first');
    setTimeout(() => logger.info('last'), 1500);
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const started = Date.now();
  const seen: Array<{ msg: string; atMs: number }> = [];
  let buffered = '';
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (text: string) => {
    buffered += text;
    let newline: number;
    while ((newline = buffered.indexOf('\n')) !== -1) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      seen.push({ msg: (JSON.parse(line) as { msg: string }).msg, atMs: Date.now() - started });
    }
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  assert.equal(code, 0);
  assert.deepEqual(
    seen.map((line) => line.msg),
    ['first', 'last'],
  );
  // "first" came out with the periodic flush, long before the process logged again.
  assert.ok(seen[1]!.atMs - seen[0]!.atMs > 1_000, JSON.stringify(seen));
});
