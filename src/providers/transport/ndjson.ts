/**
 * An incremental parser for newline-delimited JSON (Ollama's streams): text
 * goes in as it arrives, in pieces of any size, and the values of complete
 * lines come out. Blank lines are skipped and `\r\n` is accepted; a line that
 * is not JSON throws `NdjsonSyntaxError`, a line longer than the bound
 * `LineTooLongError`.
 *
 * Linear in the input, however long a line: each piece is scanned once, and
 * the pieces of an unfinished line are kept in an array and joined once, when
 * its newline arrives (line-buffer.ts).
 *
 * By hand, not split2/ndjson: those are Node stream Transforms, and this decoder is fed one network read at a time by undici's handler (http.ts), with no stream between them; splitting lines is line-buffer.ts.
 */
import { LineBuffer, LineTooLongError } from './line-buffer.js';

export { LineTooLongError };

export class NdjsonSyntaxError extends Error {
  constructor(readonly line: string) {
    super(`not a JSON line: ${line.length > 80 ? `${line.slice(0, 80)}…` : line}`);
    this.name = 'NdjsonSyntaxError';
  }
}

function parseLine(raw: string): { value: unknown } | undefined {
  const line = raw.trim();
  if (line === '') return undefined;
  try {
    return { value: JSON.parse(line) as unknown };
  } catch {
    throw new NdjsonSyntaxError(line);
  }
}

export class NdjsonParser {
  /** The line not ended yet. */
  readonly #line: LineBuffer;

  /** `maxLineLength`: longest line, `\r` included, in UTF-16 code units (see LineTooLongError). */
  constructor(maxLineLength = Number.POSITIVE_INFINITY) {
    this.#line = new LineBuffer(maxLineLength);
  }

  /**
   * Feeds a piece of the stream; yields the values of the lines it completed, one by one, so that
   * the lines before a bad (or too long) one are delivered before the error is thrown.
   */
  *push(text: string): Generator<unknown> {
    let start = 0;
    let newline = text.indexOf('\n');
    while (newline !== -1) {
      const line = this.#line.complete(text, start, newline);
      start = newline + 1;
      const parsed = parseLine(line);
      if (parsed !== undefined) yield parsed.value;
      newline = text.indexOf('\n', start);
    }
    if (start < text.length) this.#line.keep(start === 0 ? text : text.slice(start));
  }

  /** The stream has ended: a last line without a newline still counts. */
  finish(): unknown[] {
    const parsed = parseLine(this.#line.take());
    return parsed === undefined ? [] : [parsed.value];
  }
}
