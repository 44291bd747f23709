/**
 * `llm-proxy cache stats|purge`: the shared response cache, as the workers see it (cache.backend).
 */
import type { NatsConnection } from '@nats-io/nats-core';
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
  purge   removes every cached answer, or one logical model's (--model); workers'
          memory tiers keep theirs until they expire (cache.ttl_ms)
Hits and misses are counted by each worker: llm_proxy_cache_* on its /metrics, and
cache_hits in \`nats micro stats llm-proxy\`.

Options:
  --config PATH   the workers' config.yaml (default: $LLM_PROXY_CONFIG, else config.yaml)
  --model NAME    purge: only this logical model's answers
  --json          stats: as JSON

Environment: NATS_URL and NATS credentials (backend nats), REDIS_URL (backend redis).
With cache.backend: memory each worker has its own cache: there is nothing shared to read or purge.

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
  if (config.cache.backend === 'memory') {
    process.stderr.write(
      'cache.backend is "memory": each worker caches in its own process, so there is nothing shared to read or purge (use nats or redis)\n',
    );
    return 1;
  }
  let connection: NatsConnection | undefined;
  if (config.cache.backend === 'nats') {
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

export const command: Command = {
  name: 'cache',
  summary: 'the shared response cache: stats, purge [--model]',
  help,
  run,
};
