/**
 * What a per-agent key looks like: `llmp_<id>_<secret><check>`.
 *
 * - `llmp_` makes a leaked key recognisable (secret scanners, grep, a reviewer's eye);
 * - `<id>` (12 base62 characters) names the key in the store, the usage event and the CLI: it is not
 *   secret, and is how a key is found without a search;
 * - `<secret>` is 40 base62 characters (238 random bits);
 * - `<check>` is 6 base62 characters of the CRC-32 of everything before it, so that a scanner (and
 *   the worker) tells a real key from a look-alike or a typo without asking the store.
 *
 * Only the SHA-256 of the whole key is stored. A slow hash (bcrypt, scrypt) protects guessable
 * passwords; a 238-bit random secret cannot be guessed, and a fast hash keeps the check at a
 * microsecond per request (GitHub's and Stripe's tokens are stored the same way).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { crc32 } from 'node:zlib';

export const KEY_PREFIX = 'llmp_';
export const KEY_ID_LENGTH = 12;
const SECRET_LENGTH = 40;
const CHECK_LENGTH = 6;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** A key id: what `keys show`, `keys revoke` and the usage event's `key_id` use. */
export const KEY_ID_PATTERN = /^[0-9A-Za-z]{12}$/;
const KEY_PATTERN = /^llmp_([0-9A-Za-z]{12})_([0-9A-Za-z]{46})$/;

/** `length` base62 characters, uniformly drawn (bytes ≥ 248 are redrawn, so no character is likelier). */
function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      if (byte >= 248) continue;
      out += BASE62[byte % 62];
      if (out.length === length) break;
    }
  }
  return out;
}

function base62Check(text: string): string {
  let value = crc32(text);
  let out = '';
  for (let index = 0; index < CHECK_LENGTH; index++) {
    out = BASE62[value % 62] + out;
    value = Math.floor(value / 62);
  }
  return out;
}

export function newKeyId(): string {
  return randomBase62(KEY_ID_LENGTH);
}

/** A new key for the id (a rotation keeps the id: the usage history stays one key's). */
export function newKey(id: string): string {
  const body = `${KEY_PREFIX}${id}_${randomBase62(SECRET_LENGTH)}`;
  return body + base62Check(body);
}

/** The id of a well-formed key whose check characters match, else undefined. Never throws. */
export function parseKey(key: string): string | undefined {
  const match = KEY_PATTERN.exec(key);
  if (match === null) return undefined;
  const body = key.slice(0, key.length - CHECK_LENGTH);
  return base62Check(body) === key.slice(-CHECK_LENGTH) ? match[1] : undefined;
}

/** The stored form of a key: SHA-256, hex. */
export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** Constant-time comparison of a key with a stored hash. */
export function keyMatches(key: string, storedHash: string): boolean {
  const given = createHash('sha256').update(key).digest();
  const stored = Buffer.from(storedHash, 'hex');
  return stored.length === given.length && timingSafeEqual(given, stored);
}
