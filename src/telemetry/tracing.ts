import {
  context,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Context,
  type Span,
  type TextMapGetter,
} from '@opentelemetry/api';
import { Match, type MsgHdrs } from '@nats-io/nats-core';

/**
 * W3C trace context over NATS headers. nats.js does not propagate it, so we
 * read `traceparent`/`tracestate` through OTel's propagation API. With no SDK
 * registered every call here is OTel's no-op: cheap enough for every request.
 * Header names match in any case (`Traceparent`, `TRACEPARENT`), as in HTTP.
 */
const headersGetter: TextMapGetter<MsgHdrs | undefined> = {
  keys: (carrier) => (carrier === undefined ? [] : carrier.keys()),
  get: (carrier, key) => {
    if (carrier === undefined || !carrier.has(key, Match.IgnoreCase)) return undefined;
    const values = carrier.values(key, Match.IgnoreCase);
    return values.length <= 1 ? values[0] : values;
  },
};

const tracer = trace.getTracer('llm-proxy');

export function extractTraceContext(headers: MsgHdrs | undefined): Context {
  return propagation.extract(context.active(), headers, headersGetter);
}

/** One consumer span per request, as other NATS clients emit them. */
export function startRequestSpan(subject: string, headers: MsgHdrs | undefined): Span {
  const parent = extractTraceContext(headers);
  return tracer.startSpan(
    `${subject} process`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.destination.name': subject,
        'messaging.operation.type': 'process',
      },
    },
    parent,
  );
}

export function endRequestSpan(
  span: Span,
  outcome: { requestId: string; model?: string | undefined; errorCode?: string | undefined },
): void {
  span.setAttribute('llm_proxy.request_id', outcome.requestId);
  if (outcome.model !== undefined) span.setAttribute('gen_ai.request.model', outcome.model);
  if (outcome.errorCode !== undefined) {
    span.setAttribute('error.type', outcome.errorCode);
    span.setStatus({ code: SpanStatusCode.ERROR, message: outcome.errorCode });
  }
  span.end();
}
