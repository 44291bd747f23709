import { test } from 'node:test';
import assert from 'node:assert/strict';
import { headers as createHeaders } from '@nats-io/nats-core';
import { SecretCheck, secretFromEnv } from './secret.js';

const withHeader = (name: string, value: string | undefined) => {
  const headers = createHeaders();
  if (value !== undefined) headers.set(name, value);
  return headers;
};

test('secret check: constant-time on digests; no secret configured allows all', () => {
  const check = new SecretCheck('s3cret');
  assert.equal(check.enabled, true);
  assert.equal(check.allows(withHeader('X-Internal-Secret', 's3cret')), true);
  assert.equal(check.allows(withHeader('X-Internal-Secret', 's3cre')), false);
  assert.equal(check.allows(withHeader('X-Internal-Secret', 'S3cret')), false);
  assert.equal(check.allows(withHeader('X-Internal-Secret', '')), false);
  assert.equal(check.allows(withHeader('X-Internal-Secret', undefined)), false);
  assert.equal(check.allows(undefined), false);
  assert.equal(new SecretCheck(undefined).allows(undefined), true);
  assert.equal(new SecretCheck('').enabled, false);
});

test('the header name matches in any case, as in HTTP; the value does not', () => {
  const check = new SecretCheck('s3cret');
  for (const name of ['x-internal-secret', 'X-INTERNAL-SECRET', 'x-Internal-SECRET']) {
    assert.equal(check.allows(withHeader(name, 's3cret')), true, name);
    assert.equal(check.allows(withHeader(name, 'S3CRET')), false, name);
  }
  assert.equal(check.allows(withHeader('X-Internal-Secrets', 's3cret')), false);
});

test('LLM_PROXY_SECRET: unset means no secret; set but empty is refused, not read as "no auth"', () => {
  assert.equal(secretFromEnv({}), undefined);
  assert.equal(secretFromEnv({ LLM_PROXY_SECRET: 's3cret' }), 's3cret');
  assert.throws(() => secretFromEnv({ LLM_PROXY_SECRET: '' }), /LLM_PROXY_SECRET is set but empty/);
  assert.throws(() => secretFromEnv({ LLM_PROXY_SECRET: '  ' }), /LLM_PROXY_SECRET is set but empty/);
});
