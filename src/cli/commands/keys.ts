/**
 * `llm-proxy keys`: the admin side of per-agent keys (issue 15). Creates, lists, shows, revokes and
 * rotates the records of the key store (a JetStream KV bucket, `auth.keys_bucket`), which every
 * worker watches. A key is printed once, when it is created or rotated; only its SHA-256 is stored,
 * and neither the key nor the hash is ever printed again.
 */
import { existsSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import {
  ConfigError,
  configPathFromEnv,
  DEFAULT_CONFIG_PATH,
  loadConfigFile,
  parseDuration,
  type ResolvedConfig,
} from '../../config/index.js';
import type { LimitSetConfig } from '../../config/limits-schema.js';
import { redactUrl } from '../../config/redact-url.js';
import { isSafeText, MAX_ID_LENGTH } from '../../contract/client-ids.js';
import { KEY_ID_PATTERN, parseKey } from '../../auth/key-format.js';
import { KeyStore, KeyStoreError, summarize, type KeySummary } from '../../auth/key-store.js';
import { tableLines } from '../../format/table.js';

const help = `Usage: llm-proxy keys <create|list|show|revoke|rotate> [options]

Per-agent keys (auth.mode keys or mixed): each key names its agent (and
microDAO), may be limited to some models and carry its own limits, and is
checked by every worker against the key store (the JetStream KV bucket
auth.keys_bucket, default LLM_KEYS). A key is shown once, when it is created
or rotated: only its SHA-256 is stored, so a lost key cannot be recovered,
only rotated.

Commands:
  create --agent ID [options]   a new key (printed once)
      --microdao ID             the key's microDAO (metadata.microdao_id)
      --models A,B              logical models the key may use (default: every model)
      --rpm N  --tpm N  --concurrent N
                                the key's own rate limits (positive integers)
      --daily-usd X  --monthly-usd X
                                the key's own budgets in USD (0 or more)
                                (a key's limits apply on top of its agent's and microDAO's)
      --expires D               the key expires after D: 90s, 30m, 12h, 30d, 4w (default: never)
      --note TEXT               a note for people (who holds the key, a ticket)
  list [--agent ID]             every key (or one agent's): id, agent, microDAO,
                                models, limits, status (active/revoked/expired),
                                expiry, note; never a key or a hash
  show ID                       one key's record
  revoke ID                     refuse the key (and its rotated-out predecessors) at once
  rotate ID [--grace D]         a new key for the same id (printed once); the old key
                                stays valid for D (default 1h; --grace 0: not at all)

Options of every command:
  --json              the result as JSON
  --config PATH       the workers' config.yaml, for auth.keys_bucket, the models and the
                      NATS credentials (default: $LLM_PROXY_CONFIG, else ./config.yaml)
  --nats URL          NATS server URL(s), comma-separated (default: $NATS_URL, else nats://127.0.0.1:4222)

Environment: NATS_URL and NATS credentials as for the worker (an admin's own credentials
need the right to write the bucket's subjects, $KV.<bucket>.>, and JetStream's API).
Exit codes: 0 done, 1 no such key or the key store cannot be reached, 2 bad arguments.

Examples:
  llm-proxy keys create --agent agent:sofia --microdao microdao:7 --models gpt-4.1-mini --rpm 30 --expires 90d --note "sofia, prod"
  llm-proxy keys list --agent agent:sofia
  llm-proxy keys show 3kT9xQ2mPzL0 --json
  llm-proxy keys rotate 3kT9xQ2mPzL0 --grace 24h
  llm-proxy keys revoke 3kT9xQ2mPzL0
`;

const SUBCOMMANDS = ['create', 'list', 'show', 'revoke', 'rotate'] as const;
type Subcommand = (typeof SUBCOMMANDS)[number];

/** What `--grace` is when not given. */
const DEFAULT_GRACE = '1h';
/** The latest time a record can hold (its timestamps are ISO 8601 with a four-digit year). */
const LATEST_TIME = Date.UTC(9999, 11, 31, 23, 59, 59);
const MAX_NOTE_LENGTH = 1_000;
const NOTE_COLUMN_WIDTH = 40;

interface CommonArguments {
  json: boolean;
  configPath: string;
  /** `--nats`; undefined: NATS_URL, else the default. */
  servers: string | undefined;
}

export interface CreateArguments extends CommonArguments {
  subcommand: 'create';
  agentId: string;
  microdaoId: string | undefined;
  models: string[] | undefined;
  limits: LimitSetConfig;
  expires: { text: string; ms: number } | undefined;
  note: string | undefined;
}

export interface ListArguments extends CommonArguments {
  subcommand: 'list';
  agentId: string | undefined;
}

export interface OneKeyArguments extends CommonArguments {
  subcommand: 'show' | 'revoke';
  id: string;
}

export interface RotateArguments extends CommonArguments {
  subcommand: 'rotate';
  id: string;
  grace: { text: string; ms: number };
}

export type KeysArguments = CreateArguments | ListArguments | OneKeyArguments | RotateArguments;

const COMMON_OPTIONS = {
  json: { type: 'boolean', default: false },
  config: { type: 'string' },
  nats: { type: 'string' },
} as const;

/** An agent or microDAO id: the rules a request's metadata.agent_id / microdao_id is held to. */
function checkId(flag: string, value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value.length === 0 || value.length > MAX_ID_LENGTH || !isSafeText(value))
    throw new UsageError(
      `${flag} must be 1-${MAX_ID_LENGTH} characters without control characters, e.g. ${flag === '--microdao' ? 'microdao:7' : 'agent:sofia'}`,
    );
  return value;
}

/** A key id given as the one positional argument of show/revoke/rotate. */
function checkKeyId(subcommand: Subcommand, positionals: string[]): string {
  if (positionals.length === 0) throw new UsageError(`keys ${subcommand} needs a key id, e.g. 3kT9xQ2mPzL0`);
  if (positionals.length > 1)
    throw new UsageError(`keys ${subcommand} takes one key id, got ${positionals.length} arguments`);
  const id = positionals[0] as string;
  // A whole key pasted where its id belongs: named by its id only (the key is not echoed).
  const idOfKey = parseKey(id);
  if (idOfKey !== undefined)
    throw new UsageError(`that is a key, not a key id: its id is ${idOfKey} (llm-proxy keys ${subcommand} ${idOfKey})`);
  if (!KEY_ID_PATTERN.test(id))
    throw new UsageError(`"${printable(id)}" is not a key id (12 letters and digits, e.g. 3kT9xQ2mPzL0)`);
  return id;
}

/** Text from the command line, fit to echo in a message (control characters escaped, cut when long). */
function printable(text: string): string {
  const shown = JSON.stringify(text.length > 64 ? `${text.slice(0, 64)}…` : text);
  return shown.slice(1, -1);
}

function checkDuration(flag: string, value: string, allowZero: boolean): { text: string; ms: number } {
  const ms = value.trim() === '0' ? 0 : parseDuration(value);
  const example = allowZero ? '90s, 30m, 1h, 30d, 4w, or 0' : '90s, 30m, 12h, 30d, 4w';
  if (ms === undefined || !Number.isFinite(ms) || (!allowZero && ms <= 0))
    throw new UsageError(`${flag} must be a duration such as ${example}, got "${printable(value)}"`);
  if (Date.now() + ms > LATEST_TIME) throw new UsageError(`${flag} ${printable(value)} ends after the year 9999`);
  return { text: value.trim(), ms };
}

function checkModelList(value: string | undefined): string[] | undefined {
  if (value === undefined) return undefined;
  const models = [
    ...new Set(
      value
        .split(',')
        .map((model) => model.trim())
        .filter((model) => model !== ''),
    ),
  ];
  if (models.length === 0) throw new UsageError('--models needs at least one model, e.g. --models gpt-4.1-mini');
  return models;
}

function checkNote(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  if (value.length > MAX_NOTE_LENGTH || !isSafeText(value))
    throw new UsageError(`--note must be at most ${MAX_NOTE_LENGTH} characters, without control characters`);
  return value;
}

function configPathOf(config: string | undefined, env: NodeJS.ProcessEnv): string {
  if (config === undefined && !env.LLM_PROXY_CONFIG && !existsSync(DEFAULT_CONFIG_PATH))
    throw new UsageError("no config: pass --config with the workers' config.yaml (or set LLM_PROXY_CONFIG)");
  return config ?? configPathFromEnv(env);
}

export function parseKeysArguments(argv: string[], env: NodeJS.ProcessEnv = process.env): KeysArguments {
  const [subcommand, ...rest] = argv;
  if (subcommand === undefined || subcommand.startsWith('-'))
    throw new UsageError(`keys needs a command: ${SUBCOMMANDS.join(', ')} (llm-proxy keys --help)`);
  if (!(SUBCOMMANDS as readonly string[]).includes(subcommand))
    throw new UsageError(`keys: unknown command "${printable(subcommand)}" (one of ${SUBCOMMANDS.join(', ')})`);

  if (subcommand === 'create') {
    const { values } = parseCommandLine({
      args: rest,
      allowPositionals: false,
      strict: true,
      options: {
        ...COMMON_OPTIONS,
        agent: { type: 'string' },
        microdao: { type: 'string' },
        models: { type: 'string' },
        rpm: { type: 'string' },
        tpm: { type: 'string' },
        concurrent: { type: 'string' },
        'daily-usd': { type: 'string' },
        'monthly-usd': { type: 'string' },
        expires: { type: 'string' },
        note: { type: 'string' },
      },
    });
    if (values.agent === undefined) throw new UsageError('--agent is required, e.g. --agent agent:sofia');
    const positive = (flag: string, value: string | undefined) =>
      parseNumberFlag(flag, value, (n) => isPositiveInteger(n) && Number.isSafeInteger(n), 'a positive integer');
    const usd = (flag: string, value: string | undefined) =>
      parseNumberFlag(flag, value, (n) => n >= 0, 'a number of USD, 0 or more');
    const limits: LimitSetConfig = {};
    const rpm = positive('--rpm', values.rpm);
    const tpm = positive('--tpm', values.tpm);
    const concurrent = positive('--concurrent', values.concurrent);
    const dailyUsd = usd('--daily-usd', values['daily-usd']);
    const monthlyUsd = usd('--monthly-usd', values['monthly-usd']);
    if (rpm !== undefined) limits.rpm = rpm;
    if (tpm !== undefined) limits.tpm = tpm;
    if (concurrent !== undefined) limits.concurrent = concurrent;
    if (dailyUsd !== undefined) limits.daily_usd = dailyUsd;
    if (monthlyUsd !== undefined) limits.monthly_usd = monthlyUsd;
    return {
      subcommand,
      agentId: checkId('--agent', values.agent) as string,
      microdaoId: checkId('--microdao', values.microdao),
      models: checkModelList(values.models),
      limits,
      expires: values.expires === undefined ? undefined : checkDuration('--expires', values.expires, false),
      note: checkNote(values.note),
      json: values.json,
      configPath: configPathOf(values.config, env),
      servers: values.nats,
    };
  }

  if (subcommand === 'list') {
    const { values } = parseCommandLine({
      args: rest,
      allowPositionals: false,
      strict: true,
      options: { ...COMMON_OPTIONS, agent: { type: 'string' } },
    });
    return {
      subcommand,
      agentId: checkId('--agent', values.agent),
      json: values.json,
      configPath: configPathOf(values.config, env),
      servers: values.nats,
    };
  }

  if (subcommand === 'rotate') {
    const { values, positionals } = parseCommandLine({
      args: rest,
      allowPositionals: true,
      strict: true,
      options: { ...COMMON_OPTIONS, grace: { type: 'string' } },
    });
    return {
      subcommand,
      id: checkKeyId(subcommand, positionals),
      grace: checkDuration('--grace', values.grace ?? DEFAULT_GRACE, true),
      json: values.json,
      configPath: configPathOf(values.config, env),
      servers: values.nats,
    };
  }

  const { values, positionals } = parseCommandLine({
    args: rest,
    allowPositionals: true,
    strict: true,
    options: COMMON_OPTIONS,
  });
  return {
    subcommand: subcommand as 'show' | 'revoke',
    id: checkKeyId(subcommand as Subcommand, positionals),
    json: values.json,
    configPath: configPathOf(values.config, env),
    servers: values.nats,
  };
}

/** The config, its problems as usage errors (it is an argument of the command). */
function loadConfig(path: string): ResolvedConfig {
  try {
    return loadConfigFile(path);
  } catch (error) {
    if (error instanceof ConfigError) throw new UsageError(error.message);
    throw error;
  }
}

function checkModelsExist(models: string[] | undefined, config: ResolvedConfig): void {
  if (models === undefined) return;
  const unknown = models.filter((model) => !config.models.has(model));
  if (unknown.length === 0) return;
  const known = [...config.models.keys()];
  throw new UsageError(
    `--models: unknown model${unknown.length > 1 ? 's' : ''} ${unknown.map((model) => `"${printable(model)}"`).join(', ')} ` +
      `(${config.source} has ${known.length === 0 ? 'no models' : known.join(', ')})`,
  );
}

// ---- Output -------------------------------------------------------------------------------------

/** `2026-05-01T12:00:00Z`: an ISO time without its milliseconds. */
function formatTime(iso: string): string {
  return iso.replace(/\.\d{3}Z$/, 'Z');
}

function formatLimits(limits: LimitSetConfig): string {
  const parts: string[] = [];
  for (const name of ['rpm', 'tpm', 'concurrent', 'daily_usd', 'monthly_usd'] as const) {
    const value = limits[name];
    if (value !== undefined) parts.push(`${name}=${value === null ? 'none' : value}`);
  }
  return parts.length === 0 ? '-' : parts.join(' ');
}

function cut(text: string, width: number): string {
  return text.length > width ? `${text.slice(0, width - 1)}…` : text;
}

/** One key's fields, one a line (`show`, and after `create`, `rotate` and `revoke`). */
export function formatSummary(summary: KeySummary): string {
  const rows: Array<[string, string]> = [
    ['id', summary.id],
    ['agent', summary.agent_id],
    ['microdao', summary.microdao_id ?? '-'],
    ['models', summary.models === null ? 'all' : summary.models.join(', ')],
    [
      'limits',
      formatLimits(summary.limits) === '-' ? "- (the agent's and microDAO's apply)" : formatLimits(summary.limits),
    ],
    ['status', summary.status],
    ['created', formatTime(summary.created_at)],
    ['expires', summary.expires_at === null ? 'never' : formatTime(summary.expires_at)],
  ];
  if (summary.revoked_at !== null) rows.push(['revoked', formatTime(summary.revoked_at)]);
  if (summary.grace_until.length > 0)
    rows.push(['old key', `valid until ${summary.grace_until.map(formatTime).join(', ')} (rotated out)`]);
  rows.push(['note', summary.note ?? '-']);
  return `${rows.map(([name, value]) => `  ${name.padEnd(9)} ${value}`).join('\n')}\n`;
}

export function formatKeyTable(summaries: KeySummary[]): string {
  const withGrace = summaries.some((summary) => summary.grace_until.length > 0);
  const header = ['id', 'agent', 'microdao', 'models', 'limits', 'status', 'expires'];
  if (withGrace) header.push('old key until');
  header.push('note');
  const rows = summaries.map((summary) => {
    const row = [
      summary.id,
      summary.agent_id,
      summary.microdao_id ?? '-',
      summary.models === null ? 'all' : summary.models.join(','),
      formatLimits(summary.limits),
      summary.status,
      summary.expires_at === null ? 'never' : formatTime(summary.expires_at),
    ];
    if (withGrace) row.push(summary.grace_until.length === 0 ? '-' : summary.grace_until.map(formatTime).join(', '));
    row.push(summary.note === null ? '-' : cut(summary.note, NOTE_COLUMN_WIDTH));
    return row;
  });
  return `${tableLines(header, rows).join('\n')}\n`;
}

/** The key on a line of its own, and that it is not shown again. */
function formatNewKey(key: string, id: string): string {
  return [
    '',
    key,
    '',
    'Store it now: this is the only time the key is shown. Only its SHA-256 is kept,',
    `so a lost key cannot be recovered, only replaced (llm-proxy keys rotate ${id}).`,
    '',
  ].join('\n');
}

// ---- Running ------------------------------------------------------------------------------------

function describeServers(servers: string): string {
  return servers
    .split(',')
    .map((server) => redactUrl(server.trim()))
    .join(',');
}

function messageOf(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : '';
  return message + cause;
}

async function run(argv: string[]): Promise<number> {
  const parsed = parseKeysArguments(argv);
  const config = loadConfig(parsed.configPath);
  if (parsed.subcommand === 'create') checkModelsExist(parsed.models, config);
  const bucket = config.auth.keys_bucket;
  const servers = parsed.servers ?? natsUrlFromEnv();
  const where = `bucket ${bucket} at ${describeServers(servers)}`;

  let connection: NatsConnection;
  try {
    connection = await connectOnce({ servers, nats: config.nats, name: 'llm-proxy-keys' });
  } catch (error) {
    process.stderr.write(`error: cannot connect to NATS at ${describeServers(servers)}: ${messageOf(error)}\n`);
    return 1;
  }
  try {
    let store: KeyStore;
    try {
      store = await KeyStore.open(connection, bucket);
    } catch (error) {
      process.stderr.write(
        `error: cannot open the key store (${where}; is JetStream enabled, and may these credentials use it?): ${messageOf(error)}\n`,
      );
      return 1;
    }
    return await runWith(store, parsed, where);
  } catch (error) {
    if (error instanceof KeyStoreError) {
      process.stderr.write(`error: ${error.message}\n`);
      return 1;
    }
    process.stderr.write(`error: the key store (${where}) failed: ${messageOf(error)}\n`);
    return 1;
  } finally {
    await connection.close().catch(() => undefined);
  }
}

function write(text: string): void {
  process.stdout.write(text);
}

function writeJson(value: unknown): void {
  write(`${JSON.stringify(value, null, 2)}\n`);
}

async function runWith(store: KeyStore, parsed: KeysArguments, where: string): Promise<number> {
  switch (parsed.subcommand) {
    case 'create': {
      const { key, record } = await store.create({
        agentId: parsed.agentId,
        microdaoId: parsed.microdaoId,
        models: parsed.models,
        limits: parsed.limits,
        expiresInMs: parsed.expires?.ms,
        note: parsed.note,
      });
      const summary = summarize(record);
      if (parsed.json) {
        writeJson({ key, ...summary });
        return 0;
      }
      write(`New key ${record.id} for ${record.agent_id}:\n${formatNewKey(key, record.id)}\n${formatSummary(summary)}`);
      return 0;
    }
    case 'list': {
      const now = Date.now();
      const summaries = (await store.list())
        .filter((record) => parsed.agentId === undefined || record.agent_id === parsed.agentId)
        .map((record) => summarize(record, now));
      if (parsed.json) {
        writeJson({ keys: summaries });
        return 0;
      }
      const whose = parsed.agentId === undefined ? '' : ` of ${parsed.agentId}`;
      if (summaries.length === 0) {
        write(`No keys${whose} (${where}).\n`);
        return 0;
      }
      write(
        `${summaries.length} key${summaries.length === 1 ? '' : 's'}${whose} (${where})\n\n${formatKeyTable(summaries)}`,
      );
      return 0;
    }
    case 'show': {
      const record = await store.get(parsed.id);
      if (record === undefined) return noKey(parsed.id, where);
      const summary = summarize(record);
      if (parsed.json) writeJson(summary);
      else write(formatSummary(summary));
      return 0;
    }
    case 'revoke': {
      const now = Date.now();
      const record = await store.revoke(parsed.id, now);
      const summary = summarize(record, now);
      if (parsed.json) {
        writeJson(summary);
        return 0;
      }
      // The store leaves a revoked key as it was: then its revocation time is an earlier one.
      const already = record.revoked_at !== new Date(now).toISOString();
      write(
        already
          ? `Key ${record.id} (${record.agent_id}) was already revoked at ${formatTime(record.revoked_at ?? '')}.\n`
          : `Revoked key ${record.id} (${record.agent_id}): workers refuse it, and any rotated-out key of it, as soon as they see the change.\n`,
      );
      write(formatSummary(summary));
      return 0;
    }
    case 'rotate': {
      const now = Date.now();
      const { key, record } = await store.rotate(parsed.id, parsed.grace.ms, now);
      const summary = summarize(record, now);
      const oldKeyUntil = parsed.grace.ms > 0 ? new Date(now + parsed.grace.ms).toISOString() : null;
      if (parsed.json) {
        writeJson({ key, ...summary, old_key_valid_until: oldKeyUntil });
        return 0;
      }
      const oldKey =
        oldKeyUntil === null
          ? 'The old key no longer works (--grace 0).'
          : `The old key stays valid until ${formatTime(oldKeyUntil)} (grace ${parsed.grace.text}); then only the new one works.`;
      write(`New key for ${record.id} (${record.agent_id}):\n${formatNewKey(key, record.id)}${oldKey}\n\n`);
      write(formatSummary(summary));
      return 0;
    }
  }
}

function noKey(id: string, where: string): number {
  process.stderr.write(`error: no key ${id} (${where})\n`);
  return 1;
}

export const command: Command = {
  name: 'keys',
  summary: 'per-agent keys: create, list, show, revoke, rotate (the key store)',
  help,
  run,
};
