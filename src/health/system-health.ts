/**
 * The system's health as seen from the bus (`llm-proxy health`, and the operations page): NATS, the
 * workers and their usage-event queues, the usage stream, the limits store, the deployments' cooldowns,
 * the aggregator and the PostgreSQL usage sinks' lag. Each check gives ok/fail and a one-line detail; nothing here prints or exits.
 */
import { jsOptions } from '../bus/jetstream-domain.js';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import type { MsgHdrs, NatsConnection } from '@nats-io/nats-core';
import type { ResolvedConfig } from '../config/index.js';
import { createClient } from '../client/index.js';
import type { ErrorReply } from '../contract/errors.js';
import type { NodeInfo } from '../contract/models.js';
import { subjectsFor } from '../contract/subjects.js';
import { redactRedisUrl, redisUrlFor } from '../limits/index.js';
import type { DeploymentHealth } from '../router/types.js';
import type { WorkerStats } from '../worker/counters.js';
import type { WorkerModelsReply } from '../worker/endpoints.js';
import { POSTGRES_URL_ENV, postgresSinkSchema } from '../config/usage-sink-schema.js';
import { DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_MAX_PENDING, SINK_MAX_LAG } from './defaults.js';

export { DEFAULT_HEALTH_TIMEOUT_MS, DEFAULT_MAX_PENDING } from './defaults.js';

/**
 * The micro-service names the workers and aggregators register (`SERVICE_NAME` in src/worker/worker.ts,
 * `AGGREGATOR_SERVICE_NAME` in src/aggregator/aggregator.ts; test/health-cli.test.ts checks they agree),
 * written here so that a health check does not load the worker or the aggregator.
 */
export const WORKER_SERVICE_NAME = 'llm-proxy';
export const AGGREGATOR_SERVICE_NAME = 'llm-usage';
/** After the first answer to a `$SRV.PING`, how long a silence ends the wait for more. */
const PING_STALL_MS = 300;

export const HEALTH_CHECK_NAMES = [
  'nats',
  'workers',
  'usage_stream',
  'limits_store',
  'deployments',
  'aggregator',
  'usage_sink',
] as const;
export type HealthCheckName = (typeof HEALTH_CHECK_NAMES)[number];

/** One worker as its `$SRV.STATS` shows it (`null` counts: it answered PING but not STATS). */
export interface WorkerHealth {
  id: string;
  pending: number | null;
  dropped: number | null;
  dead_lettered: number | null;
  in_flight: number | null;
  /** Why its counts are null. */
  stats_error?: string;
}

export interface HealthCheck {
  name: HealthCheckName;
  ok: boolean;
  /** Worth a look but not a failure: no aggregator, usage events dropped or dead-lettered since a worker started. */
  warning?: boolean;
  /** One line, for people. */
  detail: string;
  /** nats: the server's version. */
  server_version?: string;
  /** workers: each worker that answered `$SRV.PING`. */
  workers?: WorkerHealth[];
  /** usage_stream: the stream's name and state. */
  stream?: string;
  messages?: number;
  last_seq?: number;
  /** limits_store: the backend checked. */
  backend?: string;
  /** deployments: the worker whose view this is when one answered (cooldowns are per worker), and the models with no deployment left. */
  worker_id?: string;
  /** deployments: every worker whose deployments were checked. */
  worker_ids?: string[];
  cooling_down?: string[];
  /** aggregator: how many answered `$SRV.PING`. */
  aggregators?: number;
  /** usage_sink: the PostgreSQL sinks' durable consumer, and the events it has not committed. */
  durable?: string;
  lag?: number;
}

export interface HealthReport {
  status: 'ok' | 'fail';
  checks: HealthCheck[];
}

export interface SystemHealthOptions {
  /** An open connection, or undefined when connecting failed (then `connectError` says why). */
  connection: NatsConnection | undefined;
  connectError?: string;
  config: ResolvedConfig;
  timeoutMs?: number;
  maxPending?: number;
  /** Sent with `llm.proxy.models` (`X-Internal-Secret`, `Authorization`), which the workers may require. */
  headers?: MsgHdrs;
  /** For `REDIS_URL` when `limits.redis_url` is unset. */
  env?: NodeJS.ProcessEnv;
}

const message = (error: unknown): string => (error instanceof Error ? error.message : String(error));

function withTimeout<T>(promise: Promise<T>, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${timeoutMs} ms`)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

const isNoResponders = (error: unknown): boolean =>
  error instanceof Error && /no responders|503/i.test(`${error.name} ${error.message}`);

/** The ids of the services called `name` that answer `$SRV.PING.<name>` (waits for more until they fall silent). */
async function pingService(connection: NatsConnection, name: string, timeoutMs: number): Promise<string[]> {
  const ids: string[] = [];
  try {
    const replies = await connection.requestMany(`$SRV.PING.${name}`, '', {
      strategy: 'stall',
      stall: PING_STALL_MS,
      maxWait: timeoutMs,
    });
    for await (const reply of replies) {
      const id = (reply.json() as { id?: unknown }).id;
      if (typeof id === 'string') ids.push(id);
    }
  } catch (error) {
    // No responders is an answer (none); anything else after some answers keeps those.
    if (!isNoResponders(error) && ids.length === 0) throw error;
  }
  return ids;
}

async function checkNats(options: SystemHealthOptions, timeoutMs: number): Promise<HealthCheck> {
  const { connection } = options;
  if (connection === undefined) return { name: 'nats', ok: false, detail: options.connectError ?? 'not connected' };
  if (connection.isClosed()) return { name: 'nats', ok: false, detail: 'the connection is closed' };
  try {
    const rtt = await withTimeout(connection.rtt(), timeoutMs, 'ping');
    const version = connection.info?.version ?? 'unknown';
    return {
      name: 'nats',
      ok: true,
      detail: `connected to ${connection.getServer()} (nats-server ${version}, round trip ${Math.round(rtt)} ms)`,
      server_version: version,
    };
  } catch (error) {
    return { name: 'nats', ok: false, detail: `connected to ${connection.getServer()} but ${message(error)}` };
  }
}

async function workerStatsOf(connection: NatsConnection, id: string, timeoutMs: number): Promise<WorkerHealth> {
  const unknown = (reason: string): WorkerHealth => ({
    id,
    pending: null,
    dropped: null,
    dead_lettered: null,
    in_flight: null,
    stats_error: reason,
  });
  try {
    const reply = await connection.request(`$SRV.STATS.${WORKER_SERVICE_NAME}.${id}`, '', { timeout: timeoutMs });
    const body = reply.json() as { endpoints?: Array<{ data?: unknown }> };
    const data = body.endpoints?.find((endpoint) => endpoint.data != null)?.data as Partial<WorkerStats> | undefined;
    const usage = data?.usage_events;
    if (usage === undefined) return unknown('its $SRV.STATS carries no usage_events');
    return {
      id,
      pending: usage.pending,
      dropped: usage.dropped,
      dead_lettered: usage.dead_lettered,
      in_flight: data?.in_flight ?? null,
    };
  } catch (error) {
    return unknown(`$SRV.STATS: ${message(error)}`);
  }
}

async function checkWorkers(connection: NatsConnection, timeoutMs: number, maxPending: number): Promise<HealthCheck> {
  let ids: string[];
  try {
    ids = await pingService(connection, WORKER_SERVICE_NAME, timeoutMs);
  } catch (error) {
    return { name: 'workers', ok: false, detail: `$SRV.PING.${WORKER_SERVICE_NAME}: ${message(error)}`, workers: [] };
  }
  if (ids.length === 0)
    return {
      name: 'workers',
      ok: false,
      detail: `no worker answered $SRV.PING.${WORKER_SERVICE_NAME} within ${timeoutMs} ms`,
      workers: [],
    };
  const workers = await Promise.all(ids.map((id) => workerStatsOf(connection, id, timeoutMs)));
  const silent = workers.filter((worker) => worker.pending === null);
  const over = workers.filter((worker) => worker.pending !== null && worker.pending >= maxPending);
  const sum = (key: 'dropped' | 'dead_lettered') => workers.reduce((total, worker) => total + (worker[key] ?? 0), 0);
  const dropped = sum('dropped');
  const deadLettered = sum('dead_lettered');
  const pending = workers.map((worker) => (worker.pending === null ? '?' : String(worker.pending))).join(', ');
  const parts = [
    `${ids.length} answering`,
    `usage events pending ${pending} (limit ${maxPending})`,
    `dropped ${dropped}, dead-lettered ${deadLettered} since they started`,
  ];
  if (over.length > 0)
    parts.push(`at or over the limit: ${over.map((worker) => `${worker.id} (${worker.pending})`).join(', ')}`);
  if (silent.length > 0)
    parts.push(`no counts from ${silent.map((worker) => `${worker.id} (${worker.stats_error})`).join(', ')}`);
  const ok = over.length === 0 && silent.length === 0;
  // The counters are totals since each worker started, so an old loss would fail every later check
  // until a restart: a loss is flagged, not failed (the worker logged each event in full).
  const warning = ok && dropped + deadLettered > 0;
  return { name: 'workers', ok, ...(warning ? { warning } : {}), detail: parts.join('; '), workers };
}

async function checkUsageStream(connection: NatsConnection, config: ResolvedConfig, timeoutMs: number) {
  const name = config.nats.usage_stream.name;
  try {
    const manager = await withTimeout(
      jetstreamManager(connection, { ...jsOptions(connection), timeout: timeoutMs }),
      timeoutMs,
      'JetStream',
    );
    const info = await manager.streams.info(name);
    const { messages, last_seq } = info.state;
    return {
      name: 'usage_stream',
      ok: true,
      detail: `${name}: ${messages} messages, last sequence ${last_seq}`,
      stream: name,
      messages,
      last_seq,
    } satisfies HealthCheck;
  } catch (error) {
    const missing = /stream not found/i.test(message(error));
    return {
      name: 'usage_stream',
      ok: false,
      detail: missing
        ? `${name}: stream not found (a worker creates it at start and when it next publishes)`
        : `${name}: ${message(error)}`,
      stream: name,
    } satisfies HealthCheck;
  }
}

async function pingRedis(url: string, timeoutMs: number): Promise<number> {
  const { Redis } = await import('ioredis');
  const client = new Redis(url, {
    lazyConnect: true,
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  client.on('error', () => undefined);
  const started = performance.now();
  try {
    await withTimeout(client.connect(), timeoutMs, 'connect');
    const answer = await client.ping();
    if (answer !== 'PONG') throw new Error(`PING answered ${answer}`);
    return performance.now() - started;
  } finally {
    client.disconnect();
  }
}

async function checkLimitsStore(options: SystemHealthOptions, timeoutMs: number): Promise<HealthCheck> {
  const limits = options.config.limits;
  const result = (ok: boolean, detail: string): HealthCheck => ({
    name: 'limits_store',
    ok,
    detail,
    backend: limits.backend,
  });
  if (!limits.enabled) return result(true, 'limits are off (limits.enabled: false)');
  if (limits.backend === 'memory') return result(true, 'memory: per worker, nothing to reach');
  if (limits.backend === 'redis') {
    const url = redisUrlFor(limits, options.env ?? process.env);
    try {
      const ms = await pingRedis(url, timeoutMs);
      return result(true, `redis ${redactRedisUrl(url)}: PONG in ${Math.max(1, Math.round(ms))} ms`);
    } catch (error) {
      return result(false, `redis ${redactRedisUrl(url)}: ${message(error)}`);
    }
  }
  const { connection } = options;
  if (connection === undefined)
    return result(false, `nats bucket ${limits.nats_bucket}: not checked, no NATS connection`);
  try {
    // As the workers open it (src/limits/nats-store.ts), but without creating it: a missing bucket is news.
    const kv = await new Kvm(jetstream(connection, { ...jsOptions(connection), timeout: timeoutMs })).open(
      limits.nats_bucket,
    );
    const status = await withTimeout(kv.status(), timeoutMs, 'bucket status');
    return result(true, `nats bucket ${limits.nats_bucket}: ${status.values} keys`);
  } catch (error) {
    const missing = /stream not found/i.test(message(error));
    return result(
      false,
      `nats bucket ${limits.nats_bucket}: ${missing ? 'not found (a worker creates it at start)' : message(error)}`,
    );
  }
}

/**
 * Every worker's deployments (`llm.proxy.nodes`, issue 19: workers on different nodes serve different
 * models, so one worker's view is not the system's); a model fails when no worker has a deployment of
 * it that is not cooling down. Workers that do not answer `llm.proxy.nodes` (older ones, or a refusal):
 * one worker's answer on `llm.proxy.models`, as before.
 */
async function checkDeployments(
  connection: NatsConnection,
  config: ResolvedConfig,
  timeoutMs: number,
  headers: MsgHdrs | undefined,
): Promise<HealthCheck> {
  const subjects = subjectsFor(config.nats.subject_prefix);
  const nodes = await gatherNodes(connection, config.nats.subject_prefix, timeoutMs, headers);
  if (nodes.length > 0) {
    const ids = nodes.map((node) => node.worker_id).sort();
    const verdict = deploymentsVerdict(
      nodes.flatMap(deploymentRows),
      `as ${nodes.length} worker${nodes.length === 1 ? '' : 's'} see${nodes.length === 1 ? 's' : ''} them`,
    );
    return { ...verdict, ...(ids.length === 1 ? { worker_id: ids[0]! } : {}), worker_ids: ids };
  }
  const subject = subjects.models;
  let reply: WorkerModelsReply | ErrorReply;
  try {
    const answer = await connection.request(subject, JSON.stringify({ health: true }), {
      timeout: timeoutMs,
      ...(headers === undefined ? {} : { headers }),
    });
    reply = answer.json() as WorkerModelsReply | ErrorReply;
  } catch (error) {
    return {
      name: 'deployments',
      ok: false,
      detail: isNoResponders(error) ? `no worker answered ${subject}` : `${subject}: ${message(error)}`,
    };
  }
  if ('error' in reply)
    return {
      name: 'deployments',
      ok: false,
      detail: `${subject}: ${reply.error.code} (${reply.error.status}): ${reply.error.message}`,
    };
  const verdict = deploymentsVerdict(reply.health ?? [], `as worker ${reply.worker_id} sees them`);
  return { ...verdict, worker_id: reply.worker_id, worker_ids: [reply.worker_id] };
}

/** The workers' answers on `llm.proxy.nodes`, as the typed client gathers them (none: nobody answered, or only refusals). */
async function gatherNodes(
  connection: NatsConnection,
  subjectPrefix: string,
  timeoutMs: number,
  headers: MsgHdrs | undefined,
): Promise<NodeInfo[]> {
  const client = createClient({ connection, subjectPrefix });
  const extra =
    headers === undefined ? undefined : Object.fromEntries(headers.keys().map((name) => [name, headers.get(name)]));
  try {
    return await client.nodes({ timeoutMs, ...(extra === undefined ? {} : { headers: extra }) });
  } catch {
    // No responders, or every worker refused: the caller asks llm.proxy.models instead.
    return [];
  }
}

/** Rows as a worker writes them; anything else (a broken or foreign responder on llm.proxy.nodes) is left out. */
function deploymentRows(node: NodeInfo): DeploymentHealth[] {
  const rows: unknown[] = Array.isArray(node.health) ? node.health : [];
  return rows.filter(
    (row): row is DeploymentHealth =>
      row !== null &&
      typeof row === 'object' &&
      typeof (row as DeploymentHealth).model === 'string' &&
      ((row as DeploymentHealth).state === 'healthy' || (row as DeploymentHealth).state === 'cooling_down'),
  );
}

/** Deployment rows (one worker's, or every worker's): a model fails when every row of it is cooling down. */
function deploymentsVerdict(rows: DeploymentHealth[], seen: string): HealthCheck {
  const byModel = new Map<string, DeploymentHealth[]>();
  for (const row of rows) byModel.set(row.model, [...(byModel.get(row.model) ?? []), row]);
  const coolingDown = [...byModel]
    .filter(([, modelRows]) => modelRows.every((row) => row.state === 'cooling_down'))
    .map(([model]) => model)
    .sort();
  const cooling = rows.filter((row) => row.state === 'cooling_down').length;
  const base = { name: 'deployments' as const, cooling_down: coolingDown };
  if (coolingDown.length > 0) {
    const until = (model: string) =>
      (byModel.get(model) ?? [])
        .map((row) => row.cooldown_until)
        .filter((value): value is string => value !== null)
        .sort()[0];
    return {
      ...base,
      ok: false,
      detail: `every deployment cooling down: ${coolingDown.map((model) => `${model} (until ${until(model) ?? '?'})`).join(', ')} (${seen})`,
    };
  }
  return {
    ...base,
    ok: true,
    detail: `${byModel.size} models, ${rows.length} deployments, ${cooling} cooling down (${seen})`,
  };
}

async function checkAggregator(connection: NatsConnection, timeoutMs: number): Promise<HealthCheck> {
  try {
    const ids = await pingService(connection, AGGREGATOR_SERVICE_NAME, timeoutMs);
    if (ids.length === 0)
      return {
        name: 'aggregator',
        ok: true,
        warning: true,
        detail: `no aggregator answered $SRV.PING.${AGGREGATOR_SERVICE_NAME} (usage queries get no answer; events wait in the stream)`,
        aggregators: 0,
      };
    return { name: 'aggregator', ok: true, detail: `${ids.length} answering`, aggregators: ids.length };
  } catch (error) {
    return {
      name: 'aggregator',
      ok: true,
      warning: true,
      detail: `$SRV.PING.${AGGREGATOR_SERVICE_NAME}: ${message(error)}`,
      aggregators: 0,
    };
  }
}

/**
 * The PostgreSQL usage log's copy, from its sinks' shared durable consumer on the usage stream: how many
 * events they have not committed. Not configured and not running is fine; configured (a URL in config or
 * the environment) and never run, or far behind, is a warning: events wait in the stream, nothing is lost.
 */
async function checkUsageSink(
  connection: NatsConnection,
  config: ResolvedConfig,
  timeoutMs: number,
  env: NodeJS.ProcessEnv,
): Promise<HealthCheck> {
  const durable = (config.usage_sink.postgres ?? postgresSinkSchema.parse({})).durable_name;
  const configured = config.usage_sink.postgres?.url !== undefined || Boolean(env[POSTGRES_URL_ENV]);
  const stream = config.nats.usage_stream.name;
  try {
    const manager = await withTimeout(jetstreamManager(connection, jsOptions(connection)), timeoutMs, 'JetStream');
    const info = await withTimeout(manager.consumers.info(stream, durable), timeoutMs, `${stream} consumer ${durable}`);
    const lag = info.num_pending + info.num_ack_pending;
    const behind = lag > SINK_MAX_LAG;
    return {
      name: 'usage_sink',
      ok: true,
      ...(behind ? { warning: true } : {}),
      detail: `durable ${durable}: ${lag} events not yet in PostgreSQL${behind ? ` (more than ${SINK_MAX_LAG})` : ''}`,
      durable,
      lag,
    };
  } catch (error) {
    const absent = /consumer not found/i.test(message(error));
    if (absent && !configured)
      return {
        name: 'usage_sink',
        ok: true,
        detail: 'no PostgreSQL usage log configured (usage_sink.postgres.url)',
        durable,
      };
    return {
      name: 'usage_sink',
      ok: true,
      warning: true,
      detail: absent
        ? `no sink has run: ${stream} has no durable ${durable} (\`llm-proxy sink postgres\` copies the events; they wait in the stream)`
        : `${stream} consumer ${durable}: ${message(error)}`,
      durable,
    };
  }
}

/** NATS, then every other check side by side; each waits at most `timeoutMs` (a STATS after a PING: twice that). */
export async function checkSystemHealth(options: SystemHealthOptions): Promise<HealthReport> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_HEALTH_TIMEOUT_MS;
  const maxPending = options.maxPending ?? DEFAULT_MAX_PENDING;
  const { connection, config } = options;
  const notChecked = (name: HealthCheckName): Promise<HealthCheck> =>
    Promise.resolve({ name, ok: false, detail: 'not checked: no NATS connection' });
  // NATS first, alone, so that its round trip is the server's and not the other checks' start-up.
  const nats = await checkNats(options, timeoutMs);
  const checks = await Promise.all([
    nats,
    connection === undefined ? notChecked('workers') : checkWorkers(connection, timeoutMs, maxPending),
    connection === undefined ? notChecked('usage_stream') : checkUsageStream(connection, config, timeoutMs),
    checkLimitsStore(options, timeoutMs),
    connection === undefined
      ? notChecked('deployments')
      : checkDeployments(connection, config, timeoutMs, options.headers),
    connection === undefined ? notChecked('aggregator') : checkAggregator(connection, timeoutMs),
    connection === undefined
      ? notChecked('usage_sink')
      : checkUsageSink(connection, config, timeoutMs, options.env ?? process.env),
  ]);
  return { status: checks.every((check) => check.ok) ? 'ok' : 'fail', checks };
}
