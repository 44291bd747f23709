/**
 * The gateway's spans, through the OpenTelemetry trace API only (the SDK is trace-sdk.ts, started by
 * the CLI's processes; without it every call here is OTel's no-op):
 *
 *   `llm.proxy.request process` (CONSUMER, one per request, its parent the caller's W3C context)
 *   ├── `llm_proxy.limits admit` (INTERNAL, when limits are on)
 *   ├── `chat <physical model>` (CLIENT, one per provider call: the GenAI conventions' client span)
 *   ├── `chat <physical model>` (a retry or a fallback)
 *   └── `llm_proxy.limits settle` (INTERNAL, after the reply)
 *
 * Parents are passed explicitly (an OTel Context on the router's call and the hooks' context), so
 * nothing depends on a context manager. Attribute values are bounded (names of the config, error
 * codes, numbers; a string from a client or a provider is cut to MAX_ATTRIBUTE_LENGTH) and never
 * hold a key, a secret, a prompt or an answer. When nothing records, the helpers build nothing
 * beyond what the no-op span needs: span names and start attributes are made once per deployment.
 */
import {
  context,
  isSpanContextValid,
  propagation,
  trace,
  SpanKind,
  SpanStatusCode,
  type Attributes,
  type Context,
  type Span,
  type SpanOptions,
  type TextMapGetter,
  type Tracer,
  type TracerProvider,
} from '@opentelemetry/api';
import { Match, type MsgHdrs } from '@nats-io/nats-core';
import { ProxyError } from '../contract/errors.js';
import type { FinishReason } from '../contract/reply.js';
import type { ProviderResponse, ProviderStreamEvent, ProviderUsage } from '../providers/types.js';

export const TRACER_NAME = 'llm-proxy';

/** Longest string attribute value: a client's model name or id, a provider's model string are cut here. */
export const MAX_ATTRIBUTE_LENGTH = 256;

function bounded(value: string): string {
  return value.length > MAX_ATTRIBUTE_LENGTH ? value.slice(0, MAX_ATTRIBUTE_LENGTH) : value;
}

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

let tracerOf: TracerProvider | undefined;
let cachedTracer: Tracer | undefined;

/**
 * The tracer of the global provider now. The API's global provider object changes only when tracing
 * is disabled and started again (tests, `dev`): a tracer taken once at import would keep the old one.
 */
function tracer(): Tracer {
  const provider = trace.getTracerProvider();
  if (provider !== tracerOf || cachedTracer === undefined) {
    tracerOf = provider;
    cachedTracer = provider.getTracer(TRACER_NAME);
  }
  return cachedTracer;
}

export function extractTraceContext(headers: MsgHdrs | undefined): Context {
  return propagation.extract(context.active(), headers, headersGetter);
}

// ---------------------------------------------------------------- the request span

/** One consumer span per request, as other NATS clients emit them. */
export function startRequestSpan(subject: string, headers: MsgHdrs | undefined): Span {
  const parent = extractTraceContext(headers);
  // A model's subject (`<prefix>.proxy.model.<token>`) is named by its template, as OTel's messaging
  // conventions ask of a destination with a variable part.
  const at = subject.indexOf(MODEL_SUBJECT_PART);
  const template = at === -1 ? undefined : `${subject.slice(0, at + MODEL_SUBJECT_PART.length)}{model}`;
  return tracer().startSpan(
    `${template ?? subject} process`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        'messaging.system': 'nats',
        'messaging.destination.name': subject,
        ...(template === undefined ? {} : { 'messaging.destination.template': template }),
        'messaging.operation.type': 'process',
      },
    },
    parent,
  );
}

const MODEL_SUBJECT_PART = '.proxy.model.';

/**
 * The context the request's child spans (attempts, limits) start in: the request span's. Undefined
 * when the span is OTel's no-op without a trace (no SDK, no incoming context): nothing is allocated
 * and the children are no-ops too. A span an SDK did not sample still has a context, so that its
 * children inherit the decision instead of starting traces of their own.
 */
export function requestTraceContext(span: Span): Context | undefined {
  return isSpanContextValid(span.spanContext()) ? trace.setSpan(context.active(), span) : undefined;
}

/** What the request span says at its end (the worker's RequestRecord has these fields). */
export interface RequestSpanFacts {
  requestId: string;
  /** The logical model the client asked for. */
  requestedModel: string | null;
  /** The logical model that served it (a fallback, maybe). */
  model: string | null;
  provider: string | null;
  /** The model the provider said it used. */
  modelResolved: string | null;
  tokens: { promptTokens: number; completionTokens: number; estimated: boolean };
  attempts: { readonly length: number };
  /** The error code, undefined when served. */
  code: string | undefined;
  cached: boolean;
  stream: boolean;
}

export function endRequestSpan(span: Span, facts: RequestSpanFacts): void {
  if (!span.isRecording()) {
    span.end();
    return;
  }
  span.setAttribute('gen_ai.operation.name', 'chat');
  span.setAttribute('llm_proxy.request_id', bounded(facts.requestId));
  if (facts.requestedModel !== null) span.setAttribute('gen_ai.request.model', bounded(facts.requestedModel));
  if (facts.model !== null) span.setAttribute('llm_proxy.model', facts.model);
  if (facts.provider !== null) span.setAttribute('gen_ai.provider.name', facts.provider);
  if (facts.modelResolved !== null && facts.modelResolved !== '')
    span.setAttribute('gen_ai.response.model', bounded(facts.modelResolved));
  const tokens = facts.tokens;
  if (tokens.promptTokens > 0 || tokens.completionTokens > 0) {
    span.setAttribute('gen_ai.usage.input_tokens', tokens.promptTokens);
    span.setAttribute('gen_ai.usage.output_tokens', tokens.completionTokens);
    if (tokens.estimated) span.setAttribute('llm_proxy.tokens_estimated', true);
  }
  span.setAttribute('llm_proxy.attempts', facts.attempts.length);
  span.setAttribute('llm_proxy.stream', facts.stream);
  if (facts.cached) span.setAttribute('llm_proxy.cached', true);
  if (facts.code !== undefined) {
    span.setAttribute('error.type', facts.code);
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}

/**
 * The answer's finish reasons on the request span (`gen_ai.response.finish_reasons`): the first
 * choice's, or one per choice when there are several.
 */
export function noteFinishReasons(
  traceContext: Context | undefined,
  first: FinishReason,
  choices?: ReadonlyArray<{ finish_reason: FinishReason | null }> | undefined,
): void {
  if (traceContext === undefined) return;
  const span = trace.getSpan(traceContext);
  if (span === undefined || !span.isRecording()) return;
  const reasons =
    choices !== undefined && choices.length > 1 ? choices.map((choice) => choice.finish_reason ?? 'error') : [first];
  span.setAttribute('gen_ai.response.finish_reasons', reasons);
}

// ---------------------------------------------------------------- attempt spans

/** A deployment's client span, made once per deployment: its name and start attributes never change. */
export interface AttemptTarget {
  readonly name: string;
  readonly options: SpanOptions;
}

/**
 * `chat <physical model>` with the GenAI conventions' start attributes: the operation, the provider
 * (its name in the config), the model name sent (`physical_name`), the server's host; and the logical
 * model it serves (`llm_proxy.model`).
 */
export function attemptTarget(deployment: {
  model: string;
  provider: string;
  physicalName: string;
  /** The provider's base URL, for `server.address`. */
  baseUrl?: string | undefined;
}): AttemptTarget {
  const attributes: Attributes = {
    'gen_ai.operation.name': 'chat',
    'gen_ai.provider.name': deployment.provider,
    'gen_ai.request.model': bounded(deployment.physicalName),
    'llm_proxy.model': deployment.model,
  };
  const host = hostOf(deployment.baseUrl);
  if (host !== undefined) attributes['server.address'] = host;
  return {
    name: bounded(`chat ${deployment.physicalName}`),
    options: { kind: SpanKind.CLIENT, attributes },
  };
}

function hostOf(baseUrl: string | undefined): string | undefined {
  if (baseUrl === undefined) return undefined;
  try {
    const host = new URL(baseUrl).hostname;
    return host === '' ? undefined : bounded(host);
  } catch {
    return undefined;
  }
}

/** One provider call (an attempt), a child of the request span; `attempt` counts from 1 over the request. */
export function startAttemptSpan(parent: Context | undefined, target: AttemptTarget, attempt: number): Span {
  const span = tracer().startSpan(target.name, target.options, parent);
  if (span.isRecording()) span.setAttribute('llm_proxy.attempt', attempt);
  return span;
}

/** A failed attempt: its error code as `error.type` (never the message: a provider's text may echo a key). */
export function endAttemptFailure(span: Span, errorType: string): void {
  if (span.isRecording()) {
    span.setAttribute('error.type', errorType);
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}

function setUsage(span: Span, usage: ProviderUsage | undefined): void {
  if (usage === undefined) return;
  if (usage.missing !== 'prompt') span.setAttribute('gen_ai.usage.input_tokens', usage.promptTokens);
  if (usage.missing !== 'completion') span.setAttribute('gen_ai.usage.output_tokens', usage.completionTokens);
}

/** A whole answer: the model the provider named, its token counts (when it gave them), its finish reasons. */
export function endAttemptSuccess(span: Span, response: ProviderResponse): void {
  if (span.isRecording()) {
    if (response.modelResolved !== '') span.setAttribute('gen_ai.response.model', bounded(response.modelResolved));
    setUsage(span, response.usage);
    const choices = response.choices;
    span.setAttribute(
      'gen_ai.response.finish_reasons',
      choices !== undefined && choices.length > 1
        ? choices.map((choice) => choice.finishReason)
        : [response.finishReason],
    );
  }
  span.end();
}

/**
 * The answering attempt of a stream ends with the stream: its events are watched on their way
 * (usage, finish reasons, the model) and the span ends when they end, fail or are closed early.
 * A span that does not record is ended at once and the events handed back untouched.
 */
export function traceAttemptStream(
  events: AsyncIterableIterator<ProviderStreamEvent>,
  span: Span,
  modelResolved: string | undefined,
): AsyncIterableIterator<ProviderStreamEvent> {
  if (!span.isRecording()) {
    span.end();
    return events;
  }
  return new TracedStream(events, span, modelResolved);
}

class TracedStream implements AsyncIterableIterator<ProviderStreamEvent> {
  #reasons: FinishReason[] | undefined;
  #usage: ProviderUsage | undefined;
  #ended = false;

  constructor(
    private readonly inner: AsyncIterableIterator<ProviderStreamEvent>,
    private readonly span: Span,
    private modelResolved: string | undefined,
  ) {}

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<ProviderStreamEvent>> {
    let result: IteratorResult<ProviderStreamEvent>;
    try {
      result = await this.inner.next();
    } catch (error) {
      this.#end(error instanceof ProxyError ? error.code : 'internal');
      throw error;
    }
    if (result.done === true) this.#end(undefined);
    else this.#observe(result.value);
    return result;
  }

  async return(): Promise<IteratorResult<ProviderStreamEvent>> {
    this.#end('cancelled');
    return (await this.inner.return?.()) ?? { done: true, value: undefined };
  }

  #observe(event: ProviderStreamEvent): void {
    if (event.type === 'finish') {
      const index = event.index ?? 0;
      // As many reasons as choices, within reason (a provider's index is not trusted to grow it).
      if (index < 128) (this.#reasons ??= [])[index] = event.finishReason;
    } else if (event.type === 'usage') {
      this.#usage = event.usage;
    } else if (event.type === 'model') {
      this.modelResolved = event.modelResolved;
    }
  }

  #end(errorType: string | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    const span = this.span;
    if (this.modelResolved !== undefined && this.modelResolved !== '')
      span.setAttribute('gen_ai.response.model', bounded(this.modelResolved));
    setUsage(span, this.#usage);
    if (this.#reasons !== undefined)
      span.setAttribute(
        'gen_ai.response.finish_reasons',
        Array.from(this.#reasons, (reason) => reason ?? 'error'),
      );
    if (errorType !== undefined) {
      span.setAttribute('error.type', errorType);
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
    span.end();
  }
}

// ---------------------------------------------------------------- limits spans

export type LimitsOperation = 'admit' | 'settle';

/**
 * How a limits operation went: `admitted`, `refused` (a limit or budget said no), `failed_open` (the
 * store was down and the policy let the request in uncounted), `store_error` (down, and refused);
 * `settled` / `cancelled` (a cached reply gives its tokens back), `not_stored` (the store was down:
 * the reservation stays charged).
 */
export type LimitsOutcome =
  | 'admitted'
  | 'refused'
  | 'failed_open'
  | 'store_error'
  /** Another failure before the store was asked (e.g. the request's own estimate failed). */
  | 'error'
  | 'settled'
  | 'cancelled'
  /** Given back whole: the request was passed on to another worker, which counts it. */
  | 'refunded'
  | 'not_stored';

/** The refusing scope's kind (`agent`, `key`, `microdao`, `model`) and dimension (`rpm`, `daily_usd`…). */
export interface LimitsRefusal {
  errorType: string;
  scope?: string | undefined;
  dimension?: string | undefined;
}

const LIMITS_SPANS: Record<LimitsOperation, { name: string; options: SpanOptions }> = {
  admit: {
    name: 'llm_proxy.limits admit',
    options: { kind: SpanKind.INTERNAL, attributes: { 'llm_proxy.limit.operation': 'admit' } },
  },
  settle: {
    name: 'llm_proxy.limits settle',
    options: { kind: SpanKind.INTERNAL, attributes: { 'llm_proxy.limit.operation': 'settle' } },
  },
};

/** A limits operation of a request, a child of its request span. */
export function startLimitsSpan(parent: Context | undefined, operation: LimitsOperation): Span {
  const span = LIMITS_SPANS[operation];
  return tracer().startSpan(span.name, span.options, parent);
}

export function endLimitsSpan(span: Span, outcome: LimitsOutcome, backend: string, refusal?: LimitsRefusal): void {
  if (span.isRecording()) {
    span.setAttribute('llm_proxy.limit.outcome', outcome);
    span.setAttribute('llm_proxy.limit.backend', backend);
    if (refusal !== undefined) {
      if (refusal.scope !== undefined) span.setAttribute('llm_proxy.limit.scope', refusal.scope);
      if (refusal.dimension !== undefined) span.setAttribute('llm_proxy.limit.dimension', refusal.dimension);
      span.setAttribute('error.type', refusal.errorType);
      span.setStatus({ code: SpanStatusCode.ERROR });
    }
  }
  span.end();
}
