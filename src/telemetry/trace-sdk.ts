/**
 * The OpenTelemetry trace SDK of one CLI process (worker, aggregator, front door, dev). Library code
 * never imports this: it starts spans through the API (tracing.ts), which stays a no-op until a
 * provider is registered here.
 *
 * - The W3C trace context propagator is registered always: a request's `traceparent` is read and
 *   passed on (NATS headers, the front door's HTTP headers) even when no span is exported.
 * - Spans are exported with OTLP over HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` or
 *   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and `OTEL_TRACES_EXPORTER` does not say `none`
 *   (the exporter reads its endpoint, headers, timeout from the environment; the provider its
 *   sampler, `OTEL_TRACES_SAMPLER`, parent-based always-on by default); or to the exporter given
 *   (tests: an InMemorySpanExporter, each span as it ends).
 */
import { propagation, trace, ProxyTracerProvider } from '@opentelemetry/api';
import { otlpWanted } from './metrics-sdk.js';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  BatchSpanProcessor,
  SimpleSpanProcessor,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace-base';

export interface TracingOptions {
  serviceName: string;
  serviceVersion?: string;
  /** Where the OTEL_* variables are read (default: process.env). */
  env?: NodeJS.ProcessEnv;
  /** Export to this exporter, each span as it ends, whatever the environment says (tests). */
  exporter?: SpanExporter;
}

export interface ProcessTracing {
  readonly provider: BasicTracerProvider;
  /** Exports what is left and unregisters the provider (the API is a no-op again). */
  shutdown(): Promise<void>;
}

/** OTLP trace export is on when an endpoint is named and `OTEL_TRACES_EXPORTER` does not say `none`. */
export function otlpTracesWanted(env: NodeJS.ProcessEnv): boolean {
  return otlpWanted(env, 'TRACES');
}

/**
 * Registers the W3C propagator, and a tracer provider when spans are to be exported: the handle to
 * flush and stop it, or undefined when nothing is exported (or a provider is registered already: one
 * per process, the first stays).
 */
export function startTracing(options: TracingOptions): ProcessTracing | undefined {
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  const env = options.env ?? process.env;
  let processor: SpanProcessor;
  if (options.exporter !== undefined) processor = new SimpleSpanProcessor(options.exporter);
  else if (otlpTracesWanted(env)) processor = new BatchSpanProcessor(new OTLPTraceExporter());
  else return undefined;
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      'service.name': env.OTEL_SERVICE_NAME || options.serviceName,
      ...(options.serviceVersion === undefined ? {} : { 'service.version': options.serviceVersion }),
    }),
    spanProcessors: [processor],
  });
  if (!trace.setGlobalTracerProvider(provider)) {
    void provider.shutdown().catch(() => undefined);
    return undefined;
  }
  return {
    provider,
    async shutdown() {
      await provider.shutdown().catch(() => undefined);
      const global = trace.getTracerProvider();
      if (global instanceof ProxyTracerProvider && global.getDelegate() === provider) trace.disable();
    },
  };
}
