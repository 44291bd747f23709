/** `llm-proxy check-config`: validate a config file and say what it sets up. */
import type { Command } from '../command.js';
import { parseCommandLine, UsageError } from '../command.js';
import { ConfigError, configPathFromEnv, missingApiKeys, type ResolvedConfig } from '../../config/index.js';
import { redactUrl } from '../../config/redact-url.js';
import { loadCheckedConfig } from '../load-config.js';

const help = `Usage: llm-proxy check-config [FILE]

Validates a config file (default: $LLM_PROXY_CONFIG, else config.yaml). When it
is bad, prints every problem by path (e.g. models.x.provider: unknown provider
"opnai") and exits 1. When it is good, prints a summary (providers, models and
their deployments, worker and usage-stream settings) and warns about API key
variables that are not set in this environment (exit 0).

Example:
  llm-proxy check-config config.yaml
`;

export function summarizeConfig(config: ResolvedConfig): string {
  const lines = [`${config.source}: OK`, '', `providers (${config.providers.size}):`];
  for (const provider of config.providers.values()) {
    const key =
      provider.api_key_env === undefined
        ? 'no key'
        : `key from ${provider.api_key_env}${provider.apiKey === undefined ? ' (NOT SET)' : ' (set)'}`;
    lines.push(`  ${provider.name}: ${provider.type} at ${redactUrl(provider.base_url)}, ${key}`);
  }
  lines.push('', `models (${config.models.size}):`);
  for (const model of config.models.values()) {
    const deployments = model.deployments
      .map(
        (deployment) =>
          `${deployment.provider}/${deployment.physical_name}${model.deployments.length > 1 ? ` ×${deployment.weight}` : ''}`,
      )
      .join(', ');
    const extras = [
      model.fallbacks.length > 0
        ? `fallbacks ${model.fallbacks.map((name) => (config.models.has(name) ? name : `${name} (on the bus)`)).join(', ')}`
        : '',
      model.context_fallbacks.length > 0 ? `context fallbacks ${model.context_fallbacks.join(', ')}` : '',
      `$${model.cost_per_1k_prompt}/$${model.cost_per_1k_completion} per 1k`,
    ].filter((part) => part !== '');
    lines.push(`  ${model.name} → ${deployments}; ${extras.join('; ')}`);
  }
  const worker = config.worker;
  lines.push(
    '',
    `worker: max_in_flight ${worker.max_in_flight}, default timeout ${worker.default_timeout_ms} ms, heartbeat ${worker.heartbeat_ms} ms, drain ${worker.drain_timeout_ms} ms, max request ${worker.max_request_bytes ?? "the server's max_payload"}${worker.max_request_bytes === undefined ? '' : ' bytes'}`,
  );
  const stream = config.nats.usage_stream;
  lines.push(
    `nats: subjects ${config.nats.subject_prefix}.proxy.*, usage stream ${stream.name} (${stream.storage}, R${stream.replicas}, max age ${stream.max_age === 0 ? 'forever' : `${stream.max_age / 86_400_000} d`}, max bytes ${stream.max_bytes === -1 ? 'unlimited' : stream.max_bytes})`,
  );
  lines.push(
    `cache: ${config.cache.enabled ? `on, ${config.cache.backend}${config.cache.backend === 'nats' ? ` bucket ${config.cache.bucket}` : ''}, ttl ${config.cache.ttl_ms} ms, ${Math.round(config.cache.memory_max_bytes / 2 ** 20)} MiB in each worker's memory` : 'off'}; logging: ${config.logging.level}, request lines: ${config.logging.requests}`,
  );
  return lines.join('\n');
}

export const command: Command = {
  name: 'check-config',
  summary: 'validate a config file; list every problem by path',
  help,
  async run(argv) {
    const { positionals } = parseCommandLine({ args: argv, options: {}, allowPositionals: true });
    if (positionals.length > 1) throw new UsageError('give one config file');
    const path = positionals[0] ?? configPathFromEnv();
    let config: ResolvedConfig;
    try {
      config = loadCheckedConfig(path);
    } catch (error) {
      if (error instanceof ConfigError) {
        process.stderr.write(`${error.message}\n`);
        return 1;
      }
      throw error;
    }
    process.stdout.write(`${summarizeConfig(config)}\n`);
    for (const { provider, env } of missingApiKeys(config)) {
      process.stderr.write(`warning: provider "${provider}" reads its key from ${env}, which is not set here\n`);
    }
    return 0;
  },
};
