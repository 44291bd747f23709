/**
 * The keys' store: a JetStream KV bucket (`LLM_KEYS`), one JSON record per key id. The admin side
 * (`llm-proxy keys …`) writes it through KeyStore; workers read it through a KeyDirectory (a watch).
 * Every write is a compare-and-swap on the record's revision: two admins revoking and rotating the
 * same key at once both land, one after the other, or the second one is told.
 */
import { jsOptions } from '../bus/jetstream-domain.js';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { isKvConflict } from '../bus/kv-conflict.js';
import type { LimitSetConfig } from '../config/limits-schema.js';
import { hashKey, KEY_ID_PATTERN, newKey, newKeyId } from './key-format.js';
import { keyRecordSchema, keyStanding, type KeyRecord } from './key-record.js';

/** Bucket settings shared by whoever creates it first (the CLI or a worker): the same, or creation fails. */
const BUCKET_SETTINGS = { history: 1 } as const;
const CAS_ATTEMPTS = 10;

/** The bucket, created when missing (when the caller's permissions allow). */
export async function openKeysBucket(connection: NatsConnection, bucket: string, timeoutMs = 5_000): Promise<KV> {
  const kvm = new Kvm(jetstream(connection, { ...jsOptions(connection), timeout: timeoutMs }));
  try {
    const kv = await kvm.open(bucket);
    // open() only binds (it asks the server nothing): status() is what fails when the bucket is missing.
    await kv.status();
    return kv;
  } catch {
    return await kvm.create(bucket, { ...BUCKET_SETTINGS, timeout: timeoutMs });
  }
}

/** A stored record, or undefined when the bytes are not one (a hand-edited entry is ignored, not trusted). */
export function decodeKeyRecord(bytes: Uint8Array): KeyRecord | undefined {
  try {
    const parsed = keyRecordSchema.safeParse(JSON.parse(new TextDecoder().decode(bytes)));
    return parsed.success ? parsed.data : undefined;
  } catch {
    return undefined;
  }
}

export class KeyStoreError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyStoreError';
  }
}

export interface NewKeySpec {
  agentId: string;
  microdaoId?: string | undefined;
  models?: string[] | undefined;
  limits?: LimitSetConfig | undefined;
  /** Milliseconds from now; undefined: never expires. */
  expiresInMs?: number | undefined;
  note?: string | undefined;
}

/** A key as listed: its record without the hashes, and where it stands. */
export interface KeySummary {
  id: string;
  agent_id: string;
  microdao_id: string | null;
  models: string[] | null;
  limits: LimitSetConfig;
  created_at: string;
  expires_at: string | null;
  revoked_at: string | null;
  note: string | null;
  status: 'active' | 'revoked' | 'expired';
  /** Rotated-out keys still accepted, each until its time. */
  grace_until: string[];
}

export function summarize(record: KeyRecord, now = Date.now()): KeySummary {
  const status = keyStanding(record, now);
  return {
    id: record.id,
    agent_id: record.agent_id,
    microdao_id: record.microdao_id,
    models: record.models,
    limits: record.limits,
    created_at: record.created_at,
    expires_at: record.expires_at,
    revoked_at: record.revoked_at,
    note: record.note,
    status,
    // A revoked or expired key's rotated-out keys are refused with it (KeyDirectory.lookup).
    grace_until:
      status !== 'active'
        ? []
        : record.previous
            .filter((previous) => Date.parse(previous.valid_until) > now)
            .map((previous) => previous.valid_until),
  };
}

export class KeyStore {
  readonly #kv: KV;

  private constructor(kv: KV) {
    this.#kv = kv;
  }

  static async open(connection: NatsConnection, bucket: string): Promise<KeyStore> {
    return new KeyStore(await openKeysBucket(connection, bucket));
  }

  /** A new key: returned once, with its record; only its hash is stored. */
  async create(spec: NewKeySpec, now = Date.now()): Promise<{ key: string; record: KeyRecord }> {
    const id = newKeyId();
    const key = newKey(id);
    const record = keyRecordSchema.parse({
      v: 1,
      id,
      hash: hashKey(key),
      agent_id: spec.agentId,
      microdao_id: spec.microdaoId ?? null,
      models: spec.models ?? null,
      limits: spec.limits ?? {},
      created_at: new Date(now).toISOString(),
      expires_at: spec.expiresInMs === undefined ? null : new Date(now + spec.expiresInMs).toISOString(),
      revoked_at: null,
      note: spec.note ?? null,
      previous: [],
    });
    // `create` refuses an id that exists (2^71 ids: never in practice, but never an overwrite either).
    await this.#kv.create(id, JSON.stringify(record));
    return { key, record };
  }

  async get(id: string): Promise<KeyRecord | undefined> {
    if (!KEY_ID_PATTERN.test(id)) throw new KeyStoreError(`"${id}" is not a key id (12 letters and digits)`);
    const entry = await this.#kv.get(id);
    if (entry === null || entry.operation !== 'PUT') return undefined;
    return decodeKeyRecord(entry.value);
  }

  async list(): Promise<KeyRecord[]> {
    const records: KeyRecord[] = [];
    const ids: string[] = [];
    for await (const id of await this.#kv.keys()) ids.push(id);
    for (const id of ids.sort()) {
      const record = KEY_ID_PATTERN.test(id) ? await this.get(id) : undefined;
      if (record !== undefined) records.push(record);
    }
    return records.sort((a, b) => a.created_at.localeCompare(b.created_at) || a.id.localeCompare(b.id));
  }

  /** Revoke at once (every rotated-out key of it too). Revoking a revoked key changes nothing. */
  async revoke(id: string, now = Date.now()): Promise<KeyRecord> {
    return this.#change(id, (record) =>
      record.revoked_at !== null ? record : { ...record, revoked_at: new Date(now).toISOString() },
    );
  }

  /**
   * A new key for the same id; the old one stays valid for `graceMs` (0: not at all). Keys rotated
   * out earlier and past their grace are dropped from the record.
   */
  async rotate(id: string, graceMs: number, now = Date.now()): Promise<{ key: string; record: KeyRecord }> {
    let key = '';
    const record = await this.#change(id, (current) => {
      const standing = keyStanding(current, now);
      if (standing !== 'active') throw new KeyStoreError(`key ${id} is ${standing}: it cannot be rotated`);
      key = newKey(id);
      const stillValid = current.previous.filter((previous) => Date.parse(previous.valid_until) > now);
      if (graceMs > 0) stillValid.push({ hash: current.hash, valid_until: new Date(now + graceMs).toISOString() });
      return { ...current, hash: hashKey(key), previous: stillValid };
    });
    return { key, record };
  }

  async #change(id: string, change: (record: KeyRecord) => KeyRecord): Promise<KeyRecord> {
    if (!KEY_ID_PATTERN.test(id)) throw new KeyStoreError(`"${id}" is not a key id (12 letters and digits)`);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const entry = await this.#kv.get(id);
      const current = entry === null || entry.operation !== 'PUT' ? undefined : decodeKeyRecord(entry.value);
      if (entry === null || current === undefined) throw new KeyStoreError(`no key ${id}`);
      const changed = change(current);
      if (changed === current) return current;
      const next = keyRecordSchema.parse(changed);
      try {
        await this.#kv.update(id, JSON.stringify(next), entry.revision);
        return next;
      } catch (error) {
        // Someone else changed it since the read: read again. Anything else (a timeout, no permission) is said at once.
        if (!isKvConflict(error) || attempt === CAS_ATTEMPTS - 1) throw error;
      }
    }
    throw new KeyStoreError(`key ${id} kept changing under this update`);
  }
}
