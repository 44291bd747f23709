import type { Msg } from '@nats-io/nats-core';
import type { Context } from '@opentelemetry/api';
import { callerError, contradiction, withKeyIdentity } from '../auth/index.js';
import { checkClientIds, MAX_JSON_DEPTH, nestsDeeperThan } from '../contract/client-ids.js';
import { asProxyError, ProxyError } from '../contract/errors.js';
import { parseChatRequest, type ChatRequest } from '../contract/request.js';
import type { RoutePlan, Router } from '../router/types.js';
import { requestLogger, type Logger } from '../telemetry/logger.js';
import type { RequestContext, RequestHooks } from './hooks.js';
import { wasForwarded } from './forward.js';
import type { RequestRecord } from './request-record.js';

export interface AdmissionDependencies {
  router: Pick<Router, 'plan'>;
  /** Whether requests for models this worker does not serve are passed on to their model's subject (issue 19). */
  forward?: unknown;
  hooks: RequestHooks;
  logger: Logger;
  maxRequestBytes: number;
}

/**
 * A request, valid and authorized, for a model this worker does not serve: to be passed on to the
 * workers that do (forward.ts), before anything else (limits) counts it here.
 */
export class ServedElsewhere {
  constructor(
    readonly model: string,
    readonly timeoutMs: number | undefined,
  ) {}
}

/** A request that passed every check and its admission: what the answering stages need. */
export interface Admitted {
  request: ChatRequest;
  plan: RoutePlan;
  context: RequestContext;
}

/**
 * The admission stage, in order (hooks.ts): header block → size → JSON → the client's ids → depth →
 * auth → validation → model → reply subject → limits (`beforeRoute`). Fills the record in as it
 * learns (ids, model, stream, the validated request); returns what refuses the request, or the
 * admitted request. The refusal is the caller's to deliver.
 */
export async function admit(
  message: Msg,
  record: RequestRecord,
  headersMalformed: boolean,
  deps: AdmissionDependencies,
  /** The request span's context (pipeline.ts), for the limits' and the attempts' spans. */
  traceContext?: Context | undefined,
): Promise<Admitted | ProxyError | ServedElsewhere> {
  if (headersMalformed) {
    return new ProxyError(
      'invalid_request',
      "the message's header block is malformed (a header name with a space or a non-ASCII character, or a value with a bare CR or LF)",
    );
  }
  // Size, before anything reads the body.
  if (message.data.length > deps.maxRequestBytes) {
    return new ProxyError(
      'payload_too_large',
      `request body is ${message.data.length} bytes; the limit is ${deps.maxRequestBytes}`,
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(message.string());
  } catch {
    return new ProxyError('invalid_request', 'request body is not valid JSON');
  }
  // The client's ids, before anything uses them (the log line, the event, the reply). Only top-level
  // fields and metadata's values are read: safe on a body of any depth.
  const { ids, problem } = checkClientIds(body);
  if (ids.requestId !== undefined) record.requestId = ids.requestId;
  // A key says who the agent and microDAO are; metadata naming others is refused below, and its event
  // is kept off the agent it claims.
  const key = record.caller.key;
  const contradicted = key === undefined ? undefined : contradiction(key, ids.metadata);
  if (contradicted !== undefined) record.unauthenticated = true;
  record.metadata = key === undefined || contradicted !== undefined ? ids.metadata : withKeyIdentity(ids.metadata, key);
  record.requestedModel = ids.model ?? null;
  record.stream = ids.stream ?? false;
  record.logger = requestLogger(deps.logger, record.requestId, record.metadata?.agent_id);
  if (problem !== undefined) return problem;
  if (nestsDeeperThan(body, MAX_JSON_DEPTH)) {
    return new ProxyError(
      'invalid_request',
      `request body nests objects or arrays deeper than ${MAX_JSON_DEPTH} levels`,
    );
  }
  // Auth: a refused request is not attributed to the agent it names (the record knows it is unauthenticated).
  const refused = callerError(record.caller);
  if (refused !== undefined) return refused;
  if (contradicted !== undefined) return new ProxyError('unauthorized', contradicted);
  let request: ChatRequest;
  try {
    request = parseChatRequest(body);
  } catch (error) {
    return asProxyError(error);
  }
  if (key !== undefined) {
    request.metadata = withKeyIdentity(request.metadata, key);
    record.metadata = request.metadata;
  }
  record.request = request;
  record.stream = request.stream === true;
  // A model outside the key's list is refused as any unknown model is: the refusal does not tell what exists.
  if (key !== undefined && key.models !== null && !key.models.includes(request.model))
    return new ProxyError('model_not_found', `unknown model "${request.model}"`);
  const plan = deps.router.plan(request, record.receivedAt);
  if (message.reply === undefined || message.reply === '') {
    return plan === undefined
      ? new ProxyError('model_not_found', `unknown model "${request.model}"`)
      : new ProxyError('invalid_request', 'the message has no reply subject: send it as a NATS request');
  }
  if (plan === undefined) {
    // Not here: passed on once to the workers that serve it (never a request passed on already).
    if (deps.forward !== undefined && !wasForwarded(message))
      return new ServedElsewhere(request.model, request.timeout_ms);
    return new ProxyError('model_not_found', `unknown model "${request.model}"`);
  }
  const context: RequestContext = {
    requestId: record.requestId,
    eventId: record.eventId,
    request,
    agentId: request.metadata?.agent_id,
    key: key === undefined ? undefined : { id: key.id, limits: key.limits },
    receivedAt: record.receivedAt,
    deadlineAt: plan.deadlineAt,
    stream: record.stream,
    logger: record.logger,
    state: {},
    promptTokens: () => record.promptTokens(),
    traceContext,
  };
  // Limits: may refuse with rate_limited / budget_exceeded. Whatever beforeRoute decided, afterRoute runs.
  record.context = context;
  if (deps.hooks.beforeRoute !== undefined) {
    try {
      await deps.hooks.beforeRoute(context);
    } catch (error) {
      return asProxyError(error);
    }
  }
  return { request, plan, context };
}
