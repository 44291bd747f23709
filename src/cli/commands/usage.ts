/**
 * `llm-proxy usage`: asks the aggregators (`llm.proxy.usage`) for usage
 * statistics, or reads them from the PostgreSQL usage log (`--source postgres`),
 * and prints them as a table, JSON or CSV (billing exports).
 */
import { existsSync } from 'node:fs';
import { RequestError, type NatsConnection } from '@nats-io/nats-core';
import type pg from 'pg';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import {
  configPathFromEnv,
  DEFAULT_CONFIG_PATH,
  loadConfigFile,
  type NatsConfig,
  type ResolvedConfig,
} from '../../config/index.js';
import { redactUrl } from '../../config/redact-url.js';
import { POSTGRES_URL_ENV, postgresUrlProblem } from '../../config/usage-sink-schema.js';
import { DEFAULT_SUBJECT_PREFIX, HEADERS, subjectsFor } from '../../contract/subjects.js';
import {
  USAGE_GROUP_KEYS,
  USAGE_MAX_LIMIT,
  USAGE_ORDERS,
  type UsageGroupKey,
  type UsageOrder,
  type UsageQuery,
} from '../../contract/usage-query.js';
import { ProxyError, type ErrorReply } from '../../contract/errors.js';
import { parseUsageQuery, type AggregatedReply, type ParsedUsageQuery } from '../../aggregator/query.js';
import { KEY_ID_LENGTH, KEY_ID_PATTERN, KEY_PREFIX } from '../../auth/key-format.js';
import { secretHeaders } from '../secret-headers.js';
import { formatCsv, formatTable } from '../../aggregator/usage-report.js';
import { openUsageLogPool, sqlState, type UsageLogConnection } from '../../sink/pg-pool.js';
import { runUsageQueryPostgres } from '../../sink/usage-query.js';

const help = `Usage: llm-proxy usage [filters] [--group-by KEYS] [--json | --csv] [--source nats|postgres]

Usage statistics: requests, success rate, tokens, cost and latency, optionally
split into groups. From the aggregators (llm.proxy.usage, the default), or from
the PostgreSQL usage log that \`llm-proxy sink postgres\` keeps (--source postgres):
the same flags, the same numbers, the same output.

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
  --order-by O        key (default: by the group keys), or cost, tokens, requests: the largest first
  --limit N           only the first N groups (with --order-by: the top N); without it every group
                      is fetched, page by page, however many there are
Source:
  --source S          nats (default): ask the aggregators; postgres: read the usage log
  --url URL           with --source postgres: postgres://user:password@host:5432/database
                      (default: $${POSTGRES_URL_ENV}, else usage_sink.postgres.url in config.yaml)
  --schema NAME       with --source postgres: schema of the tables
                      (default: usage_sink.postgres.schema in config.yaml, else public)
Connection:
  --config PATH       config.yaml for the subject prefix and NATS credentials, or the usage log
                      (default: $LLM_PROXY_CONFIG, else ./config.yaml when present)
  --timeout-ms N      nats: give up after N ms (default 10000)

Environment: NATS_URL (default nats://127.0.0.1:4222), NATS credentials as for the worker,
LLM_PROXY_SECRET (sent as X-Internal-Secret); ${POSTGRES_URL_ENV} for --source postgres.
Errors print "error <code> (<status>): <message>" (or "error <message>" when the NATS server or
the database cannot be reached; URLs are printed without their password) and exit with code 1.

Examples:
  llm-proxy usage --agent agent:sofia
  llm-proxy usage --microdao microdao:7 --since 7d --group-by model
  llm-proxy usage --since 2026-11-01 --until 2026-12-01 --group-by microdao,model --csv > november.csv
  llm-proxy usage --agent agent:sofia --since 30d --group-by key
  llm-proxy usage --since 30d --group-by agent --order-by cost --limit 20
  llm-proxy usage --since 30d --group-by agent --csv > agents.csv
  ${POSTGRES_URL_ENV}=postgres://llmproxy@db:5432/llmproxy \\
    llm-proxy usage --source postgres --since 2026-11-01 --until 2026-12-01 --group-by microdao,model --csv
  llm-proxy usage --source postgres --url postgres://llmproxy@db:5432/llmproxy --schema usage --group-by day
`;

export const USAGE_SOURCES = ['nats', 'postgres'] as const;
export type UsageSource = (typeof USAGE_SOURCES)[number];

/** A schema name as the usage log takes it (lower-case PostgreSQL identifier). */
const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;

interface UsageArguments {
  query: UsageQuery;
  output: 'table' | 'json' | 'csv';
  configPath: string | undefined;
  timeoutMs: number;
  source: UsageSource;
  /** The usage log flags (--source postgres). */
  usageLog: UsageLogFlags;
}

/** `--url` and `--schema`, as given. */
export interface UsageLogFlags {
  url?: string;
  schema?: string;
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
      source: { type: 'string' },
      url: { type: 'string' },
      schema: { type: 'string' },
      limit: { type: 'string' },
      'order-by': { type: 'string' },
    },
  });
  if (values.json && values.csv) throw new UsageError('choose one of --json and --csv');
  const source = values.source ?? 'nats';
  if (!(USAGE_SOURCES as readonly string[]).includes(source))
    throw new UsageError(`--source must be one of ${USAGE_SOURCES.join(', ')}, not "${source}"`);
  if (source !== 'postgres' && (values.url !== undefined || values.schema !== undefined))
    throw new UsageError('--url and --schema are for --source postgres');
  const usageLog = parseUsageLogFlags(values.url, values.schema);
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
  const limit = parseNumberFlag('--limit', values.limit, isPositiveInteger, 'a positive integer');
  if (limit !== undefined) {
    if (limit > USAGE_MAX_LIMIT) throw new UsageError(`--limit must be at most ${USAGE_MAX_LIMIT}`);
    query.limit = limit;
  }
  const orderBy = values['order-by'];
  if (orderBy !== undefined) {
    if (!(USAGE_ORDERS as readonly string[]).includes(orderBy))
      throw new UsageError(`--order-by must be one of ${USAGE_ORDERS.join(', ')}, not "${orderBy}"`);
    query.order_by = orderBy as UsageOrder;
  }
  const timeoutMs =
    parseNumberFlag('--timeout-ms', values['timeout-ms'], isPositiveInteger, 'a positive integer') ?? 10_000;
  // A config file is optional here: only its subject prefix and credential settings are used.
  const configPath =
    values.config ?? (env.LLM_PROXY_CONFIG || (existsSync(DEFAULT_CONFIG_PATH) ? configPathFromEnv(env) : undefined));
  return {
    query,
    output: values.json ? 'json' : values.csv ? 'csv' : 'table',
    configPath,
    timeoutMs,
    source: source as UsageSource,
    usageLog,
  };
}

/** `--url` and `--schema` of the commands that read the usage log; a bad schema is a UsageError. */
export function parseUsageLogFlags(url: string | undefined, schema: string | undefined): UsageLogFlags {
  if (url !== undefined && url.trim() === '') throw new UsageError('--url must not be empty');
  if (schema !== undefined && !SCHEMA_NAME.test(schema))
    throw new UsageError(`--schema must be a lower-case PostgreSQL identifier (letters, digits, "_"), not "${schema}"`);
  return { ...(url === undefined ? {} : { url }), ...(schema === undefined ? {} : { schema }) };
}

/**
 * Where the usage log is: the URL from --url, else ${POSTGRES_URL_ENV}, else the config's
 * usage_sink.postgres.url; the schema from --schema, else the config's, else public. Undefined when
 * no URL is given anywhere.
 */
export function usageLogConnection(
  flags: UsageLogFlags,
  config: Pick<ResolvedConfig, 'usage_sink'> | undefined,
  env: NodeJS.ProcessEnv = process.env,
): UsageLogConnection | undefined {
  const fromFlag = flags.url !== undefined;
  const url = flags.url ?? (env[POSTGRES_URL_ENV] || undefined) ?? config?.usage_sink.postgres?.url;
  if (url === undefined) return undefined;
  const problem = postgresUrlProblem(url);
  if (problem !== undefined) throw new UsageError(`${fromFlag ? '--url' : POSTGRES_URL_ENV} ${problem}`);
  return { url, schema: flags.schema ?? config?.usage_sink.postgres?.schema ?? 'public' };
}

export const NO_USAGE_LOG_MESSAGE = `error no usage log to read: give --url, set ${POSTGRES_URL_ENV}, or set usage_sink.postgres.url in config.yaml (--config)`;

/** An error's text, with the URL's password (should a driver ever repeat it) masked. */
function errorText(error: unknown, url: string): string {
  let text: string;
  if (error instanceof AggregateError && error.message === '')
    // A host name that resolves to several addresses fails with one error per address and no message of its own.
    text = error.errors.map((each) => (each instanceof Error ? each.message : String(each))).join('; ');
  else if (error instanceof Error) text = error.message || ((error as { code?: string }).code ?? error.name);
  else text = String(error);
  text = text.replaceAll(url, redactUrl(url));
  try {
    const password = decodeURIComponent(new URL(url).password);
    if (password.length >= 3) text = text.replaceAll(password, '***');
  } catch {
    // Not a URL the WHATWG parser reads: the pg driver has refused it, with a message that does not repeat it.
  }
  return text;
}

/**
 * Opens the usage log, runs \`work\`, closes it. A failure is printed as \`error …\` naming the log by its
 * redacted URL (never the password), and gives undefined: the command exits with code 1.
 */
export async function withUsageLog<T>(
  connection: UsageLogConnection,
  work: (pool: pg.Pool) => Promise<T>,
  applicationName = 'llm-proxy-cli',
): Promise<T | undefined> {
  const where = redactUrl(connection.url);
  let pool: pg.Pool;
  try {
    pool = openUsageLogPool({ ...connection, poolSize: 1, applicationName });
  } catch (error) {
    process.stderr.write(`error cannot open the usage log at ${where}: ${errorText(error, connection.url)}\n`);
    return undefined;
  }
  try {
    return await work(pool);
  } catch (error) {
    const state = sqlState(error);
    const text = errorText(error, connection.url);
    if (state === '42P01' || state === '3F000')
      process.stderr.write(
        `error the usage log at ${where} has no usage tables in schema "${connection.schema}" (has \`llm-proxy sink postgres\` run against it?): ${text}\n`,
      );
    else if (state === undefined || state.startsWith('08') || state.startsWith('28') || state === '3D000')
      process.stderr.write(`error cannot connect to the usage log at ${where}: ${text}\n`);
    else process.stderr.write(`error the usage log at ${where} failed the query: ${text}\n`);
    return undefined;
  } finally {
    await pool.end().catch(() => undefined);
  }
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

function printReply(reply: AggregatedReply, parsed: UsageArguments): void {
  if (parsed.output === 'json') process.stdout.write(`${JSON.stringify(reply, null, 2)}\n`);
  else if (parsed.output === 'csv') process.stdout.write(formatCsv(reply));
  else process.stdout.write(formatTable(reply, { filters: describeFilters(parsed.query) }));
}

/** Groups asked for per page when the command fetches every page (well under max_payload). */
export const PAGE_SIZE = 500;

/**
 * The whole answer to a query: with --limit, the one page asked for (top-N with --order-by); without,
 * every page, fetched with limit and cursor and joined into one reply without paging fields, so that
 * a breakdown of any size comes through the bus's max_payload.
 */
export async function everyPage<E extends { code: string }>(
  query: UsageQuery,
  ask: (query: UsageQuery) => Promise<AggregatedReply | E>,
): Promise<AggregatedReply | E> {
  if (query.limit !== undefined || query.group_by === undefined) return ask(query);
  const groups: AggregatedReply['groups'] = [];
  let cursor: string | undefined;
  let first: AggregatedReply | undefined;
  do {
    const page = await ask({ ...query, limit: PAGE_SIZE, ...(cursor === undefined ? {} : { cursor }) });
    if (!('total_requests' in page)) return page;
    first ??= page;
    groups.push(...page.groups);
    cursor = page.next_cursor ?? undefined;
  } while (cursor !== undefined);
  const { total_groups: _total, next_cursor: _next, ...totals } = first as AggregatedReply;
  // Totals from the first page (each page carries them; later events may have moved them since).
  return query.order_by === undefined
    ? { ...totals, groups }
    : { ...totals, groups, total_groups: groups.length, next_cursor: null };
}

/** --source postgres: the same query, checked as an aggregator checks it, answered from the usage log. */
async function runFromPostgres(parsed: UsageArguments): Promise<number> {
  const config = parsed.configPath === undefined ? undefined : loadConfigFile(parsed.configPath);
  const connection = usageLogConnection(parsed.usageLog, config);
  if (connection === undefined) {
    process.stderr.write(`${NO_USAGE_LOG_MESSAGE}\n`);
    return 1;
  }
  let query: ParsedUsageQuery;
  try {
    query = parseUsageQuery(parsed.query, Date.now());
  } catch (error) {
    if (!(error instanceof ProxyError)) throw error;
    process.stderr.write(`error ${error.code} (${error.status}): ${error.message}\n`);
    return 1;
  }
  const reply = await withUsageLog(connection, (pool) => runUsageQueryPostgres(pool, query), 'llm-proxy-usage');
  if (reply === undefined) return 1;
  printReply(reply, parsed);
  return 0;
}

async function run(argv: string[]): Promise<number> {
  const parsed = parseUsageArguments(argv);
  if (parsed.source === 'postgres') return runFromPostgres(parsed);
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
    const ask = async (query: UsageQuery): Promise<AggregatedReply | ErrorReply['error']> => {
      const message = await connection.request(subject, JSON.stringify(query), {
        timeout: parsed.timeoutMs,
        headers: secretHeaders(),
      });
      const body = message.json<AggregatedReply | ErrorReply>();
      if (message.headers?.get(HEADERS.serviceErrorCode) || 'error' in body) {
        const error = (body as ErrorReply).error;
        return {
          code: error?.code ?? 'internal',
          status: error?.status ?? Number(message.headers?.get(HEADERS.serviceErrorCode)),
          message: error?.message ?? message.headers?.get(HEADERS.serviceError) ?? '',
          retryable: error?.retryable ?? false,
        };
      }
      return body as AggregatedReply;
    };
    const reply = await everyPage(parsed.query, ask);
    if (!('total_requests' in reply)) {
      process.stderr.write(`error ${reply.code} (${reply.status}): ${reply.message}\n`);
      return 1;
    }
    printReply(reply, parsed);
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
  summary: 'usage statistics from the aggregators or the PostgreSQL log (table, JSON or CSV)',
  help,
  run,
};
