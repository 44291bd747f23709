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
