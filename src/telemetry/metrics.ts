/**
 * The gateway's metrics, through the OpenTelemetry metrics API only (no SDK here: the CLI's
 * processes register one, telemetry/metrics-sdk.ts; without it every instrument is OTel's no-op).
 * Names and attributes are the GenAI semantic conventions' where they exist
 * (`gen_ai.server.request.duration`, `gen_ai.client.operation.duration`, `gen_ai.client.token.usage`,
 * `gen_ai.request.model`, `gen_ai.provider.name`, `error.type`), `llm_proxy.*` otherwise.
 *
 * Label values are bounded: models and providers are those of the config (a model nobody configured
 * is `(unknown)`), error types are DESIGN.md's codes; an agent id becomes a label only when
 * `telemetry.agent_label` says so.
 *
 * The API's meter provider is not a proxy: instruments made before an SDK is registered stay no-op.
 * So instruments are made when a worker (or aggregator) starts, from the meter provider it is given.
 */
import {
  metrics,
  ValueType,
  type Attributes,
  type BatchObservableResult,
  type Meter,
  type MeterProvider,
} from '@opentelemetry/api';

export const METER_NAME = 'llm-proxy';

/** Seconds: the GenAI conventions' advised boundaries (10 ms to ~82 s, doubling). */
const DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92];
/** Tokens: the GenAI conventions' advised boundaries (1 to 64 Mi, ×4). */
const TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864];

export const UNKNOWN = '(unknown)';
export const OTHER = '(other)';
/** Label sets kept per worker: with `agent_label`, agents past this many are counted as `(other)`. */
export const MAX_SERIES = 10_000;
export const NONE = '(none)';

/** One provider call of a request (the router's attempt record). */
export interface AttemptFacts {
  /** The logical model the attempt served. */
  model: string;
  provider: string;
  /** The model the provider said it used (any string: the label is the configured deployment's name). */
  modelResolved: string;
  errorCode: string | null;
  latencyMs: number;
}

/** What a finished request tells the metrics. */
export interface RequestFacts {
  /** The logical model (the served one, else the requested one). */
  model: string;
  provider: string | null;
  status: string;
  errorCode: string | undefined;
  stream: boolean;
  cached: boolean;
  latencyMs: number;
  ttftMs: number | null;
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
  agentId: string | null;
  attempts: readonly AttemptFacts[];
}

export interface GatewayMetricsOptions {
  /** The configured logical models and their deployments (provider, physical name): nothing else becomes a label. */
  models: ReadonlyMap<string, { deployments: ReadonlyArray<{ provider: string; physical_name: string }> }>;
  /** Add `llm_proxy.agent_id` to the request, token and cost metrics (unbounded: off by default). */
  agentLabel?: boolean;
  /** Default: the global meter provider (OTel's no-op when no SDK is registered). */
  meterProvider?: MeterProvider;
}

/** One tier of the response cache, as its store counts (TieredCache.counters(): no I/O). */
export interface CacheTierCounts {
  /** `memory`, `nats`, `redis`: the store's backend. */
  backend: string;
  hits: number;
  misses: number;
  errors: number;
  skipped_too_large: number;
}

/** The response cache's tiers: the worker's memory LRU (and what it holds), the shared store when there is one. */
export interface CacheGauges {
  memory: CacheTierCounts & { entries: number; bytes: number };
  shared: CacheTierCounts | undefined;
}

/** Attribute objects of one cache tier, made once. */
interface CacheTierAttributes {
  tier: Attributes;
  hit: Attributes;
  miss: Attributes;
}

/** What the worker's gauges read when the SDK collects (never on the request path). */
export interface GatewayGauges {
  inFlight(): number;
  usageEvents(): { pending: number; failedAttempts: number; dropped: number; deadLettered: number };
  /** Refusals by limits so far, keyed `scope kind:dimension` (`agent:rpm`); none when limits are off. */
  limitRefusals(): Readonly<Record<string, number>>;
  /** Admissions after which a USD budget was at least 90% used, keyed like the refusals. */
  limitBudgetNear(): Readonly<Record<string, number>>;
  /** One entry per deployment. */
  deployments(): ReadonlyArray<{ model: string; provider: string; deployment: string; coolingDown: boolean }>;
  /** The response cache's counters per tier, read without I/O; undefined when the cache is off (no cache series). */
  cache(): CacheGauges | undefined;
}

export function meterOf(meterProvider: MeterProvider | undefined): Meter {
  return (meterProvider ?? metrics.getMeterProvider()).getMeter(METER_NAME);
}

/** A label set of finished requests: its attribute objects (made once) and its counters. */
interface RequestSeries {
  base: Attributes;
  outcome: Attributes;
  input: Attributes;
  output: Attributes;
  cache: Attributes;
  requests: number;
  costUsd: number;
  cacheHits: number;
}

/** The worker's instruments; one per worker. */
export class GatewayMetrics {
  readonly #meter: Meter;
  readonly #models: GatewayMetricsOptions['models'];
  readonly #agentLabel: boolean;
  readonly #requestDuration;
  readonly #ttft;
  readonly #attemptDuration;
  readonly #tokens;
  readonly #streams;
  readonly #reconnects;
  /** One entry per label set seen (bounded by the config and the error codes; per agent only with agent_label). */
  readonly #series = new Map<string, RequestSeries>();
  readonly #attemptSeries = new Map<string, Attributes>();
  /** Per cache tier and backend (two at most). */
  readonly #cacheTiers = new Map<string, CacheTierAttributes>();

  constructor(options: GatewayMetricsOptions) {
    const meter = meterOf(options.meterProvider);
    this.#meter = meter;
    this.#models = options.models;
    this.#agentLabel = options.agentLabel === true;
    this.#requestDuration = meter.createHistogram('gen_ai.server.request.duration', {
      description: 'Time from receiving a request to its last reply message',
      unit: 's',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    });
    this.#ttft = meter.createHistogram('gen_ai.server.time_to_first_token', {
      description: 'Time from receiving a streamed request to its first chunk',
      unit: 's',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    });
    this.#attemptDuration = meter.createHistogram('gen_ai.client.operation.duration', {
      description: 'One call to a provider deployment (an attempt), success or failure',
      unit: 's',
      advice: { explicitBucketBoundaries: DURATION_BUCKETS },
    });
    this.#tokens = meter.createHistogram('gen_ai.client.token.usage', {
      description: 'Tokens per request, input and output',
      unit: '{token}',
      valueType: ValueType.INT,
      advice: { explicitBucketBoundaries: TOKEN_BUCKETS },
    });
    this.#streams = meter.createUpDownCounter('llm_proxy.streams.open', {
      description: 'Streams being relayed now',
      unit: '{stream}',
      valueType: ValueType.INT,
    });
    this.#reconnects = meter.createCounter('llm_proxy.nats.reconnects', {
      description: 'Reconnections to the NATS server',
      unit: '{reconnect}',
      valueType: ValueType.INT,
    });
  }

  #model(name: string): string {
    return this.#models.has(name) ? name : UNKNOWN;
  }

  /**
   * The configured physical name of the deployment an attempt went to: the only one of the model on
   * that provider, else the one the provider named, else `(unknown)` (a provider's own model string is
   * never a label: a hostile upstream could make one series per answer).
   */
  #deployment(attempt: AttemptFacts): string {
    let match: string | undefined;
    let count = 0;
    for (const deployment of this.#models.get(attempt.model)?.deployments ?? []) {
      if (deployment.provider !== attempt.provider) continue;
      count++;
      if (count === 1 || deployment.physical_name === attempt.modelResolved) match = deployment.physical_name;
    }
    return count === 1 || (match !== undefined && match === attempt.modelResolved) ? (match as string) : UNKNOWN;
  }

  /**
   * A finished request: its histograms, and its counters (kept here and read at collection: an SDK
   * counter hashes its attributes on every add). Attribute objects are made once per series and
   * reused, so a request allocates none (both measured with `npm run bench`: docs/bench/results.md).
   */
  recordRequest(facts: RequestFacts): void {
    const series = this.#seriesOf(facts);
    series.requests++;
    series.costUsd += facts.costUsd;
    if (facts.cached) series.cacheHits++;
    this.#requestDuration.record(facts.latencyMs / 1000, series.outcome);
    if (facts.ttftMs !== null) this.#ttft.record(facts.ttftMs / 1000, series.base);
    if (facts.promptTokens > 0 || facts.completionTokens > 0) {
      this.#tokens.record(facts.promptTokens, series.input);
      this.#tokens.record(facts.completionTokens, series.output);
    }
    for (const attempt of facts.attempts)
      this.#attemptDuration.record(attempt.latencyMs / 1000, this.#attemptAttributes(attempt));
  }

  #seriesOf(facts: RequestFacts): RequestSeries {
    const model = this.#model(facts.model);
    const provider = facts.provider ?? NONE;
    // An agent id comes from the client (with the shared secret): past MAX_SERIES label sets, new agents are `(other)`.
    let agent = this.#agentLabel ? (facts.agentId ?? NONE) : '';
    if (this.#agentLabel && this.#series.size >= MAX_SERIES) agent = OTHER;
    // The deployment that answered (the last attempt's, as configured), so that durations are per deployment too.
    const last = facts.attempts[facts.attempts.length - 1];
    const deployment = last === undefined ? NONE : this.#deployment(last);
    const key = `${model}\u0000${provider}\u0000${deployment}\u0000${facts.status}\u0000${facts.stream ? 1 : 0}\u0000${facts.errorCode ?? ''}\u0000${agent}`;
    let series = this.#series.get(key);
    if (series !== undefined) return series;
    const base: Attributes = {
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': model,
      'gen_ai.provider.name': provider,
      'gen_ai.response.model': deployment,
    };
    if (this.#agentLabel) base['llm_proxy.agent_id'] = agent;
    series = {
      base,
      outcome: {
        ...base,
        'llm_proxy.status': facts.status,
        'llm_proxy.stream': facts.stream,
        ...(facts.errorCode !== undefined ? { 'error.type': facts.errorCode } : {}),
      },
      input: { ...base, 'gen_ai.token.type': 'input' },
      output: { ...base, 'gen_ai.token.type': 'output' },
      cache: { 'gen_ai.request.model': model },
      requests: 0,
      costUsd: 0,
      cacheHits: 0,
    };
    this.#series.set(key, series);
    return series;
  }

  #attemptAttributes(attempt: AttemptFacts): Attributes {
    const model = this.#model(attempt.model);
    const deployment = this.#deployment(attempt);
    const key = `${model}\u0000${attempt.provider}\u0000${deployment}\u0000${attempt.errorCode ?? ''}`;
    let attributes = this.#attemptSeries.get(key);
    if (attributes === undefined) {
      attributes = {
        'gen_ai.operation.name': 'chat',
        'gen_ai.request.model': model,
        'gen_ai.provider.name': attempt.provider,
        'gen_ai.response.model': deployment,
        ...(attempt.errorCode !== null ? { 'error.type': attempt.errorCode } : {}),
      };
      this.#attemptSeries.set(key, attributes);
    }
    return attributes;
  }

  #cacheTier(tier: 'memory' | 'shared', backend: string): CacheTierAttributes {
    const key = `${tier}\u0000${backend}`;
    let attributes = this.#cacheTiers.get(key);
    if (attributes === undefined) {
      const base: Attributes = { 'llm_proxy.cache.tier': tier, 'llm_proxy.cache.backend': backend };
      attributes = {
        tier: base,
        hit: { ...base, 'llm_proxy.outcome': 'hit' },
        miss: { ...base, 'llm_proxy.outcome': 'miss' },
      };
      this.#cacheTiers.set(key, attributes);
    }
    return attributes;
  }

  streamOpened(): void {
    this.#streams.add(1);
  }

  streamClosed(): void {
    this.#streams.add(-1);
  }

  reconnected(): void {
    this.#reconnects.add(1);
  }

  /** The gauges, read at each collection. Returns a function that stops observing them. */
  observe(gauges: GatewayGauges): () => void {
    const inFlight = this.#meter.createObservableGauge('llm_proxy.requests.in_flight', {
      description: 'Requests being worked on now',
      unit: '{request}',
      valueType: ValueType.INT,
    });
    const pending = this.#meter.createObservableGauge('llm_proxy.usage_events.pending', {
      description: 'Usage events not yet stored in JetStream (held and retried)',
      unit: '{event}',
      valueType: ValueType.INT,
    });
    const failed = this.#meter.createObservableCounter('llm_proxy.usage_events.failed', {
      description: 'Usage event publishes that failed (retried), dropped or dead-lettered, by outcome',
      unit: '{event}',
      valueType: ValueType.INT,
    });
    const cooling = this.#meter.createObservableGauge('llm_proxy.deployments.cooling_down', {
      description: 'Deployments cooling down (1) or healthy (0)',
      unit: '{deployment}',
      valueType: ValueType.INT,
    });
    const callback = (result: BatchObservableResult) => {
      result.observe(inFlight, gauges.inFlight());
      const events = gauges.usageEvents();
      result.observe(pending, events.pending);
      result.observe(failed, events.failedAttempts, { 'llm_proxy.outcome': 'retried' });
      result.observe(failed, events.dropped, { 'llm_proxy.outcome': 'dropped' });
      result.observe(failed, events.deadLettered, { 'llm_proxy.outcome': 'dead_lettered' });
      for (const [instrument, counts] of [
        [refusals, gauges.limitRefusals()],
        [budgetNear, gauges.limitBudgetNear()],
      ] as const) {
        for (const [by, count] of Object.entries(counts)) {
          const [scope = '', dimension = ''] = by.split(':');
          result.observe(instrument, count, { 'llm_proxy.limit.scope': scope, 'llm_proxy.limit.dimension': dimension });
        }
      }
      const hitsByModel = new Map<string, { attributes: Attributes; hits: number }>();
      const costBy = new Map<string, { attributes: Attributes; usd: number }>();
      for (const series of this.#series.values()) {
        result.observe(requests, series.requests, series.outcome);
        const baseKey = JSON.stringify(series.base);
        const spent = costBy.get(baseKey) ?? { attributes: series.base, usd: 0 };
        spent.usd += series.costUsd;
        costBy.set(baseKey, spent);
        const model = String(series.cache['gen_ai.request.model']);
        const hit = hitsByModel.get(model) ?? { attributes: series.cache, hits: 0 };
        hit.hits += series.cacheHits;
        hitsByModel.set(model, hit);
      }
      for (const { attributes, usd } of costBy.values()) if (usd > 0) result.observe(cost, usd, attributes);
      for (const { attributes, hits } of hitsByModel.values())
        if (hits > 0) result.observe(cacheHits, hits, attributes);
      const tiers = gauges.cache();
      if (tiers !== undefined) {
        for (const [tier, counts] of [
          ['memory', tiers.memory],
          ['shared', tiers.shared],
        ] as const) {
          if (counts === undefined) continue;
          const attributes = this.#cacheTier(tier, counts.backend);
          result.observe(cacheLookups, counts.hits, attributes.hit);
          result.observe(cacheLookups, counts.misses, attributes.miss);
          result.observe(cacheErrors, counts.errors, attributes.tier);
          result.observe(cacheSkipped, counts.skipped_too_large, attributes.tier);
        }
        const memory = this.#cacheTier('memory', tiers.memory.backend).tier;
        result.observe(cacheEntries, tiers.memory.entries, memory);
        result.observe(cacheBytes, tiers.memory.bytes, memory);
      }
      for (const deployment of gauges.deployments()) {
        result.observe(cooling, deployment.coolingDown ? 1 : 0, {
          'gen_ai.request.model': deployment.model,
          'gen_ai.provider.name': deployment.provider,
          'gen_ai.response.model': deployment.deployment,
        });
      }
    };
    const refusals = this.#meter.createObservableCounter('llm_proxy.limit.refusals', {
      description: 'Requests refused by a limit or budget, by the scope kind and dimension that refused',
      unit: '{request}',
      valueType: ValueType.INT,
    });
    const budgetNear = this.#meter.createObservableCounter('llm_proxy.limit.budget_near', {
      description: 'Admissions after which a daily or monthly USD budget was at least 90% used, by scope kind',
      unit: '{request}',
      valueType: ValueType.INT,
    });
    const requests = this.#meter.createObservableCounter('llm_proxy.requests', {
      description: 'Requests finished, by model, provider, status and error type',
      unit: '{request}',
      valueType: ValueType.INT,
    });
    const cost = this.#meter.createObservableCounter('llm_proxy.cost', {
      description: 'Cost of the requests in USD, at the configured prices',
      unit: '{USD}',
    });
    const cacheHits = this.#meter.createObservableCounter('llm_proxy.cache.hits', {
      description: 'Requests answered from the response cache',
      unit: '{request}',
      valueType: ValueType.INT,
    });
    // The cache's own counters, per tier: the store's lookups (a memory miss goes on to the shared tier).
    const cacheLookups = this.#meter.createObservableCounter('llm_proxy.cache.lookups', {
      description: 'Response cache lookups by tier (memory, shared), backend and outcome (hit, miss)',
      unit: '{lookup}',
      valueType: ValueType.INT,
    });
    const cacheErrors = this.#meter.createObservableCounter('llm_proxy.cache.errors', {
      description: 'Response cache operations that failed or were skipped because the store was unreachable',
      unit: '{operation}',
      valueType: ValueType.INT,
    });
    const cacheSkipped = this.#meter.createObservableCounter('llm_proxy.cache.skipped_too_large', {
      description: 'Answers a response cache tier did not store because they were larger than its bound',
      unit: '{answer}',
      valueType: ValueType.INT,
    });
    const cacheEntries = this.#meter.createObservableGauge('llm_proxy.cache.entries', {
      description: "Answers held by this worker's memory tier of the response cache",
      unit: '{answer}',
      valueType: ValueType.INT,
    });
    const cacheBytes = this.#meter.createObservableGauge('llm_proxy.cache.bytes', {
      description: "Bytes (the answers' JSON) held by this worker's memory tier of the response cache",
      unit: 'By',
      valueType: ValueType.INT,
    });
    const observables = [
      inFlight,
      pending,
      failed,
      cooling,
      refusals,
      budgetNear,
      requests,
      cost,
      cacheHits,
      cacheLookups,
      cacheErrors,
      cacheSkipped,
      cacheEntries,
      cacheBytes,
    ];
    this.#meter.addBatchObservableCallback(callback, observables);
    return () => this.#meter.removeBatchObservableCallback(callback, observables);
  }
}
