/** `llm-proxy models`: ask the workers (`llm.proxy.models`) which models they route, and in what state. */
import type { NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { DEFAULT_SUBJECT_PREFIX, subjectsFor } from '../../contract/subjects.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import type { ErrorReply } from '../../contract/errors.js';
import { secretHeaders } from '../secret-headers.js';
import { ConfigError, loadConfigFile } from '../../config/index.js';
import type { WorkerModelsReply } from '../../worker/index.js';

const help = `Usage: llm-proxy models [--health] [--json] [--nats URL] [--config FILE] [--timeout-ms N]

Asks a worker (one of the queue group) which logical models it routes, with
each model's deployments, prices and fallbacks.

Options:
  --health        also show each deployment's state as that worker sees it
                  (healthy / cooling_down, calls in flight, EWMA latency, recent failures)
  --json          print the worker's reply as JSON
  --nats URL      NATS server (default: $NATS_URL, else nats://127.0.0.1:4222)
  --config FILE   read the subject prefix and NATS credentials from this config file
  --timeout-ms N  how long to wait for a worker (default 5000)

Example:
  llm-proxy models --health
`;

/** A short-lived connection for a CLI command, with the subject prefix (from --config when given). */
export async function connectForCommand(values: {
  nats?: string | undefined;
  config?: string | undefined;
}): Promise<{ connection: NatsConnection; prefix: string; servers: string }> {
  let prefix = DEFAULT_SUBJECT_PREFIX;
  let nats: ReturnType<typeof loadConfigFile>['nats'] | undefined;
  if (values.config !== undefined) {
    try {
      const config = loadConfigFile(values.config);
      prefix = config.nats.subject_prefix;
      nats = config.nats;
    } catch (error) {
      if (error instanceof ConfigError) throw new UsageError(error.message);
      throw error;
    }
  }
  const servers = values.nats ?? natsUrlFromEnv();
  try {
    const connection = await connectOnce({ servers, nats, name: 'llm-proxy-cli' });
    return { connection, prefix, servers };
  } catch (error) {
    throw new Error(`cannot connect to NATS at ${servers}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

function formatPrice(value: number): string {
  return value === 0 ? 'free' : `$${value}/1k`;
}

export function formatModels(reply: WorkerModelsReply): string {
  const lines: string[] = [];
  for (const model of reply.models) {
    const fallbacks = model.fallbacks.length > 0 ? `  fallbacks: ${model.fallbacks.join(', ')}` : '';
    lines.push(
      `${model.name}  prompt ${formatPrice(model.cost_per_1k_prompt)}, completion ${formatPrice(model.cost_per_1k_completion)}${fallbacks}`,
    );
    for (const deployment of model.deployments) {
      const health = reply.health?.find(
        (row) =>
          row.model === model.name &&
          row.provider === deployment.provider &&
          row.physical_name === deployment.physical_name,
      );
      const parts = [`  - ${deployment.provider}/${deployment.physical_name}`, `weight ${deployment.weight}`];
      if (health !== undefined) {
        parts.push(health.state === 'cooling_down' ? `COOLING DOWN until ${health.cooldown_until}` : 'healthy');
        parts.push(`in flight ${health.in_flight}`);
        parts.push(`latency ${health.ewma_latency_ms === null ? '-' : `${Math.round(health.ewma_latency_ms)} ms`}`);
        parts.push(`recent failures ${health.recent_failures}`);
      } else if (deployment.state !== undefined) {
        parts.push(deployment.state);
      }
      lines.push(parts.join('  '));
    }
  }
  lines.push(`(from worker ${reply.worker_id})`);
  return lines.join('\n');
}

export const command: Command = {
  name: 'models',
  summary: 'list the models the workers route (--health: deployment states)',
  help,
  async run(argv) {
    const { values } = parseCommandLine({
      args: argv,
      options: {
        health: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        nats: { type: 'string' },
        config: { type: 'string' },
        'timeout-ms': { type: 'string' },
      },
      allowPositionals: false,
    });
    const timeoutMs =
      parseNumberFlag('--timeout-ms', values['timeout-ms'], isPositiveInteger, 'a positive integer') ?? 5_000;
    const { connection, prefix } = await connectForCommand(values);
    const subject = subjectsFor(prefix).models;
    try {
      const message = await connection.request(subject, JSON.stringify(values.health ? { health: true } : {}), {
        timeout: timeoutMs,
        headers: secretHeaders(),
      });
      const reply = message.json() as WorkerModelsReply | ErrorReply;
      if ('error' in reply) {
        process.stderr.write(`llm-proxy: ${reply.error.code} (${reply.error.status}): ${reply.error.message}\n`);
        return 1;
      }
      process.stdout.write(values.json ? `${JSON.stringify(reply, null, 2)}\n` : `${formatModels(reply)}\n`);
      return 0;
    } catch (error) {
      const noResponders =
        error instanceof Error &&
        /no responders/i.test(`${error.message} ${String((error as { cause?: unknown }).cause ?? '')}`);
      process.stderr.write(
        noResponders
          ? `llm-proxy: no worker is listening on ${subject} (start one with \`llm-proxy worker\` or \`llm-proxy dev\`)\n`
          : `llm-proxy: no answer on ${subject}: ${error instanceof Error ? error.message : String(error)}\n`,
      );
      return 1;
    } finally {
      await connection.close();
    }
  },
};
