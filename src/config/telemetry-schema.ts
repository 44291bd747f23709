import { z } from 'zod';

const port = z.number().int().min(0).max(65_535);

/**
 * `telemetry`: where each long-running process serves `/metrics` (Prometheus), `/healthz` and
 * `/readyz`, and how much the metrics say. `null` turns a process's server off; the front door serves
 * them on its own port. OTLP export follows the standard `OTEL_EXPORTER_OTLP_*` variables.
 */
export const telemetrySchema = z
  .object({
    /** The interface the metrics servers listen on. */
    host: z.string().min(1).default('0.0.0.0'),
    /** The worker's metrics port (`LLM_PROXY_METRICS_PORT` or `--metrics-port` override it). */
    worker_port: port.nullable().default(9464),
    /** The aggregator's metrics port. */
    aggregator_port: port.nullable().default(9465),
    /** The usage sink's metrics port (`llm-proxy sink postgres`). */
    sink_port: port.nullable().default(9466),
    /** Label request, token and cost metrics with the agent id: one series per agent, so off unless asked for. */
    agent_label: z.boolean().default(false),
  })
  .strict();

export type TelemetryConfig = z.infer<typeof telemetrySchema>;
