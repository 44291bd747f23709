import type { Msg } from '@nats-io/nats-core';
import type { ErrorCode, ProxyError } from '../contract/errors.js';
import { MAX_TIMEOUT_MS } from '../contract/request.js';
import type { Admitted } from './admission.js';
import { fallbacksElsewhereRoute, forwardRequest, keyAllows, NOT_PASSED, wasForwarded } from './forward.js';
import type { StageDependencies } from './pipeline.js';
import type { RequestRecord } from './request-record.js';

/**
 * A request this worker admitted but could not serve, passed on to its model's fallbacks on other nodes
 * (issue 19): the `fallbacks` its config names but does not define. Only after an upstream failure
 * (every deployment and local fallback failed or cooled down; never a fault of the request, a cancel or
 * its own deadline), only before anything was sent to the client, only once (not a request passed on
 * already), and only with time left. The fallback's worker admits, answers and counts it; this worker
 * publishes no event and gives its limits admission back first (hooks.ts `handingOver`).
 */

/** Router errors that another node's fallback may cure: the upstream's, not the request's. */
const PASSABLE: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'upstream_error',
  'upstream_timeout',
  'no_provider_available',
  'rate_limited',
]);

/** With less time left than this, the request is answered here. */
const MIN_REMAINING_MS = 100;

/** The relay's outcome (as forwardRequest's), or NOT_PASSED: the caller answers with `error` as before. */
export async function toFallbacksElsewhere(
  message: Msg,
  record: RequestRecord,
  admitted: Admitted,
  error: ProxyError,
  deps: StageDependencies,
  /** Called when the first fallback answers (a stream's own writer stops there: the relayed one takes over). */
  onAnswer?: () => void,
): Promise<ErrorCode | undefined | typeof NOT_PASSED> {
  const forward = deps.forward;
  if (forward === undefined || !PASSABLE.has(error.code) || wasForwarded(message)) return NOT_PASSED;
  const config = deps.config;
  const model = admitted.request.model;
  // Known before anything is given back: a key's model list leaves out what it may not use.
  const elsewhere = (config.models.get(model)?.fallbacks ?? []).filter(
    (name) => !config.models.has(name) && keyAllows(record, name),
  );
  if (elsewhere.length === 0 || remainingOf(admitted) < MIN_REMAINING_MS) return NOT_PASSED;
  record.logger.info(
    { model, code: error.code, fallbacks: elsewhere },
    'not served here: trying its fallbacks on other nodes',
  );
  // Given back before the fallback's worker counts it (so the two never count it at once).
  const context = record.context;
  const gaveBack = context !== undefined && deps.hooks.handingOver !== undefined;
  if (gaveBack) {
    try {
      await deps.hooks.handingOver?.(context);
    } catch (failure) {
      record.logger.error({ err: failure }, 'handingOver hook failed');
    }
  }
  // What is left after the give-back's round trip; never more than a request may ask for.
  const remainingMs = Math.max(1, Math.min(remainingOf(admitted), MAX_TIMEOUT_MS));
  const route = fallbacksElsewhereRoute(record, elsewhere, remainingMs, onAnswer);
  const passed = await forwardRequest(message, record, route, remainingMs, { ...deps, forward });
  // No fallback had a worker: the request is answered here after all, so it is counted here (else a
  // model whose fallbacks are gone would be a way round requests/minute). Admitted again; a refusal
  // now changes nothing (its own error is its answer), and afterRoute settles what was admitted.
  if (gaveBack && !record.handedOver && deps.hooks.beforeRoute !== undefined) {
    try {
      await deps.hooks.beforeRoute(context);
    } catch (refusal) {
      record.logger.info({ err: refusal }, 'taken back after no other worker took it: not admitted again');
    }
  }
  return passed;
}

function remainingOf(admitted: Admitted): number {
  return Math.floor(admitted.plan.deadlineAt - Date.now());
}
