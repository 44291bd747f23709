import type { NatsConnection, Subscription } from '@nats-io/nats-core';
import type { Subjects } from '../contract/subjects.js';
import type { Logger } from '../telemetry/logger.js';

/**
 * The models offered on the bus as far as this worker has heard (issue 19), to tell a model nobody
 * ever offered (`model_not_found`) from one whose node is gone (`no_provider_available`) when a
 * request passed on to its model's subject finds no worker.
 *
 * A worker that starts publishes a hello on `llm.proxy.nodes.hello` with the models it serves and
 * `ask: true`; every worker adds what it hears and answers an asking hello with its own (at most once a
 * second, ANSWER_INTERVAL_MS). Names are only
 * ever added (a node that left still counts as having offered its models), bounded in number and
 * length. A hello also carries its models' `fallbacks`: when no worker serves a model any more, a
 * request for it is passed on to them (forward.ts), so a node's model can name a model of another node
 * as its fallback. Only workers may say hello (deploy/nats: the worker role); the last hello about a
 * model sets its fallbacks.
 */
export interface NodeHello {
  worker_id: string;
  node: string;
  models: string[];
  /** The `fallbacks` of those models that have some (model → fallbacks, in order). */
  fallbacks?: Record<string, string[]>;
  /** Set by a worker that just started: the others answer with their own hello. */
  ask?: boolean;
}

const MAX_MODELS = 10_000;
const MAX_NAME_LENGTH = 256;
const MAX_FALLBACKS = 16;
const NONE: readonly string[] = [];
/**
 * Asking hellos are answered at most once in this time, the last ask of a burst answered at its end:
 * a flood of asks costs each worker one hello a second, not one per ask.
 */
export const ANSWER_INTERVAL_MS = 1_000;

export class BusModels {
  readonly #seen: Set<string>;
  readonly #fallbacks = new Map<string, readonly string[]>();
  readonly #own: NodeHello;
  #subscription: Subscription | undefined;
  #answeredAt = Number.NEGATIVE_INFINITY;
  #answerTimer: NodeJS.Timeout | undefined;

  constructor(own: NodeHello) {
    this.#own = { worker_id: own.worker_id, node: own.node, models: [...own.models] };
    if (own.fallbacks !== undefined && Object.keys(own.fallbacks).length > 0)
      this.#own.fallbacks = structuredClone(own.fallbacks);
    this.#seen = new Set(own.models);
    this.#learn(this.#own);
  }

  has(model: string): boolean {
    return this.#seen.has(model);
  }

  /** The model's fallbacks as its node(s) last said, in order; none when nobody said any. */
  fallbacksOf(model: string): readonly string[] {
    return this.#fallbacks.get(model) ?? NONE;
  }

  get size(): number {
    return this.#seen.size;
  }

  /** Listens for hellos and says its own (asking the others for theirs). */
  start(connection: NatsConnection, subjects: Subjects, logger: Logger): void {
    this.#subscription = connection.subscribe(subjects.nodesHello, {
      callback: (error, message) => {
        if (error !== null) return;
        // Anything thrown here would stop the connection's reader: a hostile hello must not.
        try {
          this.#hear(message.data, connection, subjects, logger, message.subject);
        } catch (failure) {
          logger.warn({ err: failure }, 'a node hello could not be handled');
        }
      },
    });
    connection.publish(subjects.nodesHello, JSON.stringify({ ...this.#own, ask: true }));
  }

  #hear(data: Uint8Array, connection: NatsConnection, subjects: Subjects, logger: Logger, subject: string): void {
    const hello = parseHello(data);
    if (hello === undefined) {
      logger.debug({ subject }, 'ignored a malformed node hello');
      return;
    }
    if (hello.worker_id === this.#own.worker_id) return;
    for (const model of hello.models) {
      if (this.#seen.size >= MAX_MODELS) break;
      this.#seen.add(model);
    }
    this.#learn(hello);
    if (hello.ask === true) this.#answer(connection, subjects);
  }

  /** Its own hello, now or (asked again within ANSWER_INTERVAL_MS) once at the interval's end. */
  #answer(connection: NatsConnection, subjects: Subjects): void {
    if (this.#answerTimer !== undefined) return;
    const say = () => {
      this.#answerTimer = undefined;
      this.#answeredAt = performance.now();
      if (this.#subscription !== undefined && !connection.isClosed())
        connection.publish(subjects.nodesHello, JSON.stringify(this.#own));
    };
    const wait = this.#answeredAt + ANSWER_INTERVAL_MS - performance.now();
    if (wait <= 0) say();
    else this.#answerTimer = setTimeout(say, wait).unref();
  }

  /** The hello's fallbacks for the models it names (bounded as the names are). */
  #learn(hello: NodeHello): void {
    for (const model of hello.models) {
      const fallbacks = hello.fallbacks?.[model];
      if (fallbacks !== undefined && fallbacks.length > 0) {
        if (this.#fallbacks.size < MAX_MODELS || this.#fallbacks.has(model)) this.#fallbacks.set(model, fallbacks);
      } else this.#fallbacks.delete(model);
    }
  }

  stop(): void {
    clearTimeout(this.#answerTimer);
    this.#answerTimer = undefined;
    this.#subscription?.unsubscribe();
    this.#subscription = undefined;
  }
}

function parseHello(data: Uint8Array): NodeHello | undefined {
  let value: unknown;
  try {
    value = JSON.parse(new TextDecoder().decode(data));
  } catch {
    return undefined;
  }
  if (value === null || typeof value !== 'object') return undefined;
  const hello = value as Partial<NodeHello>;
  if (typeof hello.worker_id !== 'string' || hello.worker_id === '' || hello.worker_id.length > MAX_NAME_LENGTH)
    return undefined;
  if (!Array.isArray(hello.models) || hello.models.length > MAX_MODELS) return undefined;
  const models = hello.models.filter(
    (model): model is string => typeof model === 'string' && model !== '' && model.length <= MAX_NAME_LENGTH,
  );
  const node = typeof hello.node === 'string' ? hello.node.slice(0, MAX_NAME_LENGTH) : '';
  const parsed: NodeHello = { worker_id: hello.worker_id, node, models, ask: hello.ask === true };
  const fallbacks = parseFallbacks(hello.fallbacks, models);
  if (fallbacks !== undefined) parsed.fallbacks = fallbacks;
  return parsed;
}

/** Only for the hello's own models; names as a request's model is; at most MAX_FALLBACKS each, never itself. */
function parseFallbacks(value: unknown, models: string[]): Record<string, string[]> | undefined {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
  const given = value as Record<string, unknown>;
  const fallbacks: Record<string, string[]> = Object.create(null);
  for (const model of models) {
    if (!Object.hasOwn(given, model)) continue;
    const list = given[model];
    if (!Array.isArray(list)) continue;
    const names = list
      .filter(
        (name): name is string =>
          typeof name === 'string' && name !== '' && name.length <= MAX_NAME_LENGTH && name !== model,
      )
      .slice(0, MAX_FALLBACKS);
    if (names.length > 0) fallbacks[model] = [...new Set(names)];
  }
  return fallbacks;
}
