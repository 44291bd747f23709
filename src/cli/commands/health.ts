/**
 * `llm-proxy health`: the system's health as seen from the bus (src/health/system-health.ts), or with
 * `--url` one process's own readiness endpoint (the Docker image's HEALTHCHECK).
 */
import { existsSync } from 'node:fs';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { parseDuration } from '../../config/duration.js';
import type { ResolvedConfig } from '../../config/index.js';
import { DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_MAX_PENDING } from '../../health/defaults.js';
import type { HealthCheck, HealthReport } from '../../health/system-health.js';
/** Docker keeps the first 4096 bytes of a health check's output. */
const MAX_BODY_CHARS = 4_000;

const help = `Usage: llm-proxy health [--config FILE] [--json] [--timeout 2s] [--max-pending N] [--nats URL]
       llm-proxy health --url URL [--timeout 2s] [--json]

Checks the system as seen from the bus, each check ok or FAIL with one line:
  nats          connected (and the server's version)
  workers       $SRV.PING.llm-proxy answered; per worker (from $SRV.STATS) usage
                events pending below --max-pending; events dropped or dead-lettered
                since it started are counted (a warning, not a failure)
  usage_stream  the usage stream (nats.usage_stream.name) answers stream info
  limits_store  the KV bucket (backend nats), a PING to Redis (backend redis);
                nothing to reach for memory or when limits are off
  deployments   llm.proxy.nodes (every worker): no model whose every deployment
                cools down on every worker that serves it (workers that do not
                answer it: one worker's llm.proxy.models {"health": true})
  aggregator    $SRV.PING.llm-usage answered (a warning, not a failure, when none does)
  usage_sink    the PostgreSQL sinks' durable consumer: events not yet copied (a warning
                past 50000, or when a database is configured and no sink has run)

With --url, only GETs that URL (a process's /readyz, for container health checks)
and prints the body: exit 0 on 200, 1 otherwise.

Options:
  --config FILE      the workers' config.yaml (default: $LLM_PROXY_CONFIG, else
                     ./config.yaml, else the defaults)
  --json             {"status": "ok"|"fail", "checks": [{"name", "ok", "detail", ...}]}
  --timeout D        how long each check waits (default 2s; e.g. 500ms, 5s)
  --max-pending N    usage events a worker may hold unpublished (default ${DEFAULT_MAX_PENDING})
  --nats URL         NATS server (default: $NATS_URL, else nats://127.0.0.1:4222)
  --url URL          GET this URL instead of checking the bus

Environment: NATS_URL and NATS credentials as for the worker; LLM_PROXY_SECRET
(or LLM_PROXY_KEY) when the workers require it on llm.proxy.models; REDIS_URL
when limits.redis_url is not set.

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 bad usage.

Examples:
  llm-proxy health --config config.yaml
  llm-proxy health --url http://127.0.0.1:9464/readyz
`;

interface HealthArguments {
  json: boolean;
  timeoutMs: number;
  maxPending: number;
  url: string | undefined;
  config: string | undefined;
  nats: string | undefined;
}

export function parseHealthArguments(argv: string[]): HealthArguments {
  const { values } = parseCommandLine({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      config: { type: 'string' },
      json: { type: 'boolean', default: false },
      timeout: { type: 'string' },
      'max-pending': { type: 'string' },
      nats: { type: 'string' },
      url: { type: 'string' },
    },
  });
  let timeoutMs = DEFAULT_HEALTH_TIMEOUT_MS;
  if (values.timeout !== undefined) {
    const parsed = parseDuration(/^\d+(\.\d+)?$/.test(values.timeout) ? Number(values.timeout) : values.timeout);
    if (parsed === undefined || parsed < 1)
      throw new UsageError(`--timeout must be a duration such as 2s or 500ms, got "${values.timeout}"`);
    timeoutMs = Math.round(parsed);
  }
  const maxPending =
    parseNumberFlag('--max-pending', values['max-pending'], isPositiveInteger, 'a positive integer') ??
    DEFAULT_MAX_PENDING;
  if (values.url !== undefined) {
    let url: URL;
    try {
      url = new URL(values.url);
    } catch {
      throw new UsageError(`--url must be a URL such as http://127.0.0.1:9464/readyz, got "${values.url}"`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new UsageError(`--url must be http or https, got "${values.url}"`);
    const others = (['config', 'nats', 'max-pending'] as const).filter((flag) => values[flag] !== undefined);
    if (others.length > 0)
      throw new UsageError(`--url checks one URL only: drop ${others.map((flag) => `--${flag}`).join(', ')}`);
  }
  return {
    json: values.json,
    timeoutMs,
    maxPending,
    url: values.url,
    config: values.config,
    nats: values.nats,
  };
}

/** `--url`: one GET, the body printed; 0 on 200. Loads nothing of the bus, so that a container check starts fast. */
async function checkUrl(url: string, timeoutMs: number, json: boolean): Promise<number> {
  let status: number;
  let body: string;
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    status = response.status;
    body = await response.text();
  } catch (error) {
    const reason =
      error instanceof Error && error.name === 'TimeoutError'
        ? `no answer within ${timeoutMs} ms`
        : `${error instanceof Error ? error.message : String(error)}${
            error instanceof Error && error.cause instanceof Error ? ` (${error.cause.message})` : ''
          }`;
    if (json) {
      const report = { status: 'fail', checks: [{ name: 'url', ok: false, detail: `GET ${url}: ${reason}`, url }] };
      process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
    } else {
      process.stderr.write(`llm-proxy: GET ${url}: ${reason}\n`);
    }
    return 1;
  }
  const ok = status === 200;
  const shown = body.length > MAX_BODY_CHARS ? `${body.slice(0, MAX_BODY_CHARS)}…` : body;
  if (json) {
    const check = { name: 'url', ok, detail: `GET ${url}: ${status}`, url, http_status: status, body: shown };
    process.stdout.write(`${JSON.stringify({ status: ok ? 'ok' : 'fail', checks: [check] }, null, 2)}\n`);
  } else {
    if (!ok) process.stdout.write(`HTTP ${status} from ${url}\n`);
    process.stdout.write(shown.endsWith('\n') || shown === '' ? shown : `${shown}\n`);
  }
  return ok ? 0 : 1;
}

function mark(check: HealthCheck): string {
  if (!check.ok) return 'FAIL';
  return check.warning ? 'WARN' : 'ok';
}

export function formatHealthReport(report: HealthReport): string {
  const width = Math.max(...report.checks.map((check) => check.name.length));
  const lines = report.checks.map((check) => `${mark(check).padEnd(4)}  ${check.name.padEnd(width)}  ${check.detail}`);
  const failed = report.checks.filter((check) => !check.ok).length;
  const warned = report.checks.filter((check) => check.ok && check.warning).length;
  const warnings = warned > 0 ? `, ${warned} warning${warned === 1 ? '' : 's'}` : '';
  lines.push(
    report.status === 'ok'
      ? `healthy: ${report.checks.length} checks passed${warnings}`
      : `UNHEALTHY: ${failed} of ${report.checks.length} checks failed${warnings}`,
  );
  return `${lines.join('\n')}\n`;
}

async function checkBus(parsed: HealthArguments): Promise<number> {
  const [{ checkSystemHealth }, config, bus, { secretHeaders }] = await Promise.all([
    import('../../health/system-health.js'),
    import('../../config/index.js'),
    import('../../bus/connect.js'),
    import('../secret-headers.js'),
  ]);
  const path =
    parsed.config ??
    (process.env.LLM_PROXY_CONFIG || (existsSync(config.DEFAULT_CONFIG_PATH) ? config.DEFAULT_CONFIG_PATH : undefined));
  let resolved: ResolvedConfig;
  try {
    resolved =
      path === undefined
        ? config.resolveConfig({ providers: {}, models: {} }, 'defaults')
        : config.loadConfigFile(path);
  } catch (error) {
    if (error instanceof config.ConfigError) throw new UsageError(error.message);
    throw error;
  }
  if (path === undefined && !parsed.json)
    process.stderr.write(
      'llm-proxy: no config file (--config, $LLM_PROXY_CONFIG, ./config.yaml): checking with the defaults\n',
    );

  const servers = parsed.nats ?? bus.natsUrlFromEnv();
  let connection: Awaited<ReturnType<typeof bus.connectOnce>> | undefined;
  let connectError: string | undefined;
  try {
    connection = await bus.connectOnce({ servers, nats: resolved.nats, name: 'llm-proxy-health' });
  } catch (error) {
    connectError = `cannot connect to ${servers}: ${error instanceof Error ? error.message : String(error)}`;
  }
  try {
    const headers = secretHeaders();
    const report = await checkSystemHealth({
      connection,
      ...(connectError === undefined ? {} : { connectError }),
      config: resolved,
      timeoutMs: parsed.timeoutMs,
      maxPending: parsed.maxPending,
      ...(headers === undefined ? {} : { headers }),
    });
    process.stdout.write(parsed.json ? `${JSON.stringify(report, null, 2)}\n` : formatHealthReport(report));
    return report.status === 'ok' ? 0 : 1;
  } finally {
    await connection?.close();
  }
}

export const command: Command = {
  name: 'health',
  summary: 'check NATS, workers, usage stream, limits store, deployments, aggregator, usage sink (--url: one /readyz)',
  help,
  async run(argv) {
    const parsed = parseHealthArguments(argv);
    if (parsed.url !== undefined) return checkUrl(parsed.url, parsed.timeoutMs, parsed.json);
    return checkBus(parsed);
  },
};
