import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import { Kvm, type KV } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/nats-core';
import { z } from 'zod';
import { COUNTERS, rollupSnapshotSchema, type RollupCut, type RollupSnapshot } from './rollups.js';

/**
 * Snapshots live in a JetStream KV bucket shared by all aggregators. A
 * snapshot is gzipped JSON, cut into chunks below the server's max_payload
 * (1 MiB by default), written under two alternating slots so that the
 * previous snapshot stays whole while the next one is written:
 *
 *   chunk.<instance>.<slot>.<index>   the bytes (slot a|b, index from 0)
 *   manifest.<instance>               JSON: slot, chunk count, sha256, stream sequence…
 *
 * The manifest is written last, so a crash mid-save leaves the previous
 * snapshot in force. The bucket keeps one value per key (history 1):
 * storage is bounded by two snapshots per instance.
 */
export const manifestSchema = z.object({
  v: z.literal(1),
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
});
export type SnapshotManifest = z.infer<typeof manifestSchema>;

export interface LoadedSnapshot {
  manifest: SnapshotManifest;
  snapshot: RollupSnapshot;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Headroom under max_payload for the message headers. */
const HEADER_ALLOWANCE = 4 * 1024;

export class SnapshotStore {
  private constructor(
    private readonly kv: KV,
    readonly bucket: string,
    readonly chunkBytes: number,
  ) {}

  /** `replicas`: as many as the usage stream has, so the snapshots are as safe as the events. */
  static async open(
    connection: NatsConnection,
    bucket: string,
    options: { chunkBytes?: number; replicas?: number } = {},
  ): Promise<SnapshotStore> {
    const kv = await new Kvm(connection).create(bucket, { history: 1, replicas: options.replicas ?? 1 });
    const maxPayload = connection.info?.max_payload ?? 1024 * 1024;
    const size = Math.max(
      1024,
      Math.min(options.chunkBytes ?? Number.POSITIVE_INFINITY, maxPayload - HEADER_ALLOWANCE),
    );
    return new SnapshotStore(kv, bucket, size);
  }

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
    return manifest;
  }

  /** Saves a cut of the rollups (and ends it). */
  async saveCut(
    instance: string,
    cut: RollupCut,
    stream: { name: string; created: string },
  ): Promise<SnapshotManifest> {
    try {
      return await this.save(instance, snapshotOfCut(cut), stream);
    } finally {
      cut.end();
    }
  }

  async manifest(instance: string): Promise<SnapshotManifest | undefined> {
    const entry = await this.kv.get(manifestKey(instance));
    if (entry === null || entry.operation !== 'PUT' || entry.value.length === 0) return undefined;
    const parsed = manifestSchema.safeParse(JSON.parse(decoder.decode(entry.value)));
    return parsed.success ? parsed.data : undefined;
  }

  /** Every instance's manifest, newest coverage first. */
  async manifests(): Promise<SnapshotManifest[]> {
    const keys = await this.kv.keys('manifest.*');
    const manifests: SnapshotManifest[] = [];
    for await (const key of keys) {
      const manifest = await this.manifest(key.slice('manifest.'.length));
      if (manifest !== undefined) manifests.push(manifest);
    }
    return manifests.sort((left, right) => right.seq - left.seq);
  }

  /**
   * Read the snapshot a manifest names. Reading another instance's snapshot
   * can race with its next save two intervals later; the digest catches it
   * and the caller reads the manifest again.
   */
  async read(manifest: SnapshotManifest): Promise<RollupSnapshot> {
    const parts: Uint8Array[] = [];
    for (let index = 0; index < manifest.chunks; index += 1) {
      const entry = await this.kv.get(chunkKey(manifest.instance, manifest.slot, index));
      if (entry === null || entry.operation !== 'PUT')
        throw new Error(`snapshot chunk ${index} of ${manifest.instance} is missing`);
      parts.push(entry.value);
    }
    const body = Buffer.concat(parts);
    if (body.length !== manifest.bytes || createHash('sha256').update(body).digest('hex') !== manifest.sha256) {
      throw new Error(`snapshot of ${manifest.instance} does not match its manifest (overwritten while read?)`);
    }
    return rollupSnapshotSchema.parse(JSON.parse(decoder.decode(gunzipSync(body))));
  }

  /** The latest snapshot of `instance`, read again if it changed under us. */
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

/** The snapshot JSON of a cut. */
export function snapshotOfCut(cut: RollupCut): RollupSnapshot {
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
}
