/**
 * An incremental parser for server-sent events (the WHATWG rules, minus
 * reconnection): text goes in as it arrives, in pieces of any size, and
 * complete events come out. Handles `\n`, `\r\n` and `\r` line ends (also when
 * a `\r\n` pair is split between two pieces), `:` comments, several `data:`
 * lines per event, a leading BOM, and events whose data is empty (dropped).
 */
export interface SseEvent {
  /** The `event:` field, when the server named the event (`error` on some servers). */
  event: string | undefined;
  data: string;
}

export class SseParser {
  private buffer = '';
  private dataLines: string[] = [];
  private eventType: string | undefined;
  private started = false;

  /** Feeds a piece of the stream; returns the events it completed. */
  push(text: string): SseEvent[] {
    let input = text;
    if (!this.started && input.length > 0) {
      this.started = true;
      if (input.charCodeAt(0) === 0xfeff) input = input.slice(1);
    }
    this.buffer += input;
    const events: SseEvent[] = [];
    let start = 0;
    for (;;) {
      let end = start;
      while (end < this.buffer.length && this.buffer[end] !== '\n' && this.buffer[end] !== '\r') end += 1;
      if (end >= this.buffer.length) break;
      // A lone `\r` at the end may be the first half of `\r\n`: wait for the next piece.
      if (this.buffer[end] === '\r' && end === this.buffer.length - 1) break;
      const line = this.buffer.slice(start, end);
      start = end + (this.buffer[end] === '\r' && this.buffer[end + 1] === '\n' ? 2 : 1);
      const event = this.processLine(line);
      if (event !== undefined) events.push(event);
    }
    this.buffer = this.buffer.slice(start);
    return events;
  }

  /**
   * The stream has ended: an event still being collected is returned as well (the spec would drop it,
   * but servers that close right after `data: [DONE]\n` are common enough to be lenient).
   */
  finish(): SseEvent[] {
    const events: SseEvent[] = [];
    if (this.buffer.length > 0) {
      const line = this.buffer.endsWith('\r') ? this.buffer.slice(0, -1) : this.buffer;
      this.buffer = '';
      const event = this.processLine(line);
      if (event !== undefined) events.push(event);
    }
    const last = this.dispatch();
    if (last !== undefined) events.push(last);
    return events;
  }

  private processLine(line: string): SseEvent | undefined {
    if (line === '') return this.dispatch();
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.dataLines.push(value);
    else if (field === 'event') this.eventType = value;
    return undefined;
  }

  private dispatch(): SseEvent | undefined {
    const data = this.dataLines.join('\n');
    const event = this.eventType;
    this.dataLines = [];
    this.eventType = undefined;
    if (data.trim() === '') return undefined;
    return { event, data };
  }
}
