import { z } from 'zod';
import { limitSetSchema } from '../config/limits-schema.js';
import { isSafeText } from '../contract/client-ids.js';
import { KEY_ID_PATTERN } from './key-format.js';

/** The JetStream KV bucket keys live in, unless `auth.keys_bucket` says otherwise. */
export const DEFAULT_KEYS_BUCKET = 'LLM_KEYS';

const isoTime = z.iso.datetime();
/** An id or a note goes into logs, tables and events: printable text only. */
const text = (max: number) =>
  z.string().min(1).max(max).refine(isSafeText, 'must not contain a control character or a lone surrogate');

/**
 * One key as stored (JSON under its id in the KV bucket). Never the key itself: its SHA-256
 * (`hash`), and after a rotation the previous key's hash with the end of its grace period.
 * A revoked key stays in the store (revoked_at set) so that `keys show` can still say what it was.
 */
export const keyRecordSchema = z
  .object({
    v: z.literal(1),
    id: z.string().regex(KEY_ID_PATTERN),
    hash: z.string().regex(/^[0-9a-f]{64}$/),
    agent_id: text(256),
    microdao_id: text(256).nullable(),
    /** Logical models the key may ask for; null: every model. */
    models: z.array(z.string().min(1)).nullable(),
    /** The key's own limits, applied on top of its agent's and microDAO's. */
    limits: limitSetSchema,
    created_at: isoTime,
    expires_at: isoTime.nullable(),
    revoked_at: isoTime.nullable(),
    note: text(1_000).nullable(),
    /** Keys replaced by a rotation, each valid until its `valid_until`. */
    previous: z.array(z.object({ hash: z.string().regex(/^[0-9a-f]{64}$/), valid_until: isoTime }).strict()),
  })
  .strict();

export type KeyRecord = z.infer<typeof keyRecordSchema>;

/** Why a key presented with a request is not accepted (named in the refusal; the key never is). */
export type KeyRejection = 'malformed' | 'unknown' | 'revoked' | 'expired';

/** A key's standing at `now`: usable, or why not. */
export function keyStanding(record: KeyRecord, now: number): 'active' | 'revoked' | 'expired' {
  if (record.revoked_at !== null) return 'revoked';
  if (record.expires_at !== null && Date.parse(record.expires_at) <= now) return 'expired';
  return 'active';
}
