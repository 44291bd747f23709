/**
 * An incremental parser for server-sent events (the WHATWG rules, minus
 * reconnection): text goes in as it arrives, in pieces of any size, and
 * complete events come out. Handles `\n`, `\r\n` and `\r` line ends (also when
 * a `\r\n` pair is split between two pieces), `:` comments, several `data:`
 * lines per event, a leading BOM, and events whose data is empty (dropped).
 *
 * Linear in the input, however long a line and however the input is split:
 * each piece is scanned once, from where the previous scan stopped, and the
 * pieces of an unfinished line are kept in an array and joined once, when the
 * line ends. (Appending to one string and indexing it would make V8 flatten
 * the growing string on every piece: quadratic on a long line.)
 *
 * By hand, not eventsource-parser: held to our bounds (a line, and one event's data, each within max_line_bytes) it needs a wrapper, and wrapped it took 40-150 % more CPU per event than this on batched, CRLF and long reads, 6 % less only with one whole event per read (docs/bench/results.md, "SSE decoder A/B").
 */
import { LineBuffer, LineTooLongError } from './line-buffer.js';

export { LineTooLongError };

export interface SseEvent {
  /** The `event:` field, when the server named the event (`error` on some servers). */
  event: string | undefined;
  data: string;
}

const LINE_FEED = 0x0a;
const BYTE_ORDER_MARK = 0xfeff;

export class SseParser {
  /** The line not ended yet. */
  readonly #line: LineBuffer;
  /** The last piece ended with `\r`: a `\n` starting the next piece is the second half of that line end. */
  #afterCarriageReturn = false;
  /** The event's first data line; any later ones in `#moreData` (one line is the usual case: no array, no join). */
  #data: string | undefined;
  #moreData: string[] | undefined;
  /** Length of the data lines joined with `\n`. */
  #dataLength = 0;
  #eventType: string | undefined;
  #started = false;

  /** `maxLineLength`: longest line, and longest data of one event, in UTF-16 code units (see LineTooLongError). */
  constructor(private readonly maxLineLength = Number.POSITIVE_INFINITY) {
    this.#line = new LineBuffer(maxLineLength);
  }

  /**
   * Feeds a piece of the stream; appends the events it completed to `out` and returns `out`. Throws
   * LineTooLongError past the bound; the events completed before it are in `out` already.
   */
  push(text: string, out: SseEvent[] = []): SseEvent[] {
    let start = 0;
    if (!this.#started && text.length > 0) {
      this.#started = true;
      if (text.charCodeAt(0) === BYTE_ORDER_MARK) start = 1;
    }
    if (this.#afterCarriageReturn && start < text.length) {
      this.#afterCarriageReturn = false;
      if (text.charCodeAt(start) === LINE_FEED) start += 1;
    }
    // The next `\n` and `\r` at or after `start`, each searched again only once passed: one scan of the piece.
    let nextLineFeed = text.indexOf('\n', start);
    let nextCarriageReturn = text.indexOf('\r', start);
    while (nextLineFeed !== -1 || nextCarriageReturn !== -1) {
      const atCarriageReturn = nextLineFeed === -1 || (nextCarriageReturn !== -1 && nextCarriageReturn < nextLineFeed);
      const end = atCarriageReturn ? nextCarriageReturn : nextLineFeed;
      const event = this.#processLine(this.#line.complete(text, start, end));
      if (event !== undefined) out.push(event);
      start = end + 1;
      if (atCarriageReturn) {
        if (start === text.length) this.#afterCarriageReturn = true;
        else if (text.charCodeAt(start) === LINE_FEED) start += 1;
      }
      if (nextLineFeed !== -1 && nextLineFeed < start) nextLineFeed = text.indexOf('\n', start);
      if (nextCarriageReturn !== -1 && nextCarriageReturn < start) nextCarriageReturn = text.indexOf('\r', start);
    }
    if (start < text.length) this.#line.keep(start === 0 ? text : text.slice(start));
    return out;
  }

  /**
   * The stream has ended: an event still being collected is appended as well (the spec would drop it,
   * but servers that close right after `data: [DONE]\n` are common enough to be lenient).
   */
  finish(out: SseEvent[] = []): SseEvent[] {
    if (!this.#line.isEmpty) {
      const event = this.#processLine(this.#line.take());
      if (event !== undefined) out.push(event);
    }
    this.#afterCarriageReturn = false;
    const last = this.#dispatch();
    if (last !== undefined) out.push(last);
    return out;
  }

  #processLine(line: string): SseEvent | undefined {
    if (line === '') return this.#dispatch();
    if (line.charCodeAt(0) === 0x3a /* `:` */) return undefined;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      this.#dataLength += value.length + (this.#data === undefined ? 0 : 1);
      if (this.#dataLength > this.maxLineLength) this.#tooLong('event');
      if (this.#data === undefined) this.#data = value;
      else if (this.#moreData === undefined) this.#moreData = [value];
      else this.#moreData.push(value);
    } else if (field === 'event') {
      this.#eventType = value;
    }
    return undefined;
  }

  #dispatch(): SseEvent | undefined {
    const data = this.#moreData === undefined ? (this.#data ?? '') : `${this.#data}\n${this.#moreData.join('\n')}`;
    const event = this.#eventType;
    this.#data = undefined;
    this.#moreData = undefined;
    this.#dataLength = 0;
    this.#eventType = undefined;
    if (data.trim() === '') return undefined;
    return { event, data };
  }

  /** Past the bound: what was collected is dropped at once (the caller gives up on the stream), then the throw. */
  #tooLong(what: 'line' | 'event'): never {
    this.#line.clear();
    this.#data = undefined;
    this.#moreData = undefined;
    this.#dataLength = 0;
    throw new LineTooLongError(this.maxLineLength, what);
  }
}
