/**
 * `llm-proxy limits`: an agent's standing against its rate limits and
 * budgets, read straight from the shared store (NATS KV or Redis), so it
 * shows what every worker together has counted, measured against the limits
 * the workers enforce: each admission stores them in the scope's record
 * (issue 20; limits/policy.ts `RecordedLimits`). The local config is only
 * the way to the store, and a second opinion printed when it disagrees.
 */
import { existsSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import { configPathFromEnv, DEFAULT_CONFIG_PATH, loadConfigFile, type ResolvedConfig } from '../../config/index.js';
import {
  createLimiter,
  redactRedisUrl,
  redisUrlFor,
  type Dimension,
  type DimensionStanding,
  type ScopeStanding,
} from '../../limits/index.js';
import { tableLines } from '../../format/table.js';

const help = `Usage: llm-proxy limits --agent ID [--microdao ID] [--model M] [--key ID] [--json]

An agent's current standing against its limits: per scope (the agent, and
its microDAO, model and key when named and limited) and per dimension, what
is used, the limit, what remains and when it is free again. Read from the
shared store of limits.backend (nats: the KV bucket; redis: the keys), so
it is the sum over every worker.

The limit ("of") is the one the workers enforce: every admission stores the
limits it was counted against in the scope's record, with the fingerprint
of that worker's limits config and its host. When this command's config
says otherwise, its values are shown beside them ("local config"). A record
written before limits were stored in it, or no record at all, is measured
against this config, and the output says so.

Options:
  --agent ID          metadata.agent_id, e.g. agent:sofia (required)
  --microdao ID       also show this microDAO's shared limits
  --model M           also show this model's shared limits
  --key ID            also show this per-agent key's own limits (from its records only)
  --json              the standing as JSON
  --config PATH       a config.yaml naming the store (default: $LLM_PROXY_CONFIG, else ./config.yaml)

Environment: NATS_URL and NATS credentials as for the worker (backend nats);
REDIS_URL when limits.redis_url is not set (backend redis).

Examples:
  llm-proxy limits --agent agent:sofia
  llm-proxy limits --agent agent:sofia --microdao microdao:7 --json
`;

interface LimitsArguments {
  agentId: string;
  microdaoId: string | undefined;
  model: string | undefined;
  keyId: string | undefined;
  json: boolean;
  configPath: string;
}

export function parseLimitsArguments(argv: string[], env: NodeJS.ProcessEnv = process.env): LimitsArguments {
  const { values } = parseCommandLine({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      agent: { type: 'string' },
      microdao: { type: 'string' },
      model: { type: 'string' },
      key: { type: 'string' },
      json: { type: 'boolean', default: false },
      config: { type: 'string' },
    },
  });
  if (values.agent === undefined || values.agent === '')
    throw new UsageError('--agent is required, e.g. --agent agent:sofia');
  const configPath = values.config ?? configPathFromEnv(env);
  if (values.config === undefined && !env.LLM_PROXY_CONFIG && !existsSync(DEFAULT_CONFIG_PATH)) {
    throw new UsageError(
      'no config: pass --config with a config.yaml naming the limits store (or set LLM_PROXY_CONFIG)',
    );
  }
  return {
    agentId: values.agent,
    microdaoId: values.microdao,
    model: values.model,
    keyId: values.key,
    json: values.json,
    configPath,
  };
}

const DIMENSION_LABELS: Record<Dimension, string> = {
  rpm: 'requests/minute',
  tpm: 'tokens/minute',
  concurrent: 'concurrent',
  daily_usd: 'USD/day',
  monthly_usd: 'USD/month',
};

function formatDuration(ms: number): string {
  if (ms <= 0) return '-';
  if (ms < 60_000) return `${(ms / 1_000).toFixed(1)}s`;
  const minutes = Math.floor(ms / 60_000);
  if (minutes < 60) return `${minutes}m ${Math.floor((ms % 60_000) / 1_000)}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

/** An amount of a dimension; `none` for a limit that is not set. */
function formatLimit(dimension: Dimension, value: number | undefined): string {
  if (value === undefined) return 'none';
  // Budgets to the micro-dollar they are counted in, without trailing zeros past the cents.
  return dimension === 'daily_usd' || dimension === 'monthly_usd'
    ? `$${value.toFixed(6).replace(/0{1,4}$/, '')}`
    : String(value);
}

function formatAmount(row: DimensionStanding, value: number): string {
  return formatLimit(row.dimension, value);
}

function formatAge(ms: number): string {
  return ms < 1_000 ? 'just now' : `${formatDuration(ms)} ago`;
}

function scopeName(scope: ScopeStanding): string {
  return `${scope.kind} ${scope.id}`;
}

/** Where a scope's limits come from, and what the local config says when it differs: the notes under the table. */
function limitNotes(scope: ScopeStanding, configPath: string, now: number): string[] {
  const local = `the local config (${configPath}, limits ${scope.local.config})`;
  if (scope.limitsFrom === 'local') {
    const why =
      scope.fallback === 'no_record'
        ? 'no worker has counted anything in this scope that is still kept, so what the workers enforce is not known'
        : 'its record was written by a worker that does not store its limits (an older version)';
    return [`  ${scopeName(scope)}: limits of ${local}: ${why}`];
  }
  const by = scope.enforcedBy;
  const origin =
    by === undefined
      ? ''
      : ` (workers' limits config ${by.config}${by.host === undefined ? '' : `, stored by ${by.host}`}, in force since ${new Date(by.since).toISOString()}, ${formatAge(now - by.since)})`;
  const lines = [`  ${scopeName(scope)}: limits the workers enforce${origin}`];
  if (!scope.local.differs) return lines;
  const enforced = new Set(scope.dimensions.map((row) => row.dimension));
  const differences = scope.dimensions
    .filter((row) => scope.local.limits[row.dimension] !== row.limit)
    .map(
      (row) =>
        `${DIMENSION_LABELS[row.dimension]} ${formatLimit(row.dimension, scope.local.limits[row.dimension])} (workers: ${formatLimit(row.dimension, row.limit)})`,
    );
  for (const [dimension, limit] of Object.entries(scope.local.limits) as Array<[Dimension, number]>) {
    if (!enforced.has(dimension))
      differences.push(`${DIMENSION_LABELS[dimension]} ${formatLimit(dimension, limit)} (workers: none)`);
  }
  lines.push(`    differs from ${local}, which says: ${differences.join(', ')}`);
  return lines;
}

export function formatStandingTable(
  agentId: string,
  source: string,
  scopes: ScopeStanding[],
  configPath: string,
  now: number = Date.now(),
): string {
  if (scopes.length === 0)
    return `No limits apply to ${agentId} (${source}): neither the workers' records nor the local config (${configPath}) limit it.\n`;
  // A "local config" column only when the local config disagrees with the workers somewhere.
  const disagrees = scopes.some((scope) => scope.limitsFrom === 'workers' && scope.local.differs);
  const header = ['scope', 'limit', 'window', 'used', 'of', 'remaining', 'free again in'];
  if (disagrees) header.push('local config');
  const rows = scopes.flatMap((scope) =>
    scope.dimensions.map((row) => {
      const cells = [
        scopeName(scope),
        DIMENSION_LABELS[row.dimension],
        row.window,
        formatAmount(row, row.used),
        formatAmount(row, row.limit),
        formatAmount(row, row.remaining),
        formatDuration(row.resetsInMs),
      ];
      if (disagrees)
        cells.push(scope.limitsFrom === 'workers' ? formatLimit(row.dimension, scope.local.limits[row.dimension]) : '');
      return cells;
    }),
  );
  const notes = [
    '"of": the limits the workers stored in each scope\'s record as they counted in it (else the local config\'s):',
    ...scopes.flatMap((scope) => limitNotes(scope, configPath, now)),
  ];
  return `${[`Limits of ${agentId} (${source})`, '', ...tableLines(header, rows), '', ...notes].join('\n')}\n`;
}

/** The standing as `--json` prints it. */
export function standingJson(
  agentId: string,
  backend: string,
  scopes: ScopeStanding[],
  configPath: string,
): Record<string, unknown> {
  return {
    agent_id: agentId,
    backend,
    scopes: scopes.map((scope) => ({
      kind: scope.kind,
      id: scope.id,
      limits_from: scope.limitsFrom,
      ...(scope.fallback === undefined ? {} : { fallback: scope.fallback }),
      ...(scope.enforcedBy === undefined
        ? {}
        : {
            enforced_by: {
              config: scope.enforcedBy.config,
              host: scope.enforcedBy.host ?? null,
              since: new Date(scope.enforcedBy.since).toISOString(),
            },
          }),
      local_config: {
        path: configPath,
        fingerprint: scope.local.config,
        differs: scope.local.differs,
        limits: scope.local.limits,
      },
      limits: scope.dimensions.map((row) => ({
        dimension: row.dimension,
        window: row.window,
        used: row.used,
        limit: row.limit,
        remaining: row.remaining,
        resets_in_ms: row.resetsInMs,
        local_limit: scope.local.limits[row.dimension] ?? null,
      })),
    })),
  };
}

function describeSource(config: ResolvedConfig): string {
  const limits = config.limits;
  if (limits.backend === 'nats') return `nats, bucket ${limits.nats_bucket} at ${natsUrlFromEnv()}`;
  if (limits.backend === 'redis')
    return `redis, ${redactRedisUrl(redisUrlFor(limits))}, prefix ${limits.redis_key_prefix}`;
  return limits.backend;
}

async function run(argv: string[]): Promise<number> {
  const parsed = parseLimitsArguments(argv);
  const config = loadConfigFile(parsed.configPath);
  const limits = config.limits;
  if (!limits.enabled) {
    process.stderr.write('limits are disabled in this config (limits.enabled: false)\n');
    return 1;
  }
  if (limits.backend === 'memory') {
    process.stderr.write(
      'limits.backend is "memory": each worker counts in its own process, so there is no shared standing to read (use nats or redis)\n',
    );
    return 1;
  }

  let connection: NatsConnection | undefined;
  if (limits.backend === 'nats') {
    try {
      connection = await connectOnce({ nats: config.nats, name: 'llm-proxy-limits' });
    } catch (error) {
      process.stderr.write(
        `error cannot connect to NATS at ${natsUrlFromEnv()}: ${error instanceof Error ? error.message : String(error)}\n`,
      );
      return 1;
    }
  }
  const limiter = await createLimiter(limits, connection === undefined ? {} : { nats: connection });
  try {
    const scopes = await limiter.standing(parsed.agentId, {
      microdaoId: parsed.microdaoId,
      model: parsed.model,
      keyId: parsed.keyId,
    });
    if (parsed.json) {
      const body = standingJson(parsed.agentId, limits.backend, scopes, parsed.configPath);
      process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    } else {
      process.stdout.write(formatStandingTable(parsed.agentId, describeSource(config), scopes, parsed.configPath));
    }
    return 0;
  } catch (error) {
    const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
    process.stderr.write(
      `error cannot read the limits store (${describeSource(config)}): ${error instanceof Error ? error.message : String(error)}${cause}\n`,
    );
    return 1;
  } finally {
    await limiter.close();
    await connection?.close();
  }
}

export const command: Command = {
  name: 'limits',
  summary: "an agent's standing against the limits and budgets the workers enforce (shared store)",
  help,
  run,
};
