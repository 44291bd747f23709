import type { NatsConnection } from '@nats-io/nats-core';

/**
 * Whether a message of `body` plus `headerBytes` of encoded headers fits the server's max_payload
 * (nats.js refuses a larger publish with an exception). A UTF-8 byte is at most three UTF-16 code
 * units' worth, so a body short enough in characters is measured without encoding it.
 */
export function fitsMaxPayload(connection: NatsConnection, body: string, headerBytes: number): boolean {
  const maxPayload = connection.info?.max_payload;
  if (maxPayload === undefined) return true;
  if (body.length * 3 + headerBytes <= maxPayload) return true;
  return Buffer.byteLength(body) + headerBytes <= maxPayload;
}
