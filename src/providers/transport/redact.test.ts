import { test } from 'node:test';
import assert from 'node:assert/strict';
import { redact } from './redact.js';

test('redact: removes the configured secrets wherever they appear', () => {
  const key = 'my-very-private-key-123';
  assert.equal(redact(`bad key ${key} (was ${key})`, [key]), 'bad key [redacted] (was [redacted])');
});

test('redact: secrets with regular-expression characters are matched literally', () => {
  assert.equal(redact('token a.b*c+d? leaked', ['a.b*c+d?']), 'token [redacted] leaked');
  assert.equal(redact('aXbXcXd stays', ['a.b.c.d']), 'aXbXcXd stays');
});

test('redact: Bearer tokens, sk- keys (whole or masked) and "API key provided: …" values', () => {
  assert.equal(redact('got Authorization: Bearer abc.def-123'), 'got Authorization: Bearer [redacted]');
  assert.equal(redact('key sk-proj-AbCdEf0123456789 is wrong'), 'key [redacted] is wrong');
  assert.equal(redact('Incorrect API key provided: sk-abc***********wxyz.'), 'Incorrect API key provided: [redacted]');
  assert.equal(
    redact('Incorrect API key provided: hunter2-not-sk. See docs'),
    'Incorrect API key provided: [redacted] See docs',
  );
});

test('redact: ordinary messages are left alone', () => {
  const message = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9021 tokens.";
  assert.equal(redact(message, ['sk-test-key', undefined]), message);
  assert.equal(redact('the task is done', ['ta']), 'the task is done', 'too-short secrets are not searched for');
});

test('redact: a secret that contains another is removed whole', () => {
  assert.equal(redact('value: abcd-efgh-ijkl', ['abcd', 'abcd-efgh-ijkl']), 'value: [redacted]');
});
