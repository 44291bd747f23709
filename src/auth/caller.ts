/**
 * Who is calling: the shared secret, a per-agent key, or neither, by `auth.mode` (config/auth-schema.ts).
 * A message's headers go in; a Caller comes out, synchronously unless the key store is not readable
 * yet (then it waits up to `auth.key_store_wait_ms` and refuses, fail closed). The refusal names what
 * is wrong, never the key.
 */
import type { MsgHdrs } from '@nats-io/nats-core';
import type { AuthMode } from '../config/auth-schema.js';
import { ProxyError } from '../contract/errors.js';
import { HEADERS } from '../contract/subjects.js';
import type { KeyDirectory, KeyLookup } from './key-directory.js';
import type { KeyRecord, KeyRejection } from './key-record.js';
import { headerValue, type SecretCheck } from './secret.js';

export interface Caller {
  /** The key the caller showed, verified: it says who the agent and microDAO are. */
  key: KeyRecord | undefined;
  /** Why the caller is not let in (undefined: it is). */
  refusal: string | undefined;
  /** The refusal is the key store's fault, not the caller's (an `internal` error, retryable). */
  storeUnavailable: boolean;
}

const REJECTIONS: Record<KeyRejection, string> = {
  malformed: 'the key in Authorization is malformed (an llm-proxy key is "llmp_" followed by 59 letters and digits)',
  unknown: 'the key in Authorization is not known (wrong, or deleted)',
  revoked: 'the key in Authorization is revoked',
  expired: 'the key in Authorization has expired',
};

const TRUSTED: Caller = Object.freeze({ key: undefined, refusal: undefined, storeUnavailable: false }) as Caller;
const refused = (refusal: string, storeUnavailable = false): Caller => ({ key: undefined, refusal, storeUnavailable });
const BEARER = /^Bearer +([^ ]+) *$/i;

export class CallerCheck {
  readonly mode: AuthMode;
  readonly #secret: SecretCheck;
  readonly #directory: KeyDirectory | undefined;
  readonly #waitMs: number;

  constructor(options: { mode: AuthMode; secret: SecretCheck; directory?: KeyDirectory | undefined; waitMs?: number }) {
    if (options.mode !== 'secret' && options.directory === undefined)
      throw new Error(`auth.mode "${options.mode}" needs the key store (a KeyDirectory)`);
    this.mode = options.mode;
    this.#secret = options.secret;
    this.#directory = options.directory;
    this.#waitMs = options.waitMs ?? 2_000;
  }

  /**
   * The caller of a message. `secretSuffices`: the shared secret lets the caller in even in `keys`
   * mode (models, cancels: ops tools hold the secret, not a key); requests pass false.
   */
  identify(headers: MsgHdrs | undefined, secretSuffices = false): Caller | Promise<Caller> {
    if (this.mode === 'secret') return this.#bySecret(headers);
    const authorization = headerValue(headers, HEADERS.authorization);
    if (authorization === '') {
      if (this.mode === 'keys' && !secretSuffices)
        return refused(`a key is required: send it as ${HEADERS.authorization}: Bearer <key>`);
      return this.#bySecret(headers);
    }
    const bearer = BEARER.exec(authorization);
    if (bearer === null) return refused(`the ${HEADERS.authorization} header is not "Bearer <key>"`);
    const key = bearer[1] as string;
    const directory = this.#directory!;
    const found = directory.lookup(key);
    if ('record' in found) return this.#byLookup(found);
    // Not known yet (made a moment ago?), or the store not read yet: the slow path.
    if ('unavailable' in found)
      return directory
        .whenReady(this.#waitMs)
        .then(() => directory.lookupFresh(key).then((again) => this.#byLookup(again)));
    if (found.rejection === 'unknown') return directory.lookupFresh(key).then((again) => this.#byLookup(again));
    return this.#byLookup(found);
  }

  #bySecret(headers: MsgHdrs | undefined): Caller {
    return this.#secret.allows(headers) ? TRUSTED : refused(`missing or wrong ${HEADERS.secret} header`);
  }

  #byLookup(found: KeyLookup): Caller {
    if ('record' in found) return { key: found.record, refusal: undefined, storeUnavailable: false };
    if ('rejection' in found) return refused(REJECTIONS[found.rejection]);
    return refused('the key store cannot be read, so no key can be checked: refused (fail closed); retry later', true);
  }
}

/** The error a refused caller gets: `unauthorized`, or `internal` (retryable) when the key store is at fault. */
export function callerError(caller: Caller): ProxyError | undefined {
  if (caller.refusal === undefined) return undefined;
  return caller.storeUnavailable
    ? new ProxyError('internal', caller.refusal, { retryable: true })
    : new ProxyError('unauthorized', caller.refusal);
}

/**
 * Where `metadata` contradicts the key: the agent or microDAO it names is not the key's. Undefined
 * when it agrees (or names neither).
 */
export function contradiction(
  key: KeyRecord,
  metadata: { agent_id?: string | undefined; microdao_id?: string | undefined } | undefined,
): string | undefined {
  const agent = metadata?.agent_id;
  if (agent !== undefined && agent !== key.agent_id)
    return `metadata.agent_id "${agent}" is not the agent of the key in Authorization`;
  const microdao = metadata?.microdao_id;
  if (microdao !== undefined && microdao !== key.microdao_id)
    return key.microdao_id === null
      ? `metadata.microdao_id "${microdao}" is given, but the key in Authorization belongs to no microDAO`
      : `metadata.microdao_id "${microdao}" is not the microDAO of the key in Authorization`;
  return undefined;
}

/** The request's metadata with the key's agent and microDAO in place of whatever it claimed (its tags kept). */
export function withKeyIdentity<M extends { agent_id?: string | undefined; microdao_id?: string | undefined }>(
  metadata: M | undefined,
  key: KeyRecord,
): M {
  const identified = { ...(metadata ?? {}), agent_id: key.agent_id } as M;
  if (key.microdao_id !== null) identified.microdao_id = key.microdao_id;
  else delete identified.microdao_id;
  return identified;
}
