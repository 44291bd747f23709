import { setImmediate as nextTurn } from 'node:timers/promises';
import { z } from 'zod';
import { COUNTERS, counterPositions, type Compaction, type RollupCut, UsageRollups } from './rollups.js';

/**
 * Snapshot format v2: newline-delimited JSON records, written and read as a stream (gzipped and cut
 * into KV chunks by the store), so that no step ever holds the whole snapshot in one string:
 *
 *   {"v":2,"seq":…,"dedup_horizon_ms":…,"counters":[names…],"stats":{…}}          header, first line
 *   [start, day (1|0), agent, microdao, model, provider, key, …counts]             one line per cell
 *   {"hour":h,"ids":[event ids…]}                                                  ids seen in stream hour h, in
 *                                                                                   pieces (an hour may span lines)
 *   {"end":true,"cells":n,"ids":m}                                                 last line: what came before
 *
 * Counters are named in the header and matched by name on load (as in v1). The end record makes a
 * truncated stream unreadable even when its bytes happen to be whole gzip.
 */
export const SNAPSHOT_V2 = 2;

/** Cells written between two turns of the event loop at most (a turn is also given every SLICE_MS). */
const CELLS_PER_BATCH = 2_000;
/** Longest stretch of encoding or decoding before the event loop is let through. */
const SLICE_MS = 5;
/** Event ids per `seen` record. */
const IDS_PER_LINE = 4_000;
/** `seen` records between two turns at most. */
const ID_LINES_PER_BATCH = 8;

const statsSchema = z.object({
  events: z.number(),
  duplicates: z.number(),
  invalid: z.number(),
  expired: z.number().optional(),
});

const headerSchema = z.object({
  v: z.literal(SNAPSHOT_V2),
  seq: z.number().int().nonnegative(),
  dedup_horizon_ms: z.number(),
  counters: z.array(z.string()),
  stats: statsSchema,
});
export type SnapshotHeaderV2 = z.infer<typeof headerSchema>;

const seenSchema = z.object({ hour: z.number().int(), ids: z.array(z.string()) });
const endSchema = z.object({ end: z.literal(true), cells: z.number().int(), ids: z.number().int() });

export interface EncodeOptions {
  cellsPerBatch?: number;
  sliceMs?: number;
  idsPerLine?: number;
  idLinesPerBatch?: number;
}

/** What an encoding wrote (known once the generator is done). */
export interface EncodeTotals {
  cells: number;
  ids: number;
}

/**
 * The records of a cut as UTF-8 buffers, a batch of lines at a time. Between batches it waits for the
 * next turn of the event loop, so that events go on being applied and queries answered while a large
 * snapshot is written; what it yields is the state at the cut all the same (see UsageRollups.beginCut).
 * Does not end the cut.
 */
export async function* encodeCut(
  cut: RollupCut,
  totals: EncodeTotals = { cells: 0, ids: 0 },
  options: EncodeOptions = {},
): AsyncGenerator<Buffer> {
  const cellsPerBatch = options.cellsPerBatch ?? CELLS_PER_BATCH;
  const sliceMs = options.sliceMs ?? SLICE_MS;
  const idsPerLine = options.idsPerLine ?? IDS_PER_LINE;
  const idLinesPerBatch = options.idLinesPerBatch ?? ID_LINES_PER_BATCH;
  const header: SnapshotHeaderV2 = {
    v: SNAPSHOT_V2,
    seq: cut.seq,
    dedup_horizon_ms: cut.dedupHorizonMs,
    counters: [...COUNTERS],
    stats: { ...cut.stats },
  };
  let lines: string[] = [`${JSON.stringify(header)}\n`];
  let sliceStarted = performance.now();
  const due = (count: number) => count >= cellsPerBatch || performance.now() - sliceStarted >= sliceMs;

  let inBatch = 0;
  for (const cell of cut.cells()) {
    const { agent, microdao, model, provider, key } = cell.dimensions;
    lines.push(
      `${JSON.stringify([cell.start, cell.day ? 1 : 0, agent, microdao, model, provider, key, ...cell.counts])}\n`,
    );
    totals.cells += 1;
    inBatch += 1;
    // The clock is read every 64 cells only.
    if ((inBatch & 63) === 0 && due(inBatch)) {
      yield Buffer.from(lines.join(''));
      lines = [];
      inBatch = 0;
      await nextTurn();
      sliceStarted = performance.now();
    }
  }

  // The id sets as of the cut. An hour's set is only ever added to (in insertion order, never removed
  // from), and the cut hands out the set as it was at the cut; reading that set over several turns while
  // the live one grows is exact when it stops after the size it had when taken.
  const hours = cut.seen().map(([hour]) => hour);
  for (const hour of hours) {
    const ids = cut.seen().find(([candidate]) => candidate === hour)?.[1];
    if (ids === undefined) continue;
    const size = ids.size;
    const iterator = ids.values();
    let read = 0;
    while (read < size) {
      const piece: string[] = [];
      while (read < size && piece.length < idsPerLine) {
        const next = iterator.next();
        if (next.done === true) break;
        piece.push(next.value);
        read += 1;
      }
      if (piece.length === 0) break;
      lines.push(`${JSON.stringify({ hour, ids: piece })}\n`);
      totals.ids += piece.length;
      if (lines.length >= idLinesPerBatch || performance.now() - sliceStarted >= sliceMs) {
        yield Buffer.from(lines.join(''));
        lines = [];
        await nextTurn();
        sliceStarted = performance.now();
      }
    }
  }
  lines.push(`${JSON.stringify({ end: true, cells: totals.cells, ids: totals.ids })}\n`);
  yield Buffer.from(lines.join(''));
}

/**
 * Rebuilds rollups from the text of a v2 snapshot fed piece by piece (any split, lines may span
 * pieces). Throws on the first record that does not fit the format.
 */
export class SnapshotDecoder {
  private readonly text = new TextDecoder('utf-8', { fatal: true });
  private rest = '';
  private header: SnapshotHeaderV2 | undefined;
  private positions: number[] = [];
  private rollups: UsageRollups | undefined;
  private cells = 0;
  private ids = 0;
  private ended = false;
  /** The hour whose ids are being gathered (an hour's ids may come in several records). */
  private seenHour: number | undefined;
  private seenIds: string[] = [];
  private readonly seenHours = new Set<number>();

  /** `dedupHorizonMs`: the rollups' (undefined: the snapshot's own). */
  constructor(
    private readonly dedupHorizonMs: number | undefined,
    private readonly compaction: Compaction,
  ) {}

  /** Feed the next piece of (decompressed) bytes. */
  push(bytes: Uint8Array): void {
    const text = this.rest + this.text.decode(bytes, { stream: true });
    let start = 0;
    for (let end = text.indexOf('\n', start); end >= 0; end = text.indexOf('\n', start)) {
      if (end > start) this.record(text.slice(start, end));
      start = end + 1;
    }
    this.rest = text.slice(start);
  }

  /** The rollups, once every byte is in; checks the end record. */
  finish(): { header: SnapshotHeaderV2; rollups: UsageRollups } {
    const tail = this.rest + this.text.decode();
    this.rest = '';
    if (tail.trim() !== '') this.record(tail);
    if (this.header === undefined || this.rollups === undefined) throw new Error('snapshot has no header');
    if (!this.ended) throw new Error('snapshot is truncated (no end record)');
    this.flushSeen();
    const { rollups, header } = this;
    rollups.appliedSeq = header.seq;
    Object.assign(rollups.stats, header.stats);
    // A snapshot taken with another window (or before compaction existed) is brought to this one's.
    if (this.compaction.hourWindowMs > 0 || this.compaction.retentionMs > 0) rollups.compact();
    return { header, rollups };
  }

  private record(line: string): void {
    if (this.ended) throw new Error('snapshot has records after its end');
    const value: unknown = JSON.parse(line);
    if (this.rollups === undefined) {
      const header = headerSchema.parse(value);
      this.header = header;
      this.positions = counterPositions(header.counters);
      this.rollups = new UsageRollups(this.dedupHorizonMs ?? header.dedup_horizon_ms, this.compaction);
      return;
    }
    if (Array.isArray(value)) {
      this.cell(value, this.rollups);
      return;
    }
    if (typeof value === 'object' && value !== null && 'end' in value) {
      const end = endSchema.parse(value);
      if (end.cells !== this.cells || end.ids !== this.ids)
        throw new Error(
          `snapshot end record says ${end.cells} cells and ${end.ids} ids; read ${this.cells} and ${this.ids}`,
        );
      this.ended = true;
      return;
    }
    const seen = seenSchema.parse(value);
    if (seen.hour !== this.seenHour) {
      this.flushSeen();
      // An hour's ids come in consecutive records; one seen again later would replace the first part.
      if (this.seenHours.has(seen.hour)) throw new Error(`snapshot ids of hour ${seen.hour} are not consecutive`);
      this.seenHours.add(seen.hour);
      this.seenHour = seen.hour;
    }
    for (const id of seen.ids) this.seenIds.push(id);
    this.ids += seen.ids.length;
  }

  private cell(row: unknown[], rollups: UsageRollups): void {
    const [start, day, agent, microdao, model, provider, key] = row;
    if (
      row.length < 7 ||
      !Number.isInteger(start) ||
      (day !== 0 && day !== 1) ||
      !isDimension(agent) ||
      !isDimension(microdao) ||
      !isDimension(model) ||
      !isDimension(provider) ||
      !isDimension(key)
    )
      throw new Error(`snapshot cell ${this.cells} is malformed`);
    const values = row.slice(7);
    for (const value of values)
      if (typeof value !== 'number') throw new Error(`snapshot cell ${this.cells} is malformed`);
    rollups.restoreCell(
      start as number,
      day === 1,
      { agent, microdao, model, provider, key },
      values as number[],
      this.positions,
    );
    this.cells += 1;
  }

  private flushSeen(): void {
    if (this.seenHour !== undefined && this.rollups !== undefined)
      this.rollups.restoreSeen(this.seenHour, this.seenIds);
    this.seenHour = undefined;
    this.seenIds = [];
  }
}

function isDimension(value: unknown): value is string | null {
  return value === null || typeof value === 'string';
}

/** Feeds pieces to a decoder, letting the event loop through every few milliseconds. */
export async function decodeStream(
  source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
  dedupHorizonMs: number | undefined,
  compaction: Compaction,
): Promise<{ header: SnapshotHeaderV2; rollups: UsageRollups }> {
  const decoder = new SnapshotDecoder(dedupHorizonMs, compaction);
  let sliceStarted = performance.now();
  for await (const piece of source) {
    decoder.push(piece);
    if (performance.now() - sliceStarted >= SLICE_MS) {
      await nextTurn();
      sliceStarted = performance.now();
    }
  }
  return decoder.finish();
}
