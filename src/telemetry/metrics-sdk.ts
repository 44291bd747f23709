/**
 * The OpenTelemetry metrics SDK of one CLI process (worker, aggregator, front door): a Prometheus
 * reader served by the process's own HTTP server (process-server.ts), and an OTLP exporter when the
 * standard variables ask for one. Library code never imports this: it takes a MeterProvider.
 */
import { metrics } from '@opentelemetry/api';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';

export interface ProcessMetrics {
  readonly meterProvider: MeterProvider;
  /** Serves `/metrics` (Prometheus text format) from the process's own HTTP server. */
  readonly prometheus: PrometheusExporter;
  /** True when OTLP export is on (the OTEL_EXPORTER_OTLP_* variables). */
  readonly otlp: boolean;
  shutdown(): Promise<void>;
}

/** OTLP metrics export is on when an endpoint is named and `OTEL_METRICS_EXPORTER` does not say `none`. */
export function otlpMetricsWanted(env: NodeJS.ProcessEnv): boolean {
  return otlpWanted(env, 'METRICS');
}

/**
 * OTLP export of a signal is on when an endpoint is named (`OTEL_EXPORTER_OTLP_ENDPOINT` or the
 * signal's own) and `OTEL_<signal>_EXPORTER` does not list `none`.
 */
export function otlpWanted(env: NodeJS.ProcessEnv, signal: 'METRICS' | 'TRACES'): boolean {
  if ((env[`OTEL_${signal}_EXPORTER`] ?? '').split(',').some((name) => name.trim() === 'none')) return false;
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env[`OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`]);
}

/** Starts the metrics SDK and makes it the global meter provider (so library instruments made after this record). */
export function startProcessMetrics(options: {
  serviceName: string;
  serviceVersion: string;
  env?: NodeJS.ProcessEnv;
}): ProcessMetrics {
  const env = options.env ?? process.env;
  const prometheus = new PrometheusExporter({ preventServerStart: true });
  const readers: IMetricReader[] = [prometheus];
  const otlp = otlpMetricsWanted(env);
  // The exporter reads its endpoint, headers and interval (OTEL_METRIC_EXPORT_INTERVAL) from the environment.
  if (otlp) readers.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter() }));
  const meterProvider = new MeterProvider({
    resource: resourceFromAttributes({
      'service.name': options.serviceName,
      'service.version': options.serviceVersion,
    }),
    readers,
  });
  metrics.setGlobalMeterProvider(meterProvider);
  return {
    meterProvider,
    prometheus,
    otlp,
    async shutdown() {
      await meterProvider.shutdown().catch(() => undefined);
      metrics.disable();
    },
  };
}
