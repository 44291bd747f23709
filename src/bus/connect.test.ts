import { test } from 'node:test';
import assert from 'node:assert/strict';
import { connectionOptions, DEFAULT_NATS_URL } from './connect.js';

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
