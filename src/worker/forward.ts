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
 * No worker serves the model: the server answers the publish with a 503 status at once, and this
 * worker answers the client itself (with an event): `no_provider_available` when the model was offered
 * on the bus (its node is gone), else `model_not_found`.
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

/** The request's body naming another model (a fallback); the body was read as JSON by admission already. */
function withModel(message: Msg, model: string): string {
  return JSON.stringify({ ...(JSON.parse(message.string()) as Record<string, unknown>), model });
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
 * Passes the request on and relays its answer. Resolves with `undefined` once the answer was relayed
 * (or the relay gave up waiting), marking the record handed over; with the error code when this worker
 * answered the client itself.
 */
export function forwardRequest(
  message: Msg,
  record: RequestRecord,
  model: string,
  timeoutMs: number,
  deps: StageDependencies & { forward: ForwardParts & { subject: string } },
): Promise<ErrorCode | undefined> {
  const { connection, subject, busModels } = deps.forward;
  const clientInbox = message.reply!;
  const inbox = createInbox(inboxPrefixOf(connection));
  const stream = record.stream;
  return new Promise((resolve) => {
    let subscription: Subscription | undefined;
    let timer: NodeJS.Timeout | undefined;
    let first = true;
    // Ended without an answer of this worker's own: the request went to another worker, which answers
    // for it and publishes its event (even when the relay stopped waiting).
    const handedOver = () => {
      record.handedOver = true;
      done(undefined);
    };
    const done = (code: ErrorCode | undefined) => {
      clearTimeout(timer);
      subscription?.unsubscribe();
      subscription = undefined;
      resolve(code);
    };
    const arm = (ms: number, what: string) => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        record.logger.warn({ model, subject }, `${what}: stopped relaying (the client's own timeout applies)`);
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
          record.logger.info({ model }, 'the client of a forwarded stream went away: relay stopped');
          handedOver();
        }
      });
    };
    const tried = new Set([model]);
    const allowed = record.caller.key?.models ?? null;
    const nextFallback = (): string | undefined => {
      for (const fallback of busModels.fallbacksOf(model)) {
        if (tried.has(fallback) || (allowed !== null && !allowed.includes(fallback))) continue;
        tried.add(fallback);
        return fallback;
      }
      return undefined;
    };
    const tooLarge = (what: string) =>
      new ProxyError(
        'payload_too_large',
        `the request is too close to the NATS server's max_payload to be passed on to ${what}: send it on its model's subject (the typed client does)`,
      );
    // The model's subject with the body as it came; a fallback's subject with the body naming the
    // fallback. `too_large`: nats.js refused it (a body near max_payload, with the header this worker adds).
    const publishTo = (target: string): 'sent' | 'too_large' | 'failed' => {
      try {
        const body = target === model ? message.data : withModel(message, target);
        connection.publish(deps.forward.subjectFor(target), body, {
          reply: inbox,
          headers: forwardedHeaders(message.headers, deps.workerId),
        });
        return 'sent';
      } catch (error) {
        if (error instanceof Error && error.message.includes('max_payload')) return 'too_large';
        record.logger.error({ err: error, model: target }, 'a request could not be passed on');
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
    // Nobody serves the model now: its fallbacks, as its node said (bus-models.ts), each once; one the
    // body cannot reach (near max_payload with its name) is skipped. None left: this worker answers.
    let skippedTooLarge: string | undefined;
    const toNextFallback = () => {
      for (let fallback = nextFallback(); fallback !== undefined; fallback = nextFallback()) {
        const sent = publishTo(fallback);
        if (sent === 'failed') return;
        if (sent === 'sent') {
          record.logger.info({ model, fallback }, 'no worker serves the model: passed on to its fallback');
          first = true;
          return;
        }
        skippedTooLarge ??= fallback;
      }
      const refusal =
        skippedTooLarge !== undefined
          ? tooLarge(`the workers of "${skippedTooLarge}", a fallback of "${model}"`)
          : busModels.has(model)
            ? new ProxyError('no_provider_available', `no worker on the bus serves model "${model}" now`)
            : new ProxyError('model_not_found', `unknown model "${model}"`);
      done(deps.delivery.error(message, record, refusal, stream));
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
            toNextFallback();
            return;
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
    if (publishTo(model) === 'too_large')
      done(deps.delivery.error(message, record, tooLarge(`the workers of "${model}"`), stream));
  });
}
