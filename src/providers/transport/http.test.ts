import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Agent } from 'undici';
import { providerSecrets, resolveEndpoint } from './http.js';

test('endpoint: the base URL path is kept as a prefix, trailing slashes dropped', () => {
  assert.deepEqual(resolveEndpoint('https://api.openai.com/v1', '/chat/completions'), {
    origin: 'https://api.openai.com',
    path: '/v1/chat/completions',
  });
  assert.deepEqual(resolveEndpoint('https://api.deepseek.com/v1/', '/chat/completions'), {
    origin: 'https://api.deepseek.com',
    path: '/v1/chat/completions',
  });
  assert.deepEqual(resolveEndpoint('http://localhost:11434', '/api/chat'), {
    origin: 'http://localhost:11434',
    path: '/api/chat',
  });
  assert.deepEqual(resolveEndpoint('http://gw.local/openai/v1?api-version=2024', '/chat/completions'), {
    origin: 'http://gw.local',
    path: '/openai/v1/chat/completions?api-version=2024',
  });
  assert.deepEqual(
    resolveEndpoint(
      'https://r.openai.azure.com?x=1',
      '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21',
    ),
    {
      origin: 'https://r.openai.azure.com',
      path: '/openai/deployments/gpt-4o/chat/completions?x=1&api-version=2024-10-21',
    },
  );
});

test('secrets: the API key and the values of secret-looking configured headers, not ordinary ones', async () => {
  const dispatcher = new Agent();
  try {
    const secrets = providerSecrets({
      name: 'azure',
      type: 'openai',
      baseUrl: 'https://x.example/v1',
      apiKey: 'key-one',
      headers: {
        'api-key': 'key-two',
        Authorization: 'Bearer key-three',
        'X-Custom-Token': 'key-four',
        'OpenAI-Organization': 'org-1',
      },
      dispatcher,
    });
    for (const secret of ['key-one', 'key-two', 'Bearer key-three', 'key-three', 'key-four'])
      assert.ok(secrets.includes(secret), secret);
    assert.ok(!secrets.includes('org-1'));
  } finally {
    await dispatcher.close();
  }
});
