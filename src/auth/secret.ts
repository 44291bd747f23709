import { createHash, timingSafeEqual } from 'node:crypto';
import { Match, type Msg, type MsgHdrs } from '@nats-io/nats-core';
import { HEADERS } from '../contract/subjects.js';

/** The shared secret's environment variable. */
export const SECRET_ENV = 'LLM_PROXY_SECRET';

/** A setting that cannot be right: the process refuses to start with it. */
export class SecretSettingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SecretSettingError';
  }
}

/**
 * The shared secret from the environment: undefined when `LLM_PROXY_SECRET` is not set (no auth).
 * Set but empty (or only spaces) is refused rather than read as "no auth": `LLM_PROXY_SECRET=` left
 * in a file, or a compose variable that expanded to nothing, must not turn auth off silently.
 */
export function secretFromEnv(env: NodeJS.ProcessEnv): string | undefined {
  const value = env[SECRET_ENV];
  if (value === undefined) return undefined;
  if (value.trim() === '') {
    throw new SecretSettingError(
      `${SECRET_ENV} is set but empty: set it to the secret, or unset it to run without one`,
    );
  }
  return value;
}

/** A message's headers, or `malformed` when its header block cannot be decoded. */
export type ReadHeaders = { headers: MsgHdrs | undefined; malformed: false } | { headers: undefined; malformed: true };

/**
 * A message's headers, read without throwing. nats.js decodes the header block lazily, on the first
 * `msg.headers`, and throws there for a block it would not have sent itself (a space or a non-ASCII
 * character in a name, a bare CR or LF in a value): any client can publish one. Thrown in a
 * subscription callback it stops the connection's reader; in a request handler it would lose the
 * reply and the event. Read them here, once, and refuse such a message instead.
 */
export function readHeaders(message: Msg): ReadHeaders {
  try {
    return { headers: message.headers, malformed: false };
  } catch {
    return { headers: undefined, malformed: true };
  }
}

/**
 * A header's value, its name matched case-insensitively as in HTTP: NATS headers travel in the
 * case the sender wrote (`x-internal-secret` from some clients). The exact spelling is tried first
 * (one map lookup), the case-insensitive search (a pass over the header names) only when it is missing.
 */
export function headerValue(headers: MsgHdrs | undefined, name: string): string {
  if (headers === undefined) return '';
  return headers.get(name) || headers.get(name, Match.IgnoreCase);
}

/**
 * `X-Internal-Secret` check. Both sides are hashed first so that the
 * comparison is between equal-length digests: `timingSafeEqual` then leaks
 * neither the secret's content nor its length.
 */
export class SecretCheck {
  readonly #expected: Buffer | undefined;

  constructor(secret: string | undefined) {
    this.#expected = secret === undefined || secret === '' ? undefined : createHash('sha256').update(secret).digest();
  }

  get enabled(): boolean {
    return this.#expected !== undefined;
  }

  /** True when no secret is configured, or the header carries the right one. */
  allows(headers: MsgHdrs | undefined): boolean {
    return this.allowsValue(headerValue(headers, HEADERS.secret));
  }

  /** True when no secret is configured, or `given` is it (an HTTP header, say). */
  allowsValue(given: string | undefined): boolean {
    if (this.#expected === undefined) return true;
    const digest = createHash('sha256')
      .update(given ?? '')
      .digest();
    // A missing value is compared too, so every refusal costs the same.
    return timingSafeEqual(digest, this.#expected);
  }
}
