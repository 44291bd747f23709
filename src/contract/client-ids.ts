import { ProxyError } from './errors.js';

/**
 * The ids and tags a client chooses, checked where a request enters the worker (before auth and
 * before the rest of the body is validated), so that none reaches a subject, a header, a log or a
 * store unchecked (README, "Client-chosen ids"). The request schema (request.ts) uses the same rules.
 */

/** `request_id`: 1-128 visible ASCII characters (no space, no control character). */
export const REQUEST_ID_PATTERN = /^[\x21-\x7e]{1,128}$/;
export const MAX_REQUEST_ID_LENGTH = 128;
/** `agent_id`, `microdao_id`, `channel_id`: at most this many characters. */
export const MAX_ID_LENGTH = 256;
/** Further `metadata` keys are tags, copied into the usage event: at most this many, keys and values this long. */
export const MAX_TAGS = 32;
export const MAX_TAG_KEY_LENGTH = 64;
export const MAX_TAG_VALUE_LENGTH = 1024;
/** Deepest nesting of objects and arrays a request may have (tool parameter schemas, provider_options). */
export const MAX_JSON_DEPTH = 64;

/** Text an id or tag may not hold: control characters (C0, DEL, C1) and lone UTF-16 surrogates. */
const UNSAFE_TEXT = /[\p{Cc}\p{Cs}]/u;
/** The same rule as a pattern for the request schema (a JSON Schema pattern cannot be negated). */
export const SAFE_TEXT_PATTERN = /^[^\p{Cc}\p{Cs}]*$/u;

export const isSafeText = (text: string): boolean => !UNSAFE_TEXT.test(text);

const METADATA_IDS = ['agent_id', 'microdao_id', 'channel_id'] as const;

export interface ClientIds {
  /** The client's correlation id, when it gave a valid one. */
  requestId?: string;
  /** `metadata` when every id and tag in it is valid (the object itself, not a copy). */
  metadata?: Record<string, string>;
  /** The `model` field when it is printable text of at most 256 characters (for a refused request's event). */
  model?: string;
  stream?: boolean;
}

/** What a body's ids say: the valid ones, and the first problem (naming the field), if any. */
export interface ClientIdsCheck {
  ids: ClientIds;
  problem: ProxyError | undefined;
}

/** Why `metadata` is refused, naming the key, or undefined when it is valid. */
function metadataProblem(metadata: Record<string, unknown>): string | undefined {
  let tags = 0;
  for (const key in metadata) {
    if (!Object.hasOwn(metadata, key)) continue;
    const value = metadata[key];
    const isId = key === 'agent_id' || key === 'microdao_id' || key === 'channel_id';
    if (!isId) {
      tags++;
      if (tags > MAX_TAGS) return `metadata: at most ${MAX_TAGS} tags besides agent_id, microdao_id and channel_id`;
      if (key.length === 0 || key.length > MAX_TAG_KEY_LENGTH || !isSafeText(key)) {
        return `metadata: a tag name must be 1-${MAX_TAG_KEY_LENGTH} characters without control characters`;
      }
    }
    if (typeof value !== 'string') return `metadata.${key}: must be a string`;
    const max = isId ? MAX_ID_LENGTH : MAX_TAG_VALUE_LENGTH;
    if ((isId && value.length === 0) || value.length > max)
      return `metadata.${key}: must be ${isId ? 1 : 0}-${max} characters`;
    if (!isSafeText(value)) return `metadata.${key}: contains a control character or a lone surrogate`;
  }
  return undefined;
}

/**
 * Reads and checks the ids of a parsed request body (any JSON value). Cheap on a valid body: a
 * pattern test for `request_id` and one pass over `metadata`.
 */
export function checkClientIds(body: unknown): ClientIdsCheck {
  const ids: ClientIds = {};
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return { ids, problem: undefined };
  const record = body as Record<string, unknown>;
  let problem: ProxyError | undefined;
  const requestId = record.request_id;
  if (requestId !== undefined) {
    if (typeof requestId === 'string' && REQUEST_ID_PATTERN.test(requestId)) ids.requestId = requestId;
    else
      problem = new ProxyError(
        'invalid_request',
        `request_id: must be 1-${MAX_REQUEST_ID_LENGTH} visible ASCII characters (no spaces or control characters)`,
      );
  }
  const metadata = record.metadata;
  if (metadata !== undefined) {
    const metadataIsObject = typeof metadata === 'object' && metadata !== null && !Array.isArray(metadata);
    const why = metadataIsObject
      ? metadataProblem(metadata as Record<string, unknown>)
      : 'metadata: must be an object of strings';
    if (why === undefined) {
      ids.metadata = metadata as Record<string, string>;
    } else {
      problem ??= new ProxyError('invalid_request', why);
      // The refusal is still attributed to the ids that are valid (tags are left out).
      const valid = metadataIsObject ? validMetadataIds(metadata as Record<string, unknown>) : undefined;
      if (valid !== undefined) ids.metadata = valid;
    }
  }
  const model = record.model;
  if (typeof model === 'string' && model.length > 0 && model.length <= MAX_ID_LENGTH && isSafeText(model))
    ids.model = model;
  if (record.stream === true) ids.stream = true;
  return { ids, problem };
}

/** The valid ids of a `metadata` object that was refused as a whole. */
function validMetadataIds(metadata: Record<string, unknown>): Record<string, string> | undefined {
  let ids: Record<string, string> | undefined;
  for (const key of METADATA_IDS) {
    const value = metadata[key];
    if (typeof value === 'string' && value.length > 0 && value.length <= MAX_ID_LENGTH && isSafeText(value))
      (ids ??= {})[key] = value;
  }
  return ids;
}

/**
 * True when objects and arrays in `value` nest deeper than `maxDepth` (a walk with an explicit
 * stack: a hostile body cannot overflow the call stack here, nor later in the checks that recurse).
 */
export function nestsDeeperThan(value: unknown, maxDepth: number): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const nodes: object[] = [value];
  const depths: number[] = [1];
  while (nodes.length > 0) {
    const node = nodes.pop()!;
    const depth = depths.pop()!;
    if (depth > maxDepth) return true;
    if (Array.isArray(node)) {
      for (const item of node) {
        if (typeof item !== 'object' || item === null) continue;
        nodes.push(item);
        depths.push(depth + 1);
      }
      continue;
    }
    for (const key in node) {
      const item = (node as Record<string, unknown>)[key];
      if (typeof item !== 'object' || item === null) continue;
      nodes.push(item);
      depths.push(depth + 1);
    }
  }
  return false;
}
