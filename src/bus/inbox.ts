import type { NatsConnection } from '@nats-io/nats-core';

/**
 * The inbox prefix a connection was opened with (nats.js's `inboxPrefix`; `nats.inbox_prefix` /
 * `NATS_INBOX_PREFIX` through connectionOptions), for inboxes made by hand:
 * `createInbox(inboxPrefixOf(connection))`. Under a NATS user allowed to subscribe only under its own
 * prefix (deploy/nats/nats-server.conf), an inbox under the default `_INBOX` is a permissions violation.
 */
export function inboxPrefixOf(connection: NatsConnection): string | undefined {
  // nats.js keeps its options on the connection object; the NatsConnection interface does not show them.
  const prefix = (connection as { options?: { inboxPrefix?: unknown } }).options?.inboxPrefix;
  return typeof prefix === 'string' && prefix !== '' ? prefix : undefined;
}
