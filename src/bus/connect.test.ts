import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { NatsConnection } from '@nats-io/nats-core';
import { natsSchema } from '../config/schema.js';
import { connectionOptions, DEFAULT_NATS_URL } from './connect.js';
import { inboxPrefixOf } from './inbox.js';

test('defaults: NATS_URL else the local server; reconnect forever with jitter; a connection name', () => {
  const defaults = connectionOptions({ env: {} });
  assert.deepEqual(defaults.servers, [DEFAULT_NATS_URL]);
  assert.equal(defaults.maxReconnectAttempts, -1);
  assert.ok((defaults.reconnectJitter ?? 0) > 0);
  assert.match(String(defaults.name), /^llm-proxy/);
  assert.deepEqual(connectionOptions({ env: { NATS_URL: 'nats://a:4222, nats://b:4222' } }).servers, [
    'nats://a:4222',
    'nats://b:4222',
  ]);
});

test('credentials from the usual variables, or from the variables the config names', () => {
  const usual = connectionOptions({ env: { NATS_USER: 'u', NATS_PASSWORD: 'p', NATS_TOKEN: 't' } });
  assert.equal(usual.user, 'u');
  assert.equal(usual.pass, 'p');
  assert.equal(usual.token, 't');
  const named = connectionOptions({
    env: { MY_USER: 'mu', MY_PASS: 'mp', NATS_USER: 'ignored' },
    nats: { user_env: 'MY_USER', password_env: 'MY_PASS' },
  });
  assert.equal(named.user, 'mu');
  assert.equal(named.pass, 'mp');
  const tls = connectionOptions({ env: {}, nats: { tls: { ca_file: '/ca.pem' }, creds_file: '/x.creds' } });
  assert.deepEqual(tls.tls, { caFile: '/ca.pem' });
  assert.ok(tls.authenticator !== undefined);
});

test('TLS: a CA alone checks the server, a certificate and key make it mutual; config files win over NATS_CA/CERT/KEY', () => {
  assert.equal(connectionOptions({ env: {} }).tls, undefined);
  assert.deepEqual(connectionOptions({ env: { NATS_CA: '/env/ca.pem' } }).tls, { caFile: '/env/ca.pem' });
  const mutual = { NATS_CA: '/env/ca.pem', NATS_CERT: '/env/client.pem', NATS_KEY: '/env/client-key.pem' };
  assert.deepEqual(connectionOptions({ env: mutual }).tls, {
    caFile: '/env/ca.pem',
    certFile: '/env/client.pem',
    keyFile: '/env/client-key.pem',
  });
  assert.deepEqual(connectionOptions({ env: mutual, nats: { tls: { ca_file: '/cfg/ca.pem' } } }).tls, {
    caFile: '/cfg/ca.pem',
    certFile: '/env/client.pem',
    keyFile: '/env/client-key.pem',
  });
  // An empty tls section: TLS with the system's CAs.
  assert.deepEqual(connectionOptions({ env: {}, nats: { tls: {} } }).tls, {});
  assert.throws(() => connectionOptions({ env: { NATS_CERT: '/env/client.pem' } }), /needs its key/);
  assert.throws(() => connectionOptions({ env: {}, nats: { tls: { key_file: '/cfg/client-key.pem' } } }), /needs its/);
});

test('inbox prefix from nats.inbox_prefix, else NATS_INBOX_PREFIX; the schema refuses a wildcard', () => {
  assert.equal(connectionOptions({ env: {} }).inboxPrefix, undefined);
  assert.equal(connectionOptions({ env: { NATS_INBOX_PREFIX: '_INBOX.worker' } }).inboxPrefix, '_INBOX.worker');
  assert.equal(
    connectionOptions({ env: { NATS_INBOX_PREFIX: '_INBOX.worker' }, nats: { inbox_prefix: '_INBOX.agent-sofia' } })
      .inboxPrefix,
    '_INBOX.agent-sofia',
  );
  assert.equal(natsSchema.parse({ inbox_prefix: '_INBOX.agent-sofia' }).inbox_prefix, '_INBOX.agent-sofia');
  for (const bad of ['_INBOX.>', '_INBOX.*', '_INBOX.', 'a b', ''])
    assert.equal(natsSchema.safeParse({ inbox_prefix: bad }).success, false, bad);
});

test('inboxPrefixOf reads the prefix a nats.js connection was opened with', () => {
  const connection = (options: Record<string, unknown>) => ({ options }) as unknown as NatsConnection;
  assert.equal(inboxPrefixOf(connection({ inboxPrefix: '_INBOX.ops' })), '_INBOX.ops');
  assert.equal(inboxPrefixOf(connection({})), undefined);
  assert.equal(inboxPrefixOf(connection({ inboxPrefix: '' })), undefined);
});
