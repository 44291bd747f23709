/**
 * `llm-proxy limits`: an agent's standing against its rate limits and
 * budgets, read straight from the shared store (NATS KV or Redis) with the
 * workers' config, so it shows what every worker together has counted.
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

const help = `Usage: llm-proxy limits --agent ID [--microdao ID] [--model M] [--json]

An agent's current standing against its limits: per scope (the agent, and
its microDAO and model when named and limited) and per dimension, what is
used, the limit, what remains and when it is free again. Read from the
shared store of limits.backend (nats: the KV bucket; redis: the keys), so
it is the sum over every worker.

Options:
  --agent ID          metadata.agent_id, e.g. agent:sofia (required)
  --microdao ID       also show this microDAO's shared limits
  --model M           also show this model's shared limits
  --json              the standing as JSON
  --config PATH       the workers' config.yaml (default: $LLM_PROXY_CONFIG, else ./config.yaml)

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
      json: { type: 'boolean', default: false },
      config: { type: 'string' },
    },
  });
  if (values.agent === undefined || values.agent === '')
    throw new UsageError('--agent is required, e.g. --agent agent:sofia');
  const configPath = values.config ?? configPathFromEnv(env);
  if (values.config === undefined && !env.LLM_PROXY_CONFIG && !existsSync(DEFAULT_CONFIG_PATH)) {
    throw new UsageError("no config: pass --config with the workers' config.yaml (or set LLM_PROXY_CONFIG)");
  }
  return { agentId: values.agent, microdaoId: values.microdao, model: values.model, json: values.json, configPath };
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

function formatAmount(row: DimensionStanding, value: number): string {
  // Budgets to the micro-dollar they are counted in, without trailing zeros past the cents.
  return row.dimension === 'daily_usd' || row.dimension === 'monthly_usd'
    ? `$${value.toFixed(6).replace(/0{1,4}$/, '')}`
    : String(value);
}

export function formatStandingTable(agentId: string, source: string, scopes: ScopeStanding[]): string {
  if (scopes.length === 0) return `No limits apply to ${agentId} (${source}).\n`;
  const header = ['scope', 'limit', 'window', 'used', 'of', 'remaining', 'free again in'];
  const rows = scopes.flatMap((scope) =>
    scope.dimensions.map((row) => [
      `${scope.kind} ${scope.id}`,
      DIMENSION_LABELS[row.dimension],
      row.window,
      formatAmount(row, row.used),
      formatAmount(row, row.limit),
      formatAmount(row, row.remaining),
      formatDuration(row.resetsInMs),
    ]),
  );
  return `${[`Limits of ${agentId} (${source})`, '', ...tableLines(header, rows)].join('\n')}\n`;
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
      ...(parsed.microdaoId === undefined ? {} : { microdaoId: parsed.microdaoId }),
      ...(parsed.model === undefined ? {} : { model: parsed.model }),
    });
    if (parsed.json) {
      const body = {
        agent_id: parsed.agentId,
        backend: limits.backend,
        scopes: scopes.map((scope) => ({
          kind: scope.kind,
          id: scope.id,
          limits: scope.dimensions.map((row) => ({
            dimension: row.dimension,
            window: row.window,
            used: row.used,
            limit: row.limit,
            remaining: row.remaining,
            resets_in_ms: row.resetsInMs,
          })),
        })),
      };
      process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    } else {
      process.stdout.write(formatStandingTable(parsed.agentId, describeSource(config), scopes));
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
  summary: "an agent's standing against its rate limits and budgets (shared store)",
  help,
  run,
};
