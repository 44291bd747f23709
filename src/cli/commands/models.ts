/**
 * `llm-proxy models`: gather every worker's answer on `llm.proxy.nodes` (each worker answers: no queue
 * group) and show the union: each model, the nodes that serve it, and their deployments' states.
 */
import type { Msg, NatsConnection } from '@nats-io/nats-core';
import type { Command } from '../command.js';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from '../command.js';
import { DEFAULT_SUBJECT_PREFIX, subjectsFor } from '../../contract/subjects.js';
import { connectOnce, natsUrlFromEnv } from '../../bus/connect.js';
import type { ErrorReply } from '../../contract/errors.js';
import type { DeploymentHealth, ModelInfo, NodeInfo } from '../../contract/models.js';
import { tableLines } from '../../format/table.js';
import { secretHeaders } from '../secret-headers.js';
import { ConfigError, loadConfigFile } from '../../config/index.js';

/** After an answer, how long the gathering waits for another before it ends. */
export const GATHER_STALL_MS = 300;

const help = `Usage: llm-proxy models [--health] [--json] [--nats URL] [--config FILE] [--timeout-ms N]

Asks every worker (llm.proxy.nodes: each one answers) what it serves, and
shows the union: each logical model with its prices and fallbacks, the nodes
that serve it (node name and the end of the worker id) with their state, and
its deployments; then one line per worker (node, host, version, load).
A node that stops leaves the list: only the workers that answer are shown.

Options:
  --health        also show each deployment's state on each node that has it
                  (healthy / cooling_down, calls in flight, EWMA latency, recent failures)
  --json          print what was gathered as JSON: {"nodes": [each worker's answer],
                  "models": [each model with the nodes that serve it]}
  --nats URL      NATS server (default: $NATS_URL, else nats://127.0.0.1:4222)
  --config FILE   read the subject prefix and NATS credentials from this config file
  --timeout-ms N  longest wait for the first answer (default 1000); the others are
                  gathered until none has come for ${GATHER_STALL_MS} ms

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

/** A worker as the output names it: its node and the end of its id (ids of one process share their start). */
export interface NodeRef {
  node: string;
  worker_id: string;
  host: string;
}

/** A logical model over every worker that answered. */
export interface ServedModel extends ModelInfo {
  /** The workers that serve it, by node. */
  nodes: NodeRef[];
  /** Nodes whose definition of the model (prices, fallbacks, max_tokens) differs from the one shown. */
  differs_on: string[];
}

/** What `llm-proxy models` gathered: every worker's answer, and the models over all of them. */
export interface GatheredNodes {
  nodes: NodeInfo[];
  models: ServedModel[];
}

/** The last characters of a worker id: nats.js ids made in one process share their first twelve. */
export function shortWorkerId(workerId: string): string {
  return workerId.length <= 6 ? workerId : workerId.slice(-6);
}

const nodeLabel = (ref: Pick<NodeRef, 'node' | 'worker_id'>): string => `${ref.node} (${shortWorkerId(ref.worker_id)})`;

const sameDefinition = (a: ModelInfo, b: ModelInfo): boolean =>
  a.cost_per_1k_prompt === b.cost_per_1k_prompt &&
  a.cost_per_1k_completion === b.cost_per_1k_completion &&
  a.max_tokens === b.max_tokens &&
  a.fallbacks.join('\n') === b.fallbacks.join('\n');

/** The union of the workers' answers: nodes ordered by name (then id), models by name. */
export function gatherModels(answers: NodeInfo[]): GatheredNodes {
  const nodes = [...answers].sort((a, b) => a.node.localeCompare(b.node) || a.worker_id.localeCompare(b.worker_id));
  const models = new Map<string, ServedModel>();
  for (const info of nodes) {
    const ref: NodeRef = { node: info.node, worker_id: info.worker_id, host: info.host };
    for (const model of info.models) {
      const known = models.get(model.name);
      if (known === undefined) {
        models.set(model.name, {
          ...model,
          // Each node's state is in its own `health`: none is the union's.
          deployments: model.deployments.map(({ state: _state, ...deployment }) => deployment),
          nodes: [ref],
          differs_on: [],
        });
        continue;
      }
      known.nodes.push(ref);
      if (!sameDefinition(known, model) && !known.differs_on.includes(info.node)) known.differs_on.push(info.node);
      for (const deployment of model.deployments) {
        const present = known.deployments.some(
          (seen) => seen.provider === deployment.provider && seen.physical_name === deployment.physical_name,
        );
        if (!present) {
          const { state: _state, ...rest } = deployment;
          known.deployments.push(rest);
        }
      }
    }
  }
  return { nodes, models: [...models.values()].sort((a, b) => a.name.localeCompare(b.name)) };
}

/** A node's deployments of a model in one word or three: healthy, cooling down, or how many of how many. */
function healthSummary(rows: DeploymentHealth[]): string {
  if (rows.length === 0) return 'state unknown';
  const cooling = rows.filter((row) => row.state === 'cooling_down').length;
  if (cooling === 0) return 'healthy';
  return cooling === rows.length ? 'COOLING DOWN' : `${cooling} of ${rows.length} deployments cooling down`;
}

function healthDetail(row: DeploymentHealth): string {
  return [
    row.state === 'cooling_down' ? `COOLING DOWN until ${row.cooldown_until}` : 'healthy',
    `in flight ${row.in_flight}`,
    `latency ${row.ewma_latency_ms === null ? '-' : `${Math.round(row.ewma_latency_ms)} ms`}`,
    `recent failures ${row.recent_failures}`,
  ].join('  ');
}

export function formatModels(gathered: GatheredNodes, options: { health?: boolean } = {}): string {
  const lines: string[] = [];
  const byWorker = new Map(gathered.nodes.map((info) => [info.worker_id, info]));
  const healthOf = (workerId: string, model: string) =>
    byWorker.get(workerId)?.health.filter((row) => row.model === model) ?? [];
  for (const model of gathered.models) {
    const fallbacks = model.fallbacks.length > 0 ? `  fallbacks: ${model.fallbacks.join(', ')}` : '';
    lines.push(
      `${model.name}  prompt ${formatPrice(model.cost_per_1k_prompt)}, completion ${formatPrice(model.cost_per_1k_completion)}${fallbacks}`,
    );
    const servedBy = model.nodes.map(
      (ref) => `${nodeLabel(ref)} ${healthSummary(healthOf(ref.worker_id, model.name))}`,
    );
    lines.push(`  on ${servedBy.join(', ')}`);
    if (model.differs_on.length > 0)
      lines.push(`  (prices, fallbacks or max_tokens differ on ${model.differs_on.join(', ')}: see --json)`);
    for (const deployment of model.deployments) {
      lines.push(`  - ${deployment.provider}/${deployment.physical_name}  weight ${deployment.weight}`);
      if (options.health !== true) continue;
      for (const ref of model.nodes) {
        const row = healthOf(ref.worker_id, model.name).find(
          (candidate) =>
            candidate.provider === deployment.provider && candidate.physical_name === deployment.physical_name,
        );
        if (row !== undefined) lines.push(`      ${nodeLabel(ref)}  ${healthDetail(row)}`);
      }
    }
  }
  if (gathered.models.length === 0) lines.push('(no models: the workers that answered serve none this caller may see)');
  const nodeNames = new Set(gathered.nodes.map((info) => info.node));
  const workers = gathered.nodes.length;
  lines.push('');
  lines.push(
    `${workers} worker${workers === 1 ? '' : 's'} on ${nodeNames.size} node${nodeNames.size === 1 ? '' : 's'}:`,
  );
  lines.push(
    ...tableLines(
      ['node', 'worker', 'host', 'version', 'in flight', 'models', 'started'],
      gathered.nodes.map((info) => [
        info.node,
        shortWorkerId(info.worker_id),
        info.host,
        info.version,
        `${info.in_flight}/${info.max_in_flight}`,
        String(info.models.length),
        info.started_at,
      ]),
    ).map((line) => `  ${line}`),
  );
  return lines.join('\n');
}

/** An answer is a worker's NodeInfo, or an error body (refused credentials); anything else is ignored. */
function readAnswer(message: Msg): NodeInfo | ErrorReply | undefined {
  let body: unknown;
  try {
    body = message.json();
  } catch {
    return undefined;
  }
  if (typeof body !== 'object' || body === null) return undefined;
  if ('error' in body) return body as ErrorReply;
  const info = body as Partial<NodeInfo>;
  if (typeof info.worker_id !== 'string' || typeof info.node !== 'string' || !Array.isArray(info.models))
    return undefined;
  return { ...info, health: Array.isArray(info.health) ? info.health : [] } as NodeInfo;
}

/**
 * Every worker's answer on `subject`: a scatter-gather request (nats.js `requestMany`, "stall": it ends
 * GATHER_STALL_MS after the last answer, or `firstWithinMs` after the ask when none comes). Throws
 * nats.js's NoRespondersError when no worker listens.
 */
export async function gatherNodes(
  connection: NatsConnection,
  subject: string,
  firstWithinMs: number,
): Promise<{ nodes: NodeInfo[]; refusals: ErrorReply[]; unreadable: number }> {
  const nodes: NodeInfo[] = [];
  const refusals: ErrorReply[] = [];
  let unreadable = 0;
  const answers = await connection.requestMany(subject, '{}', {
    strategy: 'stall',
    stall: GATHER_STALL_MS,
    maxWait: firstWithinMs,
    headers: secretHeaders(),
  });
  for await (const message of answers) {
    const answer = readAnswer(message);
    if (answer === undefined) unreadable++;
    else if ('error' in answer) refusals.push(answer);
    else nodes.push(answer);
  }
  return { nodes, refusals, unreadable };
}

export const command: Command = {
  name: 'models',
  summary: 'list the models the workers serve, with their nodes (--health: deployment states)',
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
      parseNumberFlag('--timeout-ms', values['timeout-ms'], isPositiveInteger, 'a positive integer') ?? 1_000;
    const { connection, prefix } = await connectForCommand(values);
    const subject = subjectsFor(prefix).nodes;
    try {
      const { nodes, refusals, unreadable } = await gatherNodes(connection, subject, timeoutMs);
      const refusal = refusals[0];
      if (nodes.length === 0) {
        process.stderr.write(
          refusal !== undefined
            ? `llm-proxy: ${refusal.error.code} (${refusal.error.status}): ${refusal.error.message}\n`
            : `llm-proxy: no worker answered on ${subject} within ${timeoutMs} ms${unreadable > 0 ? ` (${unreadable} unreadable answers)` : ''}\n`,
        );
        return 1;
      }
      if (refusal !== undefined)
        process.stderr.write(
          `llm-proxy: ${refusals.length} worker(s) refused: ${refusal.error.code} (${refusal.error.status}): ${refusal.error.message}; showing the ${nodes.length} that answered\n`,
        );
      const gathered = gatherModels(nodes);
      process.stdout.write(
        values.json
          ? `${JSON.stringify(gathered, null, 2)}\n`
          : `${formatModels(gathered, { health: values.health })}\n`,
      );
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
