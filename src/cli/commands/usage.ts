/**
 * `llm-proxy usage`: asks the aggregators (`llm.proxy.usage`) for usage
 * statistics and prints them as a table, JSON or CSV (billing exports).
 */
import { existsSync } from 'node:fs';
import { RequestError, type NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import { configPathFromEnv, DEFAULT_CONFIG_PATH, loadConfigFile, type NatsConfig } from '../../config/index.js';
import { DEFAULT_SUBJECT_PREFIX, HEADERS, subjectsFor } from '../../contract/subjects.js';
import { USAGE_GROUP_KEYS, type UsageGroupKey, type UsageQuery } from '../../contract/usage-query.js';
import type { ErrorReply } from '../../contract/errors.js';
import type { AggregatedReply } from '../../aggregator/query.js';
import { KEY_ID_LENGTH, KEY_ID_PATTERN, KEY_PREFIX } from '../../auth/key-format.js';
import { secretHeaders } from '../secret-headers.js';
import { formatCsv, formatTable } from '../../aggregator/usage-report.js';

const help = `Usage: llm-proxy usage [filters] [--group-by KEYS] [--json | --csv]

Usage statistics from the aggregators (llm.proxy.usage): requests, success
rate, tokens, cost and latency, optionally split into groups.

Filters:
  --agent ID          metadata.agent_id, e.g. agent:sofia
  --microdao ID       metadata.microdao_id, e.g. microdao:7
  --model M           logical model
  --provider P        provider name from config.yaml
  --key ID            the id of a per-agent key (12 letters and digits; never the key itself)
  --since T           ISO 8601 timestamp or a span back from now: 30m, 24h, 7d
  --until T           the same; the range is whole UTC hours (since rounded down, until up)
Output:
  --group-by KEYS     comma-separated: agent, microdao, model, provider, key, day, hour
                      (key: the per-agent key id; "(none)" for requests without one)
  --json              the reply as JSON
  --csv               CSV, one row per group (the totals without --group-by); cost in USD to 9 decimals
Connection:
  --config PATH       config.yaml for the subject prefix and NATS credentials
                      (default: $LLM_PROXY_CONFIG, else ./config.yaml when present)
  --timeout-ms N      give up after N ms (default 10000)

Environment: NATS_URL (default nats://127.0.0.1:4222), NATS credentials as for the worker,
LLM_PROXY_SECRET (sent as X-Internal-Secret).
Errors print "error <code> (<status>): <message>" and exit with code 1.

Examples:
  llm-proxy usage --agent agent:sofia
  llm-proxy usage --microdao microdao:7 --since 7d --group-by model
  llm-proxy usage --since 2026-11-01 --until 2026-12-01 --group-by microdao,model --csv > november.csv
  llm-proxy usage --agent agent:sofia --since 30d --group-by key
`;

interface UsageArguments {
  query: UsageQuery;
  output: 'table' | 'json' | 'csv';
  configPath: string | undefined;
  timeoutMs: number;
}

export function parseUsageArguments(argv: string[], env: NodeJS.ProcessEnv = process.env): UsageArguments {
  const { values } = parseCommandLine({
    args: argv,
    allowPositionals: false,
    strict: true,
    options: {
      agent: { type: 'string' },
      microdao: { type: 'string' },
      model: { type: 'string' },
      provider: { type: 'string' },
      key: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      'group-by': { type: 'string' },
      json: { type: 'boolean', default: false },
      csv: { type: 'boolean', default: false },
      config: { type: 'string' },
      'timeout-ms': { type: 'string' },
    },
  });
  if (values.json && values.csv) throw new UsageError('choose one of --json and --csv');
  const query: UsageQuery = {};
  if (values.agent !== undefined) query.agent_id = values.agent;
  if (values.microdao !== undefined) query.microdao_id = values.microdao;
  if (values.model !== undefined) query.model = values.model;
  if (values.provider !== undefined) query.provider = values.provider;
  if (values.key !== undefined) query.key_id = parseKeyIdFlag(values.key);
  if (values.since !== undefined) query.since = values.since;
  if (values.until !== undefined) query.until = values.until;
  if (values['group-by'] !== undefined) {
    const keys = values['group-by']
      .split(',')
      .map((key) => key.trim())
      .filter((key) => key !== '');
    for (const key of keys) {
      if (!(USAGE_GROUP_KEYS as readonly string[]).includes(key))
        throw new UsageError(`--group-by: "${key}" is not one of ${USAGE_GROUP_KEYS.join(', ')}`);
    }
    if (keys.length > 0) query.group_by = keys as UsageGroupKey[];
  }
  const timeoutMs =
    parseNumberFlag('--timeout-ms', values['timeout-ms'], isPositiveInteger, 'a positive integer') ?? 10_000;
  // A config file is optional here: only its subject prefix and credential settings are used.
  const configPath =
    values.config ?? (env.LLM_PROXY_CONFIG || (existsSync(DEFAULT_CONFIG_PATH) ? configPathFromEnv(env) : undefined));
  return { query, output: values.json ? 'json' : values.csv ? 'csv' : 'table', configPath, timeoutMs };
}

/**
 * `--key`: a key id. The value is never echoed: a whole key pasted by mistake (`llmp_<id>_<secret>`)
 * must neither be printed nor sent on the bus.
 */
function parseKeyIdFlag(value: string): string {
  if (value.startsWith(KEY_PREFIX))
    throw new UsageError(
      `--key takes the key id (the ${KEY_ID_LENGTH} characters after "${KEY_PREFIX}"), not the key itself`,
    );
  if (!KEY_ID_PATTERN.test(value)) throw new UsageError(`--key: a key id is ${KEY_ID_LENGTH} letters and digits`);
  return value;
}

function describeFilters(query: UsageQuery): string {
  const parts: string[] = [];
  if (query.agent_id !== undefined) parts.push(`agent ${query.agent_id}`);
  if (query.microdao_id !== undefined) parts.push(`microdao ${query.microdao_id}`);
  if (query.model !== undefined) parts.push(`model ${query.model}`);
  if (query.provider !== undefined) parts.push(`provider ${query.provider}`);
  if (query.key_id !== undefined) parts.push(`key ${query.key_id}`);
  return parts.join(', ');
}

async function run(argv: string[]): Promise<number> {
  const parsed = parseUsageArguments(argv);
  let prefix = DEFAULT_SUBJECT_PREFIX;
  let nats: Partial<NatsConfig> = {};
  if (parsed.configPath !== undefined) {
    const config = loadConfigFile(parsed.configPath);
    prefix = config.nats.subject_prefix;
    nats = config.nats;
  }
  let connection: NatsConnection;
  try {
    connection = await connectOnce({ nats, name: 'llm-proxy-usage' });
  } catch (error) {
    process.stderr.write(
      `error cannot connect to NATS at ${natsUrlFromEnv()}: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  }
  const subject = subjectsFor(prefix).usageQuery;
  try {
    const message = await connection.request(subject, JSON.stringify(parsed.query), {
      timeout: parsed.timeoutMs,
      headers: secretHeaders(),
    });
    const body = message.json<AggregatedReply | ErrorReply>();
    if (message.headers?.get(HEADERS.serviceErrorCode) || 'error' in body) {
      const error = (body as ErrorReply).error;
      process.stderr.write(
        `error ${error?.code ?? 'internal'} (${error?.status ?? message.headers?.get(HEADERS.serviceErrorCode)}): ${error?.message ?? message.headers?.get(HEADERS.serviceError)}\n`,
      );
      return 1;
    }
    const reply = body as AggregatedReply;
    if (parsed.output === 'json') process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
    else if (parsed.output === 'csv') process.stdout.write(formatCsv(reply));
    else process.stdout.write(formatTable(reply, { filters: describeFilters(parsed.query) }));
    return 0;
  } catch (error) {
    if (error instanceof RequestError && error.isNoResponders()) {
      process.stderr.write(
        `error no_provider_available (503): no aggregator answers on ${subject} (is \`llm-proxy aggregator\` running?)\n`,
      );
      return 1;
    }
    process.stderr.write(`error upstream_timeout (504): ${error instanceof Error ? error.message : String(error)}\n`);
    return 1;
  } finally {
    await connection.close();
  }
}

export const command: Command = {
  name: 'usage',
  summary: 'usage statistics from the aggregators (table, JSON or CSV)',
  help,
  run,
};
