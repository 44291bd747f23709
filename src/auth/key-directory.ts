/**
 * A worker's view of the key store: every record held in memory and kept current by a KV watch, so
 * that checking a key costs a map lookup and a SHA-256, and a revocation or a change reaches every
 * worker as soon as the server delivers it (milliseconds), with no restart.
 *
 * Fail closed: until the watch has delivered the whole bucket, and from a disconnect until it has
 * again, the directory is `unavailable` and keys cannot be checked; the caller refuses (and waits a
 * little first, so that a reconnect does not turn into a burst of refusals). A watch that cannot be
 * opened (no bucket and no right to create it, JetStream down) is retried every second and logged
 * once per outage.
 */
import type { NatsConnection } from '@nats-io/nats-core';
import type { KV, KvWatchEntry } from '@nats-io/kv';
import type { Logger } from '../telemetry/logger.js';
import { keyMatches, parseKey } from './key-format.js';
import { keyStanding, type KeyRecord, type KeyRejection } from './key-record.js';
import { decodeKeyRecord, openKeysBucket } from './key-store.js';

const RETRY_MS = 1_000;
/** An id read from the store and not found is not read again for this long. */
const MISS_TTL_MS = 1_000;
const MAX_MISSES = 10_000;

export type KeyLookup = { record: KeyRecord } | { rejection: KeyRejection } | { unavailable: true };

interface Held {
  record: KeyRecord;
  revision: number;
}

interface Stoppable {
  stop(): void;
}

export class KeyDirectory {
  readonly #connection: NatsConnection;
  readonly #bucket: string;
  readonly #logger: Logger;
  readonly #timeoutMs: number;
  /** Every record by id, with the stream revision it came from (a newer one always wins). */
  #records = new Map<string, Held>();
  #ready = false;
  #closed = false;
  #watch: Stoppable | undefined;
  #waiters = new Set<() => void>();
  #outageLogged = false;
  #loop: Promise<void> | undefined;
  #kv: KV | undefined;
  /** Ids read from the store and not found, until when; and the reads in flight. */
  #misses = new Map<string, number>();
  #reading = new Map<string, Promise<void>>();

  constructor(options: { connection: NatsConnection; bucket: string; logger: Logger; timeoutMs?: number }) {
    this.#connection = options.connection;
    this.#bucket = options.bucket;
    this.#logger = options.logger;
    this.#timeoutMs = options.timeoutMs ?? 5_000;
  }

  /** Starts watching; resolves once the bucket was read whole or `waitMs` passed (the watch goes on either way). */
  async start(waitMs = this.#timeoutMs): Promise<boolean> {
    this.#loop ??= this.#run();
    void this.#watchConnection();
    return this.whenReady(waitMs);
  }

  /** True as soon as the directory is ready; false if it is not within `waitMs`. */
  whenReady(waitMs: number): Promise<boolean> {
    if (this.#ready) return Promise.resolve(true);
    if (this.#closed || waitMs <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(done);
        resolve(this.#ready);
      };
      const timer = setTimeout(done, waitMs);
      this.#waiters.add(done);
    });
  }

  /** The record a presented key belongs to, or why it is refused. Never throws; the key is never kept. */
  lookup(key: string, now = Date.now()): KeyLookup {
    const id = parseKey(key);
    if (id === undefined) return { rejection: 'malformed' };
    if (!this.#ready) return { unavailable: true };
    const record = this.#records.get(id)?.record;
    if (record === undefined) return { rejection: 'unknown' };
    const standing = keyStanding(record, now);
    if (standing !== 'active') return { rejection: standing };
    if (keyMatches(key, record.hash)) return { record };
    for (const previous of record.previous) {
      if (Date.parse(previous.valid_until) > now && keyMatches(key, previous.hash)) return { record };
    }
    // A right id with a wrong secret is said the same way as an id that does not exist.
    return { rejection: 'unknown' };
  }

  /**
   * `lookup` again after reading the key's record from the store, when the key is not known: a key
   * created or rotated a moment ago works at once, on every worker, without waiting for the watch. A
   * read that changed nothing (a made-up id, a wrong secret) is not repeated for that id for a second,
   * and reads of one id are shared: made-up keys cost the store one read per id and second at most.
   */
  async lookupFresh(key: string, now = Date.now()): Promise<KeyLookup> {
    const found = this.lookup(key, now);
    if (!('rejection' in found) || found.rejection !== 'unknown') return found;
    const id = parseKey(key) as string;
    if (this.#kv === undefined) return found;
    const missedUntil = this.#misses.get(id);
    if (missedUntil !== undefined && missedUntil > now) return found;
    let reading = this.#reading.get(id);
    if (reading === undefined) {
      reading = this.#read(this.#kv, id).finally(() => this.#reading.delete(id));
      this.#reading.set(id, reading);
    }
    await reading;
    return this.lookup(key, Date.now());
  }

  async #read(kv: KV, id: string): Promise<void> {
    try {
      const entry = await kv.get(id);
      const record = entry === null || entry.operation !== 'PUT' ? undefined : decodeKeyRecord(entry.value);
      // The watch may have delivered this version (or a newer one) meanwhile: the newest stays.
      if (entry !== null && record !== undefined && record.id === id) {
        const held = this.#records.get(id);
        if (held === undefined || held.revision < entry.revision) {
          this.#records.set(id, { record, revision: entry.revision });
          return;
        }
      }
    } catch {
      // Unreadable now: the watch's own failure handling says so; this id is simply not known.
    }
    if (this.#misses.size >= MAX_MISSES) this.#misses.delete(this.#misses.keys().next().value as string);
    this.#misses.set(id, Date.now() + MISS_TTL_MS);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#setReady(false);
    this.#watch?.stop();
    await this.#loop;
  }

  #setReady(ready: boolean): void {
    this.#ready = ready;
    if (ready) for (const waiter of [...this.#waiters]) waiter();
  }

  /** A disconnect may hide changes: unavailable until a fresh watch has read the bucket again. */
  async #watchConnection(): Promise<void> {
    for await (const status of this.#connection.status()) {
      if (this.#closed) return;
      if (status.type === 'disconnect' && this.#ready) {
        this.#setReady(false);
        this.#logger.warn(
          { bucket: this.#bucket },
          'disconnected: keys are not checked until the key store is read again',
        );
        this.#watch?.stop();
      }
    }
  }

  async #run(): Promise<void> {
    while (!this.#closed) {
      // A watch stopped by a disconnect is opened again at once (it waits for the reconnect); a failure, after a pause.
      let pauseMs = 100;
      try {
        await this.#watchOnce();
      } catch (error) {
        pauseMs = RETRY_MS;
        if (!this.#closed && !this.#outageLogged) {
          this.#outageLogged = true;
          this.#logger.error(
            { err: error, bucket: this.#bucket },
            'key store cannot be read: requests that need a key are refused until it can (fail closed)',
          );
        }
      }
      this.#setReady(false);
      if (this.#closed || this.#connection.isClosed()) return;
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
    }
  }

  async #watchOnce(): Promise<void> {
    const kv = await openKeysBucket(this.#connection, this.#bucket, this.#timeoutMs);
    this.#kv = kv;
    const { values } = await kv.status();
    const watch = await kv.watch();
    this.#watch = watch;
    if (this.#closed) {
      watch.stop();
      return;
    }
    const records = new Map<string, Held>();
    this.#records = records;
    const caughtUp = () => {
      this.#setReady(true);
      if (this.#outageLogged)
        this.#logger.info({ bucket: this.#bucket, keys: records.size }, 'key store readable again');
      else this.#logger.info({ bucket: this.#bucket, keys: records.size }, 'key store read');
      this.#outageLogged = false;
    };
    // An empty bucket delivers nothing; otherwise the entry with nothing pending behind it is the last one.
    if (values === 0) caughtUp();
    for await (const entry of watch) {
      this.#apply(records, entry);
      if (!this.#ready && entry.delta === 0) caughtUp();
    }
  }

  #apply(records: Map<string, Held>, entry: KvWatchEntry): void {
    if (entry.operation !== 'PUT') {
      records.delete(entry.key);
      return;
    }
    const record = decodeKeyRecord(entry.value);
    if (record === undefined || record.id !== entry.key) {
      // Not a record this code wrote: no key of it is accepted.
      records.delete(entry.key);
      this.#logger.warn(
        { bucket: this.#bucket, entry: entry.key.slice(0, 64) },
        'key store entry is not a key record: ignored',
      );
      return;
    }
    const held = records.get(record.id);
    if (held === undefined || held.revision < entry.revision)
      records.set(record.id, { record, revision: entry.revision });
    this.#misses.delete(record.id);
  }
}
