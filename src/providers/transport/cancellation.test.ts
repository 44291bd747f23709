import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Pool } from 'undici';
import { Cancellation, type AbortEvent } from './cancellation.js';

describe('Cancellation', () => {
  test('abort calls each listener once, in the order added, functions and handleEvent objects alike', () => {
    const cancellation = new Cancellation();
    const calls: string[] = [];
    const object = { handleEvent: (event: AbortEvent) => calls.push(`object:${event.type}`) };
    cancellation.addEventListener('abort', () => calls.push('first'));
    cancellation.addEventListener('abort', object);
    cancellation.addEventListener('abort', object); // the same listener twice is one
    cancellation.abort('why');
    cancellation.abort('again');
    assert.deepEqual(calls, ['first', 'object:abort']);
    assert.equal(cancellation.aborted, true);
    assert.equal(cancellation.reason, 'why');
  });

  test('a removed listener is not called; one added after the abort is never called', () => {
    const cancellation = new Cancellation();
    let called = 0;
    const listener = () => called++;
    cancellation.addEventListener('abort', listener);
    cancellation.removeEventListener('abort', listener);
    cancellation.abort(new Error('x'));
    cancellation.addEventListener('abort', listener);
    assert.equal(called, 0);
  });

  test('no reason given: an AbortError, as AbortController gives', () => {
    const cancellation = new Cancellation();
    assert.equal(cancellation.aborted, false);
    assert.equal(cancellation.reason, undefined);
    cancellation.abort();
    const reason: unknown = Reflect.get(cancellation, 'reason');
    assert.ok(reason instanceof DOMException);
    assert.equal(reason.name, 'AbortError');
    assert.equal(cancellation.signal, cancellation);
  });

  test('a throwing listener does not stop the others; its error surfaces as an uncaught exception', async () => {
    const cancellation = new Cancellation();
    const seen: unknown[] = [];
    const onUncaught = (error: unknown) => seen.push(error);
    const listeners = process.listeners('uncaughtException');
    process.removeAllListeners('uncaughtException');
    process.on('uncaughtException', onUncaught);
    try {
      let second = false;
      cancellation.addEventListener('abort', () => {
        throw new Error('listener broke');
      });
      cancellation.addEventListener('abort', () => (second = true));
      cancellation.abort('stop');
      assert.equal(second, true);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal((seen[0] as Error).message, 'listener broke');
    } finally {
      process.removeListener('uncaughtException', onUncaught);
      for (const listener of listeners) process.on('uncaughtException', listener);
    }
  });

  test('undici takes it as a request signal: an abort mid-request ends the call with its reason, and the server sees the connection close', async () => {
    let closed!: () => void;
    const serverSawClose = new Promise<void>((resolve) => (closed = resolve));
    const server: Server = createServer((request) => {
      // Never answers; tells us when the client goes away.
      request.socket.once('close', () => closed());
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const pool = new Pool(`http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    try {
      const cancellation = new Cancellation();
      const call = pool.request({
        method: 'POST',
        path: '/v1/chat/completions',
        body: '{}',
        signal: cancellation.signal as AbortSignal,
      });
      setTimeout(() => cancellation.abort(new Error('gave up')), 50);
      await assert.rejects(call, /gave up/);
      await serverSawClose;
    } finally {
      await pool.close();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
