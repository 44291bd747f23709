/**
 * `llm-proxy cache stats|purge`: the shared response cache, as the workers see it (cache.backend).
 */
import { errors, type NatsConnection } from '@nats-io/nats-core';
import { subjectsFor } from '../../contract/subjects.js';
import { secretHeaders } from '../secret-headers.js';
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import { createResponseCache } from '../../cache/index.js';
import { configPathFromEnv, loadConfigFile } from '../../config/index.js';

const help = `Usage: llm-proxy cache stats [--config FILE] [--json]
       llm-proxy cache purge [--model NAME] [--config FILE]

The response cache the workers share (cache.backend: the JetStream KV bucket
cache.bucket, LLM_CACHE by default, or Redis).
  stats   answers held and their bytes in the shared store
  purge   removes every cached answer, or one logical model's (--model), from the
          shared store and from every running worker's memory tier (llm.proxy.cache.purge;
          needs LLM_PROXY_SECRET when the workers have one)
Hits and misses are counted by each worker: llm_proxy_cache_* on its /metrics, and
cache_hits in \`nats micro stats llm-proxy\`.

Options:
  --config PATH   the workers' config.yaml (default: $LLM_PROXY_CONFIG, else config.yaml)
  --model NAME    purge: only this logical model's answers
  --json          stats: as JSON

Environment: NATS_URL and NATS credentials (backend nats), REDIS_URL (backend redis).
With cache.backend: memory each worker has its own cache: stats has nothing shared to read, and
purge empties the workers' memory only.

Examples:
  llm-proxy cache stats
  llm-proxy cache purge --model gpt-4.1-mini
`;

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine({
    args: argv,
    allowPositionals: true,
    strict: true,
    options: { config: { type: 'string' }, model: { type: 'string' }, json: { type: 'boolean', default: false } },
  });
  const action = positionals[0];
  if (positionals.length !== 1 || (action !== 'stats' && action !== 'purge'))
    throw new UsageError('say what to do: `llm-proxy cache stats` or `llm-proxy cache purge [--model NAME]`');
  if (action === 'stats' && values.model !== undefined) throw new UsageError('--model is for purge');
  if (values.model !== undefined && values.model.trim() === '') throw new UsageError('--model must name a model');
  const config = loadConfigFile(values.config ?? configPathFromEnv());
  if (!config.cache.enabled) {
    process.stderr.write('the cache is off in this config (cache.enabled: false)\n');
    return 1;
  }
  if (config.cache.backend === 'memory' && action === 'stats') {
    process.stderr.write(
      'cache.backend is "memory": each worker caches in its own process, so there is nothing shared to read (use nats or redis)\n',
    );
    return 1;
  }
  let connection: NatsConnection | undefined;
  // The NATS backend's store, and a purge's broadcast to the workers whatever the backend.
  if (config.cache.backend === 'nats' || action === 'purge') {
    try {
      connection = await connectOnce({ nats: config.nats, name: 'llm-proxy-cache' });
    } catch (error) {
      process.stderr.write(
        `error cannot connect to NATS at ${natsUrlFromEnv()}: ${error instanceof Error ? error.message : String(error)}\n`,
      );
      return 1;
    }
  }
  const warnings: string[] = [];
  if (action === 'purge' && config.cache.backend === 'memory') {
    try {
      process.stdout.write(`${await purgeWorkers(connection!, config.nats.subject_prefix, values.model)}\n`);
      return 0;
    } catch (error) {
      process.stderr.write(`error ${error instanceof Error ? error.message : String(error)}\n`);
      return 1;
    } finally {
      await connection?.close();
    }
  }
  const { store } = createResponseCache(config.cache, {
    ...(connection === undefined ? {} : { nats: connection }),
    logger: { warn: (_fields: unknown, message?: string) => void warnings.push(message ?? 'the store failed') },
  });
  const where = config.cache.backend === 'nats' ? `bucket ${config.cache.bucket}` : 'redis';
  try {
    if (action === 'purge') {
      const removed = await store.purge(values.model === undefined ? {} : { model: values.model });
      if (warnings.length > 0) throw new Error(warnings[0]);
      process.stdout.write(
        `purged ${removed} cached answer${removed === 1 ? '' : 's'}${values.model === undefined ? '' : ` of ${values.model}`} from ${where}\n`,
      );
      try {
        process.stdout.write(`${await purgeWorkers(connection!, config.nats.subject_prefix, values.model)}\n`);
      } catch (error) {
        process.stderr.write(`error ${error instanceof Error ? error.message : String(error)}\n`);
        return 1;
      }
      return 0;
    }
    const stats = (await store.tiers()).shared;
    if (stats === undefined || warnings.length > 0 || stats.entries === undefined)
      throw new Error(warnings[0] ?? 'the store did not answer');
    if (values.json)
      process.stdout.write(
        `${JSON.stringify({ backend: config.cache.backend, where, entries: stats.entries, bytes: stats.bytes ?? null }, null, 2)}\n`,
      );
    else
      process.stdout.write(
        `cache ${where} (${config.cache.backend}): ${stats.entries} answers${stats.bytes === undefined ? '' : `, ${stats.bytes} bytes`}; ttl ${config.cache.ttl_ms} ms\n`,
      );
    return 0;
  } catch (error) {
    process.stderr.write(
      `error the cache (${where}) did not answer: ${error instanceof Error ? error.message : String(error)}\n`,
    );
    return 1;
  } finally {
    await store.close().catch(() => undefined);
    await connection?.close();
  }
}

/** How long after the last worker's answer the purge stops gathering; the first must come within PURGE_WAIT_MS. */
const PURGE_STALL_MS = 300;
const PURGE_WAIT_MS = 2_000;

/**
 * Asks every running worker to empty its memory tier (`llm.proxy.cache.purge`, scatter-gather) and says
 * what they did. Throws when a worker refused (the secret is missing or wrong).
 */
async function purgeWorkers(connection: NatsConnection, prefix: string, model: string | undefined): Promise<string> {
  let workers = 0;
  let purged = 0;
  const refusals: string[] = [];
  try {
    const answers = await connection.requestMany(
      subjectsFor(prefix).cachePurge,
      JSON.stringify(model === undefined ? {} : { model }),
      { strategy: 'stall', stall: PURGE_STALL_MS, maxWait: PURGE_WAIT_MS, headers: secretHeaders() },
    );
    for await (const message of answers) {
      let body: { purged?: unknown; error?: { message?: unknown } };
      try {
        body = message.json();
      } catch {
        continue;
      }
      if (typeof body.purged === 'number') {
        workers++;
        purged += body.purged;
      } else if (body.error !== undefined) refusals.push(String(body.error.message));
    }
  } catch (error) {
    if (error instanceof errors.NoRespondersError) return 'no worker is running: no memory tier to purge';
    if (error instanceof errors.RequestError && error.isNoResponders())
      return 'no worker is running: no memory tier to purge';
    throw error;
  }
  if (refusals.length > 0) throw new Error(`workers refused to purge their memory: ${refusals[0]}`);
  return `purged ${purged} answer${purged === 1 ? '' : 's'} from the memory of ${workers} worker${workers === 1 ? '' : 's'}`;
}

export const command: Command = {
  name: 'cache',
  summary: 'the shared response cache: stats, purge [--model]',
  help,
  run,
};
