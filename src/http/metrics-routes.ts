/**
 * The front door's `GET /metrics` (Prometheus; behind the internal secret like every route but the
 * health probes: scrape with `Authorization: Bearer <secret>`) and its HTTP server duration histogram
 * (OpenTelemetry's `http.server.request.duration`, labelled by route pattern, never by raw URL).
 */
import { ValueType, type MeterProvider } from '@opentelemetry/api';
import type { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import type { FastifyInstance } from 'fastify';
import { meterOf } from '../telemetry/metrics.js';

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 30, 60];

export function registerMetricsRoutes(
  app: FastifyInstance,
  prometheus: PrometheusExporter,
  meterProvider?: MeterProvider,
): void {
  const duration = meterOf(meterProvider).createHistogram('http.server.request.duration', {
    description: 'HTTP requests of the front door, from the request line to the end of the response',
    unit: 's',
    valueType: ValueType.DOUBLE,
    advice: { explicitBucketBoundaries: DURATION_BUCKETS },
  });
  app.addHook('onResponse', async (request, reply) => {
    duration.record(reply.elapsedTime / 1000, {
      'http.request.method': request.method,
      // The route's pattern (bounded), not the URL: unknown paths are one series.
      'http.route': request.routeOptions.url ?? '(unmatched)',
      'http.response.status_code': reply.statusCode,
    });
  });
  app.get('/metrics', (request, reply) => {
    reply.hijack();
    prometheus.getMetricsRequestHandler(request.raw, reply.raw);
  });
}
