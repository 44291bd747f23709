/**
 * What a long-running CLI process (worker, aggregator, front door) adds around its work: the
 * OpenTelemetry SDK (metrics to Prometheus and, when asked, OTLP; traces with OTLP when asked) and its own server of `/metrics`, `/healthz` and
 * `/readyz`. A port that cannot be had is logged, not fatal: the process still does its job.
 */
import type { MeterProvider } from '@opentelemetry/api';
import type { TelemetryConfig } from '../config/telemetry-schema.js';
import type { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { otlpMetricsWanted, startProcessMetrics, type ProcessMetrics } from '../telemetry/metrics-sdk.js';
import { startTracing } from '../telemetry/trace-sdk.js';
import { startProcessServer, type ProcessServer, type Readiness } from '../telemetry/process-server.js';
import type { Logger } from '../telemetry/logger.js';

export interface ProcessTelemetry {
  /** Undefined when nothing takes the metrics (no server, no OTLP): then nothing is recorded either. */
  readonly meterProvider: MeterProvider | undefined;
  /** For a process that serves `/metrics` on an HTTP server of its own (the front door). */
  readonly prometheus: PrometheusExporter | undefined;
  /** Starts `/metrics`, `/healthz`, `/readyz` (once the process can answer readiness). */
  serve(ready: () => Promise<Readiness>): Promise<void>;
  stop(): Promise<void>;
}

/** The port: `--metrics-port`, else `LLM_PROXY_METRICS_PORT`, else the config's; `off` or null: no server. */
export function metricsPort(
  flag: string | undefined,
  env: NodeJS.ProcessEnv,
  configured: number | null,
): number | null | 'invalid' {
  const given = flag ?? env.LLM_PROXY_METRICS_PORT;
  if (given === undefined || given === '') return configured;
  if (given === 'off') return null;
  const port = Number(given);
  return Number.isInteger(port) && port >= 0 && port <= 65_535 ? port : 'invalid';
}

export function startProcessTelemetry(options: {
  serviceName: string;
  serviceVersion: string;
  telemetry: TelemetryConfig;
  port: number | null;
  /** The process serves `/metrics` itself (the front door), whatever `port` says. */
  servesMetrics?: boolean;
  logger: Logger;
  env?: NodeJS.ProcessEnv;
}): ProcessTelemetry {
  const env = options.env ?? process.env;
  // Metrics cost the request path a little (docs/bench/results.md): with nobody to read them, none are kept.
  const wanted = options.port !== null || options.servesMetrics === true || otlpMetricsWanted(env);
  const metrics: ProcessMetrics | undefined = wanted
    ? startProcessMetrics({ serviceName: options.serviceName, serviceVersion: options.serviceVersion, env })
    : undefined;
  // Traces: the W3C propagator always (context read and passed on), spans exported when OTLP is asked for.
  const tracing = startTracing({
    serviceName: options.serviceName,
    serviceVersion: options.serviceVersion,
    env: options.env ?? process.env,
  });
  let server: ProcessServer | undefined;
  return {
    prometheus: metrics?.prometheus,
    meterProvider: metrics?.meterProvider,
    async serve(ready) {
      if (options.port === null || metrics === undefined) return;
      try {
        server = await startProcessServer({
          host: options.telemetry.host,
          port: options.port,
          prometheus: metrics.prometheus,
          ready,
        });
        options.logger.info({ url: server.url, otlp_metrics: metrics.otlp }, 'serving /metrics, /healthz and /readyz');
      } catch (error) {
        options.logger.error(
          { err: error, host: options.telemetry.host, port: options.port },
          'the metrics server could not listen (set --metrics-port, LLM_PROXY_METRICS_PORT or telemetry.*_port); going on without it',
        );
      }
    },
    async stop() {
      await server?.close();
      await metrics?.shutdown();
      await tracing?.shutdown();
    },
  };
}
