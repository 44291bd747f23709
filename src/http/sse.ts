import type { ServerResponse } from 'node:http';

/**
 * One Server-Sent Events response. Opened lazily (`open`), so that an error found before the first
 * chunk can still be answered as a plain JSON error with its status; then heartbeats (SSE comments,
 * ignored by every client) whenever nothing was written for `heartbeatMs`, so that proxies and load
 * balancers keep an idle connection open while the model thinks.
 */
export class SseResponse {
  #opened = false;
  #ended = false;
  #lastWrite = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly raw: ServerResponse,
    private readonly heartbeatMs: number,
  ) {}

  get opened(): boolean {
    return this.#opened;
  }

  open(headers: Record<string, string> = {}): void {
    if (this.#opened) return;
    this.#opened = true;
    this.raw.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      // nginx and others buffer responses unless told not to.
      'x-accel-buffering': 'no',
      ...headers,
    });
    this.#lastWrite = Date.now();
    const tick = Math.max(50, Math.floor(this.heartbeatMs / 2));
    this.#timer = setInterval(() => {
      if (Date.now() - this.#lastWrite >= this.heartbeatMs) this.write(': keep-alive\n\n');
    }, tick);
    this.#timer.unref();
  }

  /** Writes SSE text as it is (`data: …\n\n`, `event: …\ndata: …\n\n`). */
  write(text: string): void {
    if (this.#ended || this.raw.destroyed) return;
    this.#lastWrite = Date.now();
    this.raw.write(text);
  }

  /** One event: an optional name and a JSON data line. */
  event(data: unknown, name?: string): void {
    this.write(`${name === undefined ? '' : `event: ${name}\n`}data: ${JSON.stringify(data)}\n\n`);
  }

  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    if (!this.raw.destroyed) this.raw.end();
  }
}
