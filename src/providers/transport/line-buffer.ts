/**
 * The start of a line that has not ended yet, for the stream decoders (sse.ts, ndjson.ts). Kept as the
 * pieces it arrived in, joined once when the line ends: appending to one string and indexing it makes
 * V8 flatten the growing string on every piece, quadratic on a long line. Bounded: past `maxLength`
 * the pieces are dropped at once (the caller gives up on the stream) and LineTooLongError is thrown.
 */
/**
 * A line, or the data of an event, longer than the parser's bound. Lengths are
 * counted in UTF-16 code units of the decoded text, not in bytes: the same
 * number for ASCII, and 1 to 3 bytes of UTF-8 a unit otherwise (4 bytes for a
 * surrogate pair). What the bound protects is memory, and a string takes 1 or 2
 * bytes a unit in V8, so at most twice the bound is held.
 */
export class LineTooLongError extends Error {
  constructor(
    /** The bound, in UTF-16 code units. */
    readonly limit: number,
    /** `line`: one line (SSE or NDJSON); `event`: the data lines of one SSE event together. */
    readonly what: 'line' | 'event',
  ) {
    super(`${what === 'line' ? 'a line' : "an event's data"} longer than ${limit} characters`);
    this.name = 'LineTooLongError';
  }
}

export class LineBuffer {
  #pieces: string[] = [];
  #length = 0;

  /** `maxLength`: longest line, in UTF-16 code units (see LineTooLongError). */
  constructor(readonly maxLength: number) {}

  get isEmpty(): boolean {
    return this.#pieces.length === 0;
  }

  /** Keeps the start of a line that has not ended in this piece. */
  keep(piece: string): void {
    this.#length += piece.length;
    if (this.#length > this.maxLength) this.#tooLong();
    this.#pieces.push(piece);
  }

  /** The line that ends at `end` in `text`: the pieces kept so far, then `text` from `start`. */
  complete(text: string, start: number, end: number): string {
    if (this.#length + (end - start) > this.maxLength) this.#tooLong();
    if (this.#pieces.length === 0) return text.slice(start, end);
    this.#pieces.push(text.slice(start, end));
    return this.take();
  }

  /** What was kept, as one string; the buffer is empty again. */
  take(): string {
    const line = this.#pieces.join('');
    this.clear();
    return line;
  }

  clear(): void {
    this.#pieces = [];
    this.#length = 0;
  }

  #tooLong(): never {
    this.clear();
    throw new LineTooLongError(this.maxLength, 'line');
  }
}
