import type { NatsConnection } from '@nats-io/nats-core';

/**
 * The JetStream domain a connection's JetStream and KV calls go to (`nats.jetstream_domain`, else
 * `NATS_JETSTREAM_DOMAIN`): on a leaf node without JetStream of its own, the hub's domain (`hub` in
 * deploy/nats/hub.conf), so that usage streams, limits, keys and the cache live on the hub without the
 * leaf server's `default_js_domain`. Remembered per connection when it is made (connect.ts), and read
 * by every `jetstream()` / `jetstreamManager()` call through `jsOptions`.
 */
const domains = new WeakMap<NatsConnection, string>();

export function rememberJetStreamDomain(connection: NatsConnection, domain: string | undefined): NatsConnection {
  if (domain !== undefined && domain !== '') domains.set(connection, domain);
  return connection;
}

/** `{ domain }` for this connection's JetStream calls, or `{}` (the connection's own account's JetStream). */
export function jsOptions(connection: NatsConnection): { domain?: string } {
  const domain = domains.get(connection);
  return domain === undefined ? {} : { domain };
}
