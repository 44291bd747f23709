import { createHash, timingSafeEqual } from 'node:crypto';
import type { MsgHdrs } from '@nats-io/nats-core';
import { HEADERS } from '../contract/subjects.js';

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
    if (this.#expected === undefined) return true;
    const given = headers?.get(HEADERS.secret) ?? '';
    const digest = createHash('sha256').update(given).digest();
    // A missing header is compared too, so every refusal costs the same.
    return timingSafeEqual(digest, this.#expected);
  }
}
