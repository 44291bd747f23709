import type { ServerResponse } from 'node:http';

/**
 * One page's event stream: `event: <name>` + one JSON `data:` line per message, and an SSE comment
 * whenever nothing was written for `heartbeatMs`, so that proxies keep a quiet page connected. (The
 * front door's own SSE writer is in src/http; the page does not import the front door.)
 */
export class PageStream {
  #lastWrite = Date.now();
  #ended = false;
  readonly #timer: NodeJS.Timeout;

  constructor(
    private readonly raw: ServerResponse,
    heartbeatMs: number,
    headers: Record<string, string>,
  ) {
    raw.writeHead(200, {
      ...headers,
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store, no-transform',
      connection: 'keep-alive',
      // nginx and others buffer responses unless told not to.
      'x-accel-buffering': 'no',
    });
    this.#timer = setInterval(
      () => {
        if (Date.now() - this.#lastWrite >= heartbeatMs) this.write(': keep-alive\n\n');
      },
      Math.max(50, Math.floor(heartbeatMs / 2)),
    );
    this.#timer.unref();
  }

  /** Bytes written but not yet taken by the page's connection. */
  get buffered(): number {
    return this.raw.writableLength;
  }

  write(text: string): void {
    if (this.#ended || this.raw.destroyed) return;
    this.#lastWrite = Date.now();
    this.raw.write(text);
  }

  event(data: unknown, name: string): void {
    this.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  end(): void {
    if (this.#ended) return;
    this.#ended = true;
    clearInterval(this.#timer);
    if (!this.raw.destroyed) this.raw.end();
  }
}
