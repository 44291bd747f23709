/** The reply of `llm.proxy.models`: the seed's GET /models fields, plus deployments. */
export interface ModelInfo {
  name: string;
  provider: string;
  physical_name: string;
  /** The most tokens the model produces in one answer (`models.<name>.max_tokens`), or null when not configured. */
  max_tokens: number | null;
  cost_per_1k_prompt: number;
  cost_per_1k_completion: number;
  deployments: Array<{ provider: string; physical_name: string; weight: number; state?: string }>;
  fallbacks: string[];
}

export interface ModelsReply {
  models: ModelInfo[];
  worker_id: string;
}

/** One deployment's state as one worker sees it (`llm-proxy models --health`: one row per model and deployment). */
export interface DeploymentHealth {
  model: string;
  provider: string;
  physical_name: string;
  weight: number;
  state: 'healthy' | 'cooling_down';
  /** ISO time the cooldown ends, or null when healthy. */
  cooldown_until: string | null;
  /** Calls to this upstream (provider + physical name) running now, over every model that routes to it. */
  in_flight: number;
  /** Exponentially weighted latency of recent calls (time to first event for streams); null before any. */
  ewma_latency_ms: number | null;
  /** Failures inside the cooldown window since the last success. */
  recent_failures: number;
}

/**
 * One worker's answer on `llm.proxy.nodes` (non-queue: every worker answers; `llm-proxy models` gathers
 * them): who it is, where it runs, and what it serves. A key limited to some models sees those only,
 * in `models` and in `health`.
 */
export interface NodeInfo {
  worker_id: string;
  /** `worker.node` (default: the host name): the name the worker's usage events carry as `node`. */
  node: string;
  /** The host name of the machine the worker runs on. */
  host: string;
  /** The llm-proxy version the worker runs. */
  version: string;
  /** ISO time the worker started. */
  started_at: string;
  models: ModelInfo[];
  /** Every deployment of `models`, as this worker sees it. */
  health: DeploymentHealth[];
  /** Requests the worker is working on now, and the most it takes at once (`worker.max_in_flight`). */
  in_flight: number;
  max_in_flight: number;
}
