import { test } from 'node:test';
import assert from 'node:assert/strict';
import { headers as createHeaders } from '@nats-io/nats-core';
import { CallerCheck, contradiction, withKeyIdentity } from './caller.js';
import { hashKey, KEY_ID_PATTERN, keyMatches, newKey, newKeyId, parseKey } from './key-format.js';
import { keyRecordSchema, keyStanding, type KeyRecord } from './key-record.js';
import { SecretCheck } from './secret.js';

const record = (overrides: Partial<KeyRecord> = {}): KeyRecord =>
  keyRecordSchema.parse({
    v: 1,
    id: 'abcDEF012345',
    hash: hashKey('x'),
    agent_id: 'agent:sofia',
    microdao_id: 'microdao:7',
    models: null,
    limits: {},
    created_at: '2026-12-01T00:00:00.000Z',
    expires_at: null,
    revoked_at: null,
    note: null,
    previous: [],
    ...overrides,
  });

test('keys: prefix, id and check characters; a typo or a look-alike is told apart without the store', () => {
  const id = newKeyId();
  assert.match(id, KEY_ID_PATTERN);
  const key = newKey(id);
  assert.match(key, /^llmp_[0-9A-Za-z]{12}_[0-9A-Za-z]{46}$/);
  assert.equal(parseKey(key), id);
  assert.notEqual(newKey(id), key, 'random secrets');
  // Every single-character change of the secret is caught by the check characters (CRC-32).
  let caught = 0;
  for (let index = 18; index < key.length; index++) {
    const changed = key.slice(0, index) + (key[index] === 'a' ? 'b' : 'a') + key.slice(index + 1);
    if (parseKey(changed) === undefined) caught++;
  }
  assert.equal(caught, key.length - 18);
  for (const bad of ['', 'llmp_', `${key} `, ` ${key}`, key.toUpperCase(), `${key}0`, key.slice(0, -1), 'sk-abc']) {
    assert.equal(parseKey(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(keyMatches(key, hashKey(key)), true);
  assert.equal(keyMatches(newKey(id), hashKey(key)), false);
  assert.equal(keyMatches(key, 'not-hex'), false);
});

test('a key record stands active, expired or revoked', () => {
  const now = Date.parse('2026-12-02T00:00:00Z');
  assert.equal(keyStanding(record(), now), 'active');
  assert.equal(keyStanding(record({ expires_at: '2026-12-01T23:59:59.000Z' }), now), 'expired');
  assert.equal(keyStanding(record({ expires_at: '2026-12-03T00:00:00.000Z' }), now), 'active');
  assert.equal(keyStanding(record({ revoked_at: '2026-12-01T00:00:00.000Z' }), now), 'revoked');
  assert.throws(() => record({ id: 'short' }));
});

test('metadata contradicting the key is named; agreeing or absent metadata takes the key identity, tags kept', () => {
  const key = record();
  assert.equal(contradiction(key, undefined), undefined);
  assert.equal(contradiction(key, { agent_id: 'agent:sofia', microdao_id: 'microdao:7' }), undefined);
  assert.match(contradiction(key, { agent_id: 'agent:bob' }) ?? '', /metadata.agent_id "agent:bob" is not the agent/);
  assert.match(contradiction(key, { microdao_id: 'microdao:8' }) ?? '', /is not the microDAO/);
  assert.match(
    contradiction(record({ microdao_id: null }), { microdao_id: 'microdao:8' }) ?? '',
    /belongs to no microDAO/,
  );
  const tagged: Record<string, string> = { channel_id: 'c', team: 'blue' };
  assert.deepEqual(withKeyIdentity(tagged, key), {
    channel_id: 'c',
    team: 'blue',
    agent_id: 'agent:sofia',
    microdao_id: 'microdao:7',
  });
  assert.deepEqual(withKeyIdentity(undefined, record({ microdao_id: null })), { agent_id: 'agent:sofia' });
});

test('secret mode ignores Authorization; keys mode needs a key, with a named refusal for each bad header', () => {
  const secret = new SecretCheck('s3cret');
  const headers = (entries: Record<string, string>) => {
    const result = createHeaders();
    for (const [name, value] of Object.entries(entries)) result.set(name, value);
    return result;
  };
  const bySecret = new CallerCheck({ mode: 'secret', secret });
  assert.equal(
    (bySecret.identify(headers({ 'X-Internal-Secret': 's3cret' })) as { refusal?: string }).refusal,
    undefined,
  );
  assert.match(
    (bySecret.identify(headers({ Authorization: `Bearer ${newKey(newKeyId())}` })) as { refusal: string }).refusal,
    /missing or wrong X-Internal-Secret/,
  );
  assert.throws(() => new CallerCheck({ mode: 'keys', secret }), /needs the key store/);
});
