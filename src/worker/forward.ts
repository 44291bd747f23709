import {
  createInbox,
  headers as createHeaders,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription,
} from '@nats-io/nats-core';
import { inboxPrefixOf } from '../bus/inbox.js';
import { ProxyError, type ErrorCode } from '../contract/errors.js';
import { HEADERS, STREAM_MARKS } from '../contract/subjects.js';
import type { BusModels } from './bus-models.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';

/**
 * Passing a request on to the workers that serve its model (issue 19).
 *
 * A request for a model this worker does not serve, received on `llm.proxy.request` (the seed's
 * subject, which every worker takes), is published once more on `llm.proxy.model.<token>`, where only
 * workers with that model listen, with `LLM-Forwarded` set (a forwarded request is never passed on
 * again) and this worker's own inbox as the reply subject. What comes back (the reply, or a stream's
 * chunks, heartbeats and terminal message) is relayed to the client's inbox unchanged. The serving
 * worker publishes the usage event: the forwarder publishes none, so the request is counted once.
 *
 * No worker serves the model: the server answers the publish with a 503 status at once, and the
 * request goes to the model's fallbacks as its node said, each once, with the body naming the fallback
 * (`servedElsewhereRoute`); none of them either: this worker answers the client itself (with an event),
 * `no_provider_available` when the model was offered on the bus (its node is gone), else
 * `model_not_found`. The same relay carries a request this worker admitted but could not serve to its
 * model's fallbacks on other nodes (`fallbacksElsewhereRoute`, fallbacks-elsewhere.ts).
 *
 * A client that goes away: the serving worker probes the client by sending some messages as requests;
 * those are relayed as requests too, and when the client's inbox has no responders the relay stops
 * listening, so the serving worker's next probe finds none and aborts the upstream call.
 */

/** How long a relay waits for the next message of a stream (the serving worker sends heartbeats). */
const STREAM_IDLE_MS = 60_000;
/** Past the request's own deadline, how long a relay still waits for a plain reply. */
const REPLY_GRACE_MS = 30_000;
/** A probe relayed to the client: how long to wait for its no-responders answer. */
const PROBE_TIMEOUT_MS = 2_000;

export interface ForwardParts {
  connection: NatsConnection;
  /** The subject of a model's workers (`Subjects.modelFor`). */
  subjectFor: (model: string) => string;
  busModels: BusModels;
}

/** A copy of the request's headers with `LLM-Forwarded` set to this worker's id. */
function forwardedHeaders(original: MsgHdrs | undefined, workerId: string): MsgHdrs {
  const headers = createHeaders();
  if (original !== undefined) {
    for (const name of original.keys()) {
      if (name.toLowerCase() === HEADERS.forwarded.toLowerCase()) continue;
      for (const value of original.values(name)) headers.append(name, value);
    }
  }
  headers.set(HEADERS.forwarded, workerId);
  return headers;
}

/**
 * The request's body naming another model (a fallback), with what is left of its time when given; the
 * body was read as JSON by admission already.
 */
function withModel(message: Msg, model: string, timeoutMs: number | undefined): string {
  const body = JSON.parse(message.string()) as Record<string, unknown>;
  return JSON.stringify({ ...body, model, ...(timeoutMs === undefined ? {} : { timeout_ms: timeoutMs }) });
}

/** Returned by a route's `none` to leave the request to the caller (nothing was passed on, nothing answered). */
export const NOT_PASSED = Symbol('not passed on');

/** Where a request is passed on: models tried in order, the first with a worker answering it. */
export interface ForwardRoute {
  /** The next model to send it to (each once), or undefined when none is left. */
  next(): string | undefined;
  /**
   * No model had a worker (or could carry the body: the first skipped for its size is named): answers
   * the client and returns its code, or NOT_PASSED to leave the request to the caller.
   */
  none(skippedTooLarge: string | undefined): ErrorCode | undefined | typeof NOT_PASSED;
  /** For a body rewritten for a fallback: its `timeout_ms` (what is left of the request's time). */
  timeoutMs?: number;
  /** Called once, when the first message that is not a no-responders arrives (the relay begins). */
  onAnswer?: () => void;
}

/** Whether the request's key (if any) may use `model`: a key's model list applies to fallbacks too. */
export function keyAllows(record: RequestRecord, model: string): boolean {
  const allowed = record.caller.key?.models ?? null;
  return allowed === null || allowed.includes(model);
}

/** The models of `candidates` a request may go to: not tried yet, and within its key's model list. */
function candidatesOf(record: RequestRecord, candidates: () => Iterable<string>): () => string | undefined {
  const tried = new Set<string>();
  return () => {
    for (const candidate of candidates()) {
      if (tried.has(candidate) || !keyAllows(record, candidate)) continue;
      tried.add(candidate);
      return candidate;
    }
    return undefined;
  };
}

function tooLarge(what: string): ProxyError {
  return new ProxyError(
    'payload_too_large',
    `the request is too close to the NATS server's max_payload to be passed on to ${what}: send it on its model's subject (the typed client does)`,
  );
}

/**
 * A request for a model this worker does not serve: its model's workers; when none is there, the
 * model's fallbacks as its node said (bus-models.ts); none of them either: this worker answers
 * (`no_provider_available` for a model offered on the bus, else `model_not_found`).
 */
export function servedElsewhereRoute(
  message: Msg,
  record: RequestRecord,
  model: string,
  deps: StageDependencies & { forward: ForwardParts },
): ForwardRoute {
  const busModels = deps.forward.busModels;
  return {
    next: candidatesOf(record, () => [model, ...busModels.fallbacksOf(model)]),
    none: (skipped) => {
      const refusal =
        skipped !== undefined
          ? tooLarge(
              skipped === model ? `the workers of "${model}"` : `the workers of "${skipped}", a fallback of "${model}"`,
            )
          : busModels.has(model)
            ? new ProxyError('no_provider_available', `no worker on the bus serves model "${model}" now`)
            : new ProxyError('model_not_found', `unknown model "${model}"`);
      return deps.delivery.error(message, record, refusal, record.stream);
    },
  };
}

/**
 * A request this worker admitted but could not serve (every deployment and local fallback failed): its
 * model's fallbacks on other nodes (those its config names but does not define), with what is left of
 * its time. None has a worker: NOT_PASSED (the caller answers with its own error).
 */
export function fallbacksElsewhereRoute(
  record: RequestRecord,
  fallbacks: string[],
  timeoutMs: number,
  onAnswer?: () => void,
): ForwardRoute {
  return {
    next: candidatesOf(record, () => fallbacks),
    none: () => NOT_PASSED,
    timeoutMs,
    ...(onAnswer === undefined ? {} : { onAnswer }),
  };
}

/** Whether a message carries `LLM-Forwarded` (it was passed on once already). */
export function wasForwarded(message: Msg): boolean {
  try {
    return (message.headers?.get(HEADERS.forwarded) ?? '') !== '';
  } catch {
    return false;
  }
}

function isNoResponders(message: Msg): boolean {
  return message.data.length === 0 && message.headers?.code === 503;
}

/**
 * Passes the request on along `route` and relays its answer. Resolves with `undefined` once the answer
 * was relayed (or the relay gave up waiting), marking the record handed over; with the error code when
 * this worker answered the client itself; with NOT_PASSED when the route left it to the caller.
 */
export function forwardRequest(
  message: Msg,
  record: RequestRecord,
  route: ForwardRoute,
  timeoutMs: number,
  deps: StageDependencies & { forward: ForwardParts },
): Promise<ErrorCode | undefined | typeof NOT_PASSED> {
  const connection = deps.forward.connection;
  const clientInbox = message.reply!;
  const inbox = createInbox(inboxPrefixOf(connection));
  const stream = record.stream;
  const requested = record.request?.model ?? record.requestedModel ?? '';
  // A relay costs a subscription, not an upstream call: it leaves its place in max_in_flight, so that
  // a worker full of relays still takes requests (among them, a relayed request's fallback it serves).
  deps.counters.relaying++;
  deps.onRelay?.();
  const relayed = new Promise<ErrorCode | undefined | typeof NOT_PASSED>((resolve) => {
    let subscription: Subscription | undefined;
    let timer: NodeJS.Timeout | undefined;
    let first = true;
    let answered = false;
    let target = '';
    // Ended without an answer of this worker's own: the request went to another worker, which answers
    // for it and publishes its event (even when the relay stopped waiting).
    const handedOver = () => {
      record.handedOver = true;
      done(undefined);
    };
    const done = (code: ErrorCode | undefined | typeof NOT_PASSED) => {
      clearTimeout(timer);
      subscription?.unsubscribe();
      subscription = undefined;
      resolve(code);
    };
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        record.logger.warn({ model: target }, `${what}: stopped relaying (the client's own timeout applies)`);
        handedOver();
      }, ms);
      timer.unref();
    };
    const relay = (reply: Msg) => {
      const options = reply.headers === undefined ? {} : { headers: reply.headers };
      if (reply.reply === undefined || reply.reply === '') {
        connection.publish(clientInbox, reply.data, options);
        return;
      }
      // A probe of the serving worker: asked of the client the same way, and the relay stops when nobody is there.
      connection.request(clientInbox, reply.data, { ...options, timeout: PROBE_TIMEOUT_MS }).catch((error: unknown) => {
        const noResponders =
          error instanceof Error &&
          ((error as { isNoResponders?: () => boolean }).isNoResponders?.() === true ||
            error.name === 'NoRespondersError');
        if (noResponders && subscription !== undefined) {
          record.logger.info({ model: target }, 'the client of a forwarded stream went away: relay stopped');
          handedOver();
        }
      });
    };
    // The requested model's subject with the body as it came; another's with the body naming it.
    // `too_large`: nats.js refused it (a body near max_payload, with the header this worker adds).
    const publishTo = (to: string): 'sent' | 'too_large' | 'failed' => {
      try {
        const body =
          to === requested && route.timeoutMs === undefined ? message.data : withModel(message, to, route.timeoutMs);
        connection.publish(deps.forward.subjectFor(to), body, {
          reply: inbox,
          headers: forwardedHeaders(message.headers, deps.workerId),
        });
        return 'sent';
      } catch (error) {
        if (error instanceof Error && error.message.includes('max_payload')) return 'too_large';
        record.logger.error({ err: error, model: to }, 'a request could not be passed on');
        done(
          deps.delivery.error(
            message,
            record,
            new ProxyError('internal', 'the request could not be passed on'),
            stream,
          ),
        );
        return 'failed';
      }
    };
    // The route's next model that has a worker (a 503 moves on) and can carry the body; none: the route decides.
    let skippedTooLarge: string | undefined;
    const toNext = () => {
      for (let to = route.next(); to !== undefined; to = route.next()) {
        const sent = publishTo(to);
        if (sent === 'failed') return;
        if (sent === 'sent') {
          if (target !== '')
            record.logger.info(
              { model: target, fallback: to },
              'no worker serves the model: passed on to its fallback',
            );
          target = to;
          first = true;
          return;
        }
        skippedTooLarge ??= to;
      }
      done(route.none(skippedTooLarge));
    };
    subscription = connection.subscribe(inbox, {
      callback: (error, reply) => {
        if (subscription === undefined) return;
        if (error !== null) {
          handedOver();
          return;
        }
        if (first) {
          first = false;
          if (isNoResponders(reply)) {
            toNext();
            return;
          }
          if (!answered) {
            answered = true;
            route.onAnswer?.();
          }
        }
        relay(reply);
        const mark = reply.headers?.get(HEADERS.stream) ?? '';
        // A message without a mark ends a stream too: an error reply of a worker that refused the request
        // before it read `stream` (its size, its header block).
        if (!stream || mark === STREAM_MARKS.end || mark === STREAM_MARKS.error || mark === '') {
          handedOver();
          return;
        }
        arm(STREAM_IDLE_MS, 'a forwarded stream was silent too long');
      },
    });
    // The connection closing (shutdown) ends the relay: the request is the serving worker's.
    void subscription.closed.then(() => {
      if (subscription !== undefined) handedOver();
    });
    arm(stream ? STREAM_IDLE_MS : timeoutMs + REPLY_GRACE_MS, 'no answer to a forwarded request');
    toNext();
  });
  return relayed.finally(() => {
    deps.counters.relaying--;
  });
}
