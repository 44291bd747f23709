/**
 * The deployments' state for the operations page: each worker's last answer to
 * `llm.proxy.models {"health": true}`, merged (cooldowns are per worker).
 */
import { unionModels, type LlmProxyClient } from '../client/index.js';
import type { DeploymentHealth } from '../router/types.js';

export interface DeploymentRow extends DeploymentHealth {
  /** The latest end of a cooldown any worker reported, or null. */
  cooldown_until: string | null;
  /** Workers whose answer is in this row, and of them those cooling it down (cooldowns are per worker). */
  workers: number;
  cooling_on: number;
}

/** How long a worker's answer about its deployments stands; each poll reaches one worker of the queue group. */
const HEALTH_TTL_MS = 30_000;
const MAX_HEALTH_WORKERS = 64;

/**
 * The deployments as the workers see them: each poll hears every worker (`llm.proxy.nodes`; with workers
 * that do not answer it, one worker of the queue group through `llm.proxy.models`); the last answer of
 * each worker is kept HEALTH_TTL_MS and merged.
 */
export class DeploymentBoard {
  readonly #byWorker = new Map<string, { at: number; health: DeploymentHealth[] }>();
  models: string[] = [];

  async poll(client: LlmProxyClient, timeoutMs: number): Promise<void> {
    // Every worker at once (`llm.proxy.nodes`, issue 19); else one worker per poll (`llm.proxy.models`).
    const nodes = await client.nodes({ timeoutMs }).catch(() => []);
    if (nodes.length > 0) {
      this.models = unionModels(nodes).map((model) => model.name);
      for (const node of nodes) this.#heard(node.worker_id, node.health);
      return;
    }
    const reply = (await client.models({ health: true, timeoutMs })) as {
      models: Array<{ name: string }>;
      worker_id?: string;
      health?: DeploymentHealth[];
    };
    this.models = reply.models.map((model) => model.name);
    this.#heard(reply.worker_id ?? '', reply.health ?? []);
  }

  #heard(worker: string, health: DeploymentHealth[]): void {
    this.#byWorker.delete(worker);
    this.#byWorker.set(worker, { at: Date.now(), health });
    if (this.#byWorker.size > MAX_HEALTH_WORKERS) this.#byWorker.delete(this.#byWorker.keys().next().value as string);
  }

  rows(): DeploymentRow[] {
    const since = Date.now() - HEALTH_TTL_MS;
    const rows = new Map<string, DeploymentRow & { latencies: number[] }>();
    for (const [worker, answer] of this.#byWorker) {
      if (answer.at < since) {
        this.#byWorker.delete(worker);
        continue;
      }
      for (const health of answer.health) {
        const key = JSON.stringify([health.model, health.provider, health.physical_name]);
        let row = rows.get(key);
        if (row === undefined) {
          row = {
            model: health.model,
            provider: health.provider,
            physical_name: health.physical_name,
            weight: health.weight,
            state: 'healthy',
            cooldown_until: null,
            in_flight: 0,
            ewma_latency_ms: null,
            recent_failures: 0,
            workers: 0,
            cooling_on: 0,
            latencies: [],
          };
          rows.set(key, row);
        }
        row.workers += 1;
        row.in_flight += health.in_flight;
        row.recent_failures = Math.max(row.recent_failures, health.recent_failures);
        if (health.ewma_latency_ms !== null) row.latencies.push(health.ewma_latency_ms);
        if (health.state === 'cooling_down') {
          row.state = 'cooling_down';
          row.cooling_on += 1;
          if (row.cooldown_until === null || (health.cooldown_until ?? '') > row.cooldown_until)
            row.cooldown_until = health.cooldown_until;
        }
      }
    }
    return [...rows.values()].map(({ latencies, ...row }) => ({
      ...row,
      ewma_latency_ms:
        latencies.length === 0 ? null : Math.round(latencies.reduce((sum, value) => sum + value, 0) / latencies.length),
    }));
  }
}
