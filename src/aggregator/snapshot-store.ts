import { jsOptions } from '../bus/jetstream-domain.js';
import { jetstream } from '@nats-io/jetstream';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip, createGzip, gunzipSync, gzipSync } from 'node:zlib';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { z } from 'zod';
import {
  COUNTERS,
  NO_COMPACTION,
  rollupSnapshotSchema,
  UsageRollups,
  type Compaction,
  type RollupCut,
  type RollupSnapshot,
} from './rollups.js';
import { decodeStream, encodeCut, SNAPSHOT_V2, type EncodeTotals } from './snapshot-codec.js';

/**
 * Snapshots live in a JetStream KV bucket shared by all aggregators. A
 * snapshot is gzipped, cut into chunks below the server's max_payload
 * (1 MiB by default), written under two alternating slots so that the
 * previous snapshot stays whole while the next one is written:
 *
 *   chunk.<instance>.<slot>.<index>   the bytes (slot a|b, index from 0)
 *   manifest.<instance>               JSON: format, slot, chunk count, sha256, stream sequence…
 *
 * Format v2 (written now): newline-delimited records (snapshot-codec.ts), produced from a cut of the
 * rollups a batch at a time, gzipped as a stream and put chunk by chunk as each fills: never one
 * string, and the event loop keeps turning. Format v1 (one JSON document) is still read.
 *
 * The manifest is written last, so a crash mid-save leaves the previous
 * snapshot in force. The bucket keeps one value per key (history 1):
 * storage is bounded by two snapshots per instance; chunks a smaller snapshot no longer uses are
 * purged after it is saved, and the snapshots of departed instances after `departedAfterMs`.
 */
export const manifestSchema = z.object({
  /** 1: one gzipped JSON document; 2: gzipped newline-delimited records. */
  v: z.union([z.literal(1), z.literal(SNAPSHOT_V2)]),
  instance: z.string(),
  slot: z.enum(['a', 'b']),
  chunks: z.number().int().positive(),
  bytes: z.number().int().nonnegative(),
  sha256: z.string(),
  /** Last stream sequence the snapshot covers; consuming resumes after it. */
  seq: z.number().int().nonnegative(),
  stream: z.string(),
  /** Creation time of the stream, to notice a stream deleted and recreated (sequences restart). */
  stream_created: z.string(),
  saved_at: z.string(),
  /** v2: cells and remembered ids in the snapshot (for operators; the snapshot's end record is checked). */
  cells: z.number().int().nonnegative().optional(),
  ids: z.number().int().nonnegative().optional(),
});
export type SnapshotManifest = z.infer<typeof manifestSchema>;

export interface LoadedSnapshot {
  manifest: SnapshotManifest;
  snapshot: RollupSnapshot;
}

export interface LoadedRollups {
  manifest: SnapshotManifest;
  rollups: UsageRollups;
}

type StoreLogger = { info(object: object, message: string): void; warn(object: object, message: string): void };

export interface SnapshotStoreOptions {
  chunkBytes?: number;
  /** As many as the usage stream has, so the snapshots are as safe as the events. */
  replicas?: number;
  /**
   * Snapshots of other instances not saved for this long are removed (checked at most once per
   * `sweepEveryMs`, after a save). Undefined: never.
   */
  departedAfterMs?: number;
  sweepEveryMs?: number;
  logger?: StoreLogger;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Headroom under max_payload for the message headers. */
const HEADER_ALLOWANCE = 4 * 1024;
const HOUR_MS = 3_600_000;

export class SnapshotStore {
  /** KV revision of each manifest read here (chunks written after it mean the snapshot was overwritten). */
  private readonly revisions = new WeakMap<SnapshotManifest, number>();
  private lastSweep = Number.NEGATIVE_INFINITY;

  private constructor(
    private readonly kv: KV,
    readonly bucket: string,
    readonly chunkBytes: number,
    private readonly options: SnapshotStoreOptions,
  ) {}

  static async open(
    connection: NatsConnection,
    bucket: string,
    options: SnapshotStoreOptions = {},
  ): Promise<SnapshotStore> {
    const kv = await new Kvm(jetstream(connection, jsOptions(connection))).create(bucket, {
      history: 1,
      replicas: options.replicas ?? 1,
    });
    const maxPayload = connection.info?.max_payload ?? 1024 * 1024;
    const size = Math.max(
      1024,
      Math.min(options.chunkBytes ?? Number.POSITIVE_INFINITY, maxPayload - HEADER_ALLOWANCE),
    );
    return new SnapshotStore(kv, bucket, size, options);
  }

  /** Saves a snapshot in format v1 (one JSON document); saveCut writes v2. Kept to write v1 in tests. */
  async save(
    instance: string,
    snapshot: RollupSnapshot,
    stream: { name: string; created: string },
  ): Promise<SnapshotManifest> {
    const previous = await this.manifest(instance);
    const slot = previous?.slot === 'a' ? 'b' : 'a';
    const body = gzipSync(encoder.encode(JSON.stringify(snapshot)));
    const chunks = Math.max(1, Math.ceil(body.length / this.chunkBytes));
    for (let index = 0; index < chunks; index += 1) {
      await this.kv.put(
        chunkKey(instance, slot, index),
        body.subarray(index * this.chunkBytes, (index + 1) * this.chunkBytes),
      );
    }
    const manifest: SnapshotManifest = {
      v: 1,
      instance,
      slot,
      chunks,
      bytes: body.length,
      sha256: createHash('sha256').update(body).digest('hex'),
      seq: snapshot.seq,
      stream: stream.name,
      stream_created: stream.created,
      saved_at: new Date().toISOString(),
    };
    await this.kv.put(manifestKey(instance), encoder.encode(JSON.stringify(manifest)));
    await this.afterSave(manifest);
    return manifest;
  }

  /**
   * Saves a cut of the rollups in format v2 (and ends it), without holding the event loop: records are
   * produced a batch at a time, gzipped as a stream, and each chunk is put as soon as it is full (the
   * next one is compressed while it is sent). Memory: a couple of chunks, whatever the snapshot's size.
   */
  async saveCut(
    instance: string,
    cut: RollupCut,
    stream: { name: string; created: string },
  ): Promise<SnapshotManifest> {
    let manifest: SnapshotManifest;
    try {
      const previous = await this.manifest(instance);
      const slot = previous?.slot === 'a' ? 'b' : 'a';
      const hash = createHash('sha256');
      const totals: EncodeTotals = { cells: 0, ids: 0 };
      let bytes = 0;
      let chunks = 0;
      // One put in flight while the next chunk is compressed; its failure surfaces at the next await.
      let inFlight: Promise<unknown> = Promise.resolve();
      const put = async (data: Uint8Array) => {
        await inFlight;
        inFlight = this.kv.put(chunkKey(instance, slot, chunks), data);
        inFlight.catch(() => undefined);
        chunks += 1;
      };
      await pipeline(
        Readable.from(encodeCut(cut, totals), { highWaterMark: 1 }),
        createGzip(),
        async (compressed: AsyncIterable<Buffer>) => {
          let pending: Buffer[] = [];
          let size = 0;
          for await (const piece of compressed) {
            hash.update(piece);
            bytes += piece.length;
            pending.push(piece);
            size += piece.length;
            while (size >= this.chunkBytes) {
              const whole = pending.length === 1 ? (pending[0] as Buffer) : Buffer.concat(pending, size);
              await put(whole.subarray(0, this.chunkBytes));
              const left = whole.subarray(this.chunkBytes);
              pending = left.length > 0 ? [left] : [];
              size = left.length;
            }
          }
          if (size > 0 || chunks === 0) await put(Buffer.concat(pending, size));
        },
      );
      await inFlight;
      manifest = {
        v: SNAPSHOT_V2,
        instance,
        slot,
        chunks,
        bytes,
        sha256: hash.digest('hex'),
        seq: cut.seq,
        stream: stream.name,
        stream_created: stream.created,
        saved_at: new Date().toISOString(),
        cells: totals.cells,
        ids: totals.ids,
      };
      await this.kv.put(manifestKey(instance), encoder.encode(JSON.stringify(manifest)));
    } finally {
      cut.end();
    }
    await this.afterSave(manifest);
    return manifest;
  }

  /** Housekeeping after a save; its failures are logged, never the save's. */
  private async afterSave(manifest: SnapshotManifest): Promise<void> {
    try {
      await this.removeStaleChunks(manifest.instance, manifest.slot, manifest.chunks);
    } catch (error) {
      this.options.logger?.warn({ err: error, instance: manifest.instance }, 'removing stale snapshot chunks failed');
    }
    await this.removeDepartedIfDue(manifest.instance);
  }

  /** Purges the chunks of `slot` from `count` on (left by an earlier, bigger snapshot in that slot). */
  async removeStaleChunks(instance: string, slot: 'a' | 'b', count: number): Promise<number> {
    let removed = 0;
    for (const key of await this.keys(`chunk.${instance}.${slot}.*`)) {
      const index = Number(key.slice(key.lastIndexOf('.') + 1));
      if (Number.isInteger(index) && index >= count) {
        await this.kv.purge(key);
        removed += 1;
      }
    }
    return removed;
  }

  /**
   * Runs removeDeparted when `departedAfterMs` is set and it last ran more than `sweepEveryMs` (an hour)
   * ago. Never throws (logs).
   */
  async removeDepartedIfDue(own: string): Promise<void> {
    const after = this.options.departedAfterMs;
    const now = Date.now();
    if (after === undefined || now - this.lastSweep < (this.options.sweepEveryMs ?? HOUR_MS)) return;
    this.lastSweep = now;
    try {
      const removed = await this.removeDeparted(own, after, now);
      if (removed.length > 0)
        this.options.logger?.info({ instances: removed }, 'removed the snapshots of departed aggregators');
    } catch (error) {
      this.options.logger?.warn({ err: error }, 'removing the snapshots of departed aggregators failed');
    }
  }

  /**
   * Removes the manifest and chunks of every other instance whose snapshot was saved more than
   * `olderThanMs` ago (the rule by which the server removes its durable), and chunks no manifest names
   * that are as old (a save that never finished). Nothing is removed before `own` has a snapshot, and a
   * departed snapshot is kept while it covers more of the stream than `own`'s (the state is a function
   * of the stream prefix: own's covers everything a departed one of the same stream held).
   */
  async removeDeparted(own: string, olderThanMs: number, now = Date.now()): Promise<string[]> {
    const ownManifest = await this.manifest(own);
    if (ownManifest === undefined) return [];
    const removed: string[] = [];
    const withManifest = new Set<string>();
    for (const key of await this.keys('manifest.*')) {
      const instance = key.slice('manifest.'.length);
      withManifest.add(instance);
      if (instance === own) continue;
      const entry = await this.kv.get(key);
      if (entry === null || entry.operation !== 'PUT') continue;
      const seen = looseManifest(entry);
      if (now - seen.savedAt < olderThanMs) continue;
      if (seen.streamCreated === ownManifest.stream_created && seen.seq > ownManifest.seq) continue;
      // Only if it was not saved again meanwhile (a departed instance back under the same name).
      try {
        await this.kv.purge(key, { previousSeq: entry.revision });
      } catch {
        continue;
      }
      withManifest.delete(instance);
      for (const chunk of await this.keys(`chunk.${instance}.>`)) await this.kv.purge(chunk);
      removed.push(instance);
    }
    // Chunks without a manifest: a first save interrupted, or a removal above interrupted.
    for (const key of await this.keys('chunk.>')) {
      const instance = key.split('.')[1] ?? '';
      if (instance === own || withManifest.has(instance) || removed.includes(instance)) continue;
      const entry = await this.kv.get(key);
      if (entry === null || entry.operation !== 'PUT' || now - entry.created.getTime() < olderThanMs) continue;
      await this.kv.purge(key, { previousSeq: entry.revision }).catch(() => undefined);
    }
    return removed;
  }

  private async keys(filter: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const key of await this.kv.keys(filter)) keys.push(key);
    return keys;
  }

  async manifest(instance: string): Promise<SnapshotManifest | undefined> {
    const entry = await this.kv.get(manifestKey(instance));
    if (entry === null || entry.operation !== 'PUT' || entry.value.length === 0) return undefined;
    let parsed: ReturnType<typeof manifestSchema.safeParse>;
    try {
      parsed = manifestSchema.safeParse(JSON.parse(decoder.decode(entry.value)));
    } catch {
      return undefined;
    }
    if (!parsed.success) return undefined;
    this.revisions.set(parsed.data, entry.revision);
    return parsed.data;
  }

  /** Every instance's manifest, newest coverage first. */
  async manifests(): Promise<SnapshotManifest[]> {
    const manifests: SnapshotManifest[] = [];
    for (const key of await this.keys('manifest.*')) {
      const manifest = await this.manifest(key.slice('manifest.'.length));
      if (manifest !== undefined) manifests.push(manifest);
    }
    return manifests.sort((left, right) => right.seq - left.seq);
  }

  /**
   * Rollups rebuilt from the snapshot a manifest names (or the latest of an instance). Reading another
   * instance's snapshot can race with its next save two intervals later: a chunk written after the
   * manifest, or bytes that do not match its digest, show it, and the manifest is read again (up to 3
   * times). Undefined when the instance has no snapshot.
   */
  async loadRollups(
    target: SnapshotManifest | string,
    dedupHorizonMs: number,
    compaction: Compaction = NO_COMPACTION,
  ): Promise<LoadedRollups | undefined> {
    const instance = typeof target === 'string' ? target : target.instance;
    for (let attempt = 1; ; attempt += 1) {
      const manifest = attempt === 1 && typeof target !== 'string' ? target : await this.manifest(instance);
      if (manifest === undefined) return undefined;
      try {
        return { manifest, rollups: await this.readRollups(manifest, dedupHorizonMs, compaction) };
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
  }

  /** The rollups of the snapshot `manifest` names (no retry). `dedupHorizonMs` undefined: the snapshot's. */
  async readRollups(
    manifest: SnapshotManifest,
    dedupHorizonMs: number | undefined,
    compaction: Compaction = NO_COMPACTION,
  ): Promise<UsageRollups> {
    if (manifest.v === 1) {
      const snapshot = await this.readV1(manifest);
      return UsageRollups.fromSnapshot(snapshot, dedupHorizonMs ?? snapshot.dedup_horizon_ms, compaction);
    }
    const hash = createHash('sha256');
    let bytes = 0;
    let decoded: Awaited<ReturnType<typeof decodeStream>> | undefined;
    await pipeline(
      Readable.from(this.chunks(manifest), { highWaterMark: 1 }),
      async function* (source: AsyncIterable<Uint8Array>) {
        for await (const chunk of source) {
          hash.update(chunk);
          bytes += chunk.length;
          yield chunk;
        }
      },
      createGunzip(),
      async (text: AsyncIterable<Buffer>) => {
        decoded = await decodeStream(text, dedupHorizonMs, compaction);
      },
    );
    if (bytes !== manifest.bytes || hash.digest('hex') !== manifest.sha256)
      throw new Error(`snapshot of ${manifest.instance} does not match its manifest (overwritten while read?)`);
    if (decoded === undefined) throw new Error(`snapshot of ${manifest.instance} is empty`);
    if (decoded.header.seq !== manifest.seq)
      throw new Error(
        `snapshot of ${manifest.instance} covers seq ${decoded.header.seq}, its manifest ${manifest.seq}`,
      );
    return decoded.rollups;
  }

  /** The chunks of a snapshot in order, the next one fetched while the current one is decoded. */
  private async *chunks(manifest: SnapshotManifest): AsyncGenerator<Uint8Array> {
    const revision = this.revisions.get(manifest);
    const fetch = (index: number) => {
      const pending = this.kv.get(chunkKey(manifest.instance, manifest.slot, index));
      pending.catch(() => undefined);
      return pending;
    };
    let next: Promise<KvEntry | null> | undefined = fetch(0);
    for (let index = 0; index < manifest.chunks; index += 1) {
      const entry: KvEntry | null = await (next as Promise<KvEntry | null>);
      next = index + 1 < manifest.chunks ? fetch(index + 1) : undefined;
      if (entry === null || entry.operation !== 'PUT')
        throw new Error(`snapshot chunk ${index} of ${manifest.instance} is missing`);
      // Chunks are written before their manifest: a later one belongs to a newer snapshot.
      if (revision !== undefined && entry.revision > revision)
        throw new Error(`snapshot chunk ${index} of ${manifest.instance} was overwritten while read`);
      yield entry.value;
    }
  }

  private async readV1(manifest: SnapshotManifest): Promise<RollupSnapshot> {
    const parts: Uint8Array[] = [];
    for await (const chunk of this.chunks(manifest)) parts.push(chunk);
    const body = Buffer.concat(parts);
    if (body.length !== manifest.bytes || createHash('sha256').update(body).digest('hex') !== manifest.sha256) {
      throw new Error(`snapshot of ${manifest.instance} does not match its manifest (overwritten while read?)`);
    }
    return rollupSnapshotSchema.parse(JSON.parse(decoder.decode(gunzipSync(body))));
  }

  /**
   * The snapshot a manifest names as one v1 document (a v2 snapshot is rebuilt first). For tests and
   * tools: it holds the whole snapshot in memory; the aggregator uses loadRollups.
   */
  async read(manifest: SnapshotManifest): Promise<RollupSnapshot> {
    if (manifest.v === 1) return this.readV1(manifest);
    const rollups = await this.readRollups(manifest, undefined);
    return snapshotOfCut(rollups.beginCut(), true);
  }

  /** The latest snapshot of `instance` as one document (see read), read again if it changed under us. */
  async load(instance: string): Promise<LoadedSnapshot | undefined> {
    for (let attempt = 1; ; attempt += 1) {
      const manifest = await this.manifest(instance);
      if (manifest === undefined) return undefined;
      try {
        return { manifest, snapshot: await this.read(manifest) };
      } catch (error) {
        if (attempt >= 3) throw error;
      }
    }
  }
}

function manifestKey(instance: string): string {
  return `manifest.${instance}`;
}

function chunkKey(instance: string, slot: 'a' | 'b', index: number): string {
  return `chunk.${instance}.${slot}.${index}`;
}

/** What the sweep needs of a manifest, from any version (unreadable: its age is the entry's). */
function looseManifest(entry: KvEntry): { savedAt: number; seq: number; streamCreated: string | undefined } {
  let savedAt = Number.NaN;
  let seq = 0;
  let streamCreated: string | undefined;
  try {
    const value = JSON.parse(decoder.decode(entry.value)) as Record<string, unknown>;
    if (typeof value.saved_at === 'string') savedAt = Date.parse(value.saved_at);
    if (typeof value.seq === 'number') seq = value.seq;
    if (typeof value.stream_created === 'string') streamCreated = value.stream_created;
  } catch {
    // unreadable: judged by its age alone
  }
  return { savedAt: Number.isFinite(savedAt) ? savedAt : entry.created.getTime(), seq, streamCreated };
}

/** The snapshot JSON (v1 document) of a cut; `end`: end the cut when done. */
export function snapshotOfCut(cut: RollupCut, end = false): RollupSnapshot {
  try {
    const cells: RollupSnapshot['cells'] = [];
    const cellKeys: Array<string | null> = [];
    const days = new Set<number>();
    let keyed = false;
    for (const cell of cut.cells()) {
      const { agent, microdao, model, provider, key } = cell.dimensions;
      cells.push([cell.start, agent, microdao, model, provider, ...cell.counts]);
      cellKeys.push(key);
      if (key !== null) keyed = true;
      if (cell.day) days.add(cell.start);
    }
    return {
      v: 1,
      seq: cut.seq,
      dedup_horizon_ms: cut.dedupHorizonMs,
      counters: [...COUNTERS],
      cells,
      ...(keyed ? { cell_keys: cellKeys } : {}),
      ...(days.size > 0 ? { day_buckets: [...days] } : {}),
      seen: cut.seen().map(([hour, ids]) => [hour, [...ids]]),
      stats: { ...cut.stats },
    };
  } finally {
    if (end) cut.end();
  }
}
