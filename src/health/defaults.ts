/** Defaults of `llm-proxy health`, apart from the checks so that `health --url` loads nothing of the bus. */

/** `--max-pending`: usage events a worker may hold unpublished before it counts as unhealthy. */
export const DEFAULT_MAX_PENDING = 1_000;
/** `--timeout`: how long each check waits for its answer (the checks run side by side). */
export const DEFAULT_HEALTH_TIMEOUT_MS = 2_000;
/** Events a PostgreSQL usage sink may be behind before it (its /readyz, and `health`) reports it. */
export const SINK_MAX_LAG = 50_000;
