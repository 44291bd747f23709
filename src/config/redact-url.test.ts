import { test } from 'node:test';
import assert from 'node:assert/strict';
import { redactUrl } from './redact-url.js';

test('passwords in user info and credential query parameters are masked; the rest of the URL stays', () => {
  assert.equal(redactUrl('https://user:pa55word@llm.example.com/v1'), 'https://user:***@llm.example.com/v1');
  assert.equal(
    redactUrl('https://gen.example.com/v1beta?key=AIza-secret&alt=sse'),
    'https://gen.example.com/v1beta?key=***&alt=sse',
  );
  assert.equal(redactUrl('http://localhost:11434'), 'http://localhost:11434/');
  assert.equal(redactUrl('https://tok3n-only@host/v1'), 'https://***@host/v1');
  assert.equal(redactUrl('not a url://user:pw@host'), 'not a url://***@host');
});
