import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkClientIds, MAX_JSON_DEPTH, nestsDeeperThan } from './client-ids.js';
import { parseChatRequest } from './request.js';
import { agentToken, ANONYMOUS_TOKEN, MAX_AGENT_TOKEN_LENGTH, UNAUTHENTICATED_TOKEN } from './subjects.js';

const valid = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };

test('request_id: visible ASCII, 1-128 characters; anything else is refused naming the field, before the rest is looked at', () => {
  for (const requestId of ['a', 'req_01HZX-9f.3:4/5+6=7@8', '3f2b1c9e-0a4d-4c1e-9b7a-2d5e8f0c1a2b', 'x'.repeat(128)]) {
    const { ids, problem } = checkClientIds({ request_id: requestId });
    assert.equal(problem, undefined, requestId);
    assert.equal(ids.requestId, requestId);
    parseChatRequest({ ...valid, request_id: requestId });
  }
  for (const requestId of ['a\nb', 'a\rb', 'a b', '', 'x'.repeat(129), 'é', '\u0000', 42, null, '\ud800']) {
    const { ids, problem } = checkClientIds({ request_id: requestId, metadata: { agent_id: 'agent:sofia' } });
    assert.equal(problem?.code, 'invalid_request', JSON.stringify(requestId));
    assert.match(problem!.message, /^request_id: /);
    assert.equal(ids.requestId, undefined);
    assert.equal(ids.metadata?.agent_id, 'agent:sofia', 'the valid ids are still read, for the refusal event');
    assert.throws(() => parseChatRequest({ ...valid, request_id: requestId }), /request_id/);
  }
});

test('metadata ids and tags: bounded, no control characters or lone surrogates, at most 32 tags', () => {
  const ok = {
    agent_id: 'agent:sofia',
    microdao_id: 'microdao:7',
    channel_id: 'c-1',
    task: 'x',
    'emoji 🎉': 'ünïcødé ✓',
  };
  assert.equal(checkClientIds({ metadata: ok }).problem, undefined);
  assert.equal(checkClientIds({ metadata: ok }).ids.metadata, ok, 'a valid metadata object is used as it is');
  const refused: Array<[Record<string, unknown>, RegExp]> = [
    [{ agent_id: '€'.repeat(257) }, /metadata\.agent_id: must be 1-256/],
    [{ agent_id: '' }, /metadata\.agent_id/],
    [{ agent_id: 'a\nb' }, /metadata\.agent_id: contains a control character/],
    [{ agent_id: '\ud800' }, /lone surrogate/],
    [{ microdao_id: 7 }, /metadata\.microdao_id: must be a string/],
    [{ channel_id: 'a\u0085b' }, /metadata\.channel_id/],
    [{ task: 'v'.repeat(1025) }, /metadata\.task: must be 0-1024/],
    [{ task: 'a\u0000' }, /metadata\.task/],
    [{ ['k'.repeat(65)]: 'v' }, /tag name/],
    [{ 'a\nb': 'v' }, /tag name/],
    [Object.fromEntries(Array.from({ length: 33 }, (_, index) => [`t${index}`, 'v'])), /at most 32 tags/],
  ];
  for (const [metadata, message] of refused) {
    const { problem } = checkClientIds({ metadata: { agent_id: 'agent:sofia', ...metadata } });
    assert.match(problem?.message ?? 'accepted', message, JSON.stringify(metadata).slice(0, 80));
  }
  // What the schema says agrees for the per-value rules.
  assert.throws(() => parseChatRequest({ ...valid, metadata: { agent_id: 'a\nb' } }), /metadata\.agent_id/);
  assert.throws(() => parseChatRequest({ ...valid, metadata: { task: '\ud800' } }), /metadata\.task/);
  assert.equal(checkClientIds({ metadata: [] }).problem?.message, 'metadata: must be an object of strings');
  // A refused metadata object still names its valid ids (not its tags) for the refusal's event.
  assert.deepEqual(checkClientIds({ metadata: { agent_id: 'agent:sofia', task: 'a\u0000' } }).ids.metadata, {
    agent_id: 'agent:sofia',
  });
});

test('nesting depth is measured without recursion, objects and arrays alike', () => {
  let deep: unknown = 'leaf';
  for (let level = 0; level < 10_000; level++) deep = level % 2 === 0 ? { a: deep } : [deep];
  assert.equal(nestsDeeperThan(deep, MAX_JSON_DEPTH), true);
  let shallow: unknown = 1;
  for (let level = 0; level < MAX_JSON_DEPTH; level++) shallow = [shallow];
  assert.equal(nestsDeeperThan(shallow, MAX_JSON_DEPTH), false);
  assert.equal(nestsDeeperThan([shallow], MAX_JSON_DEPTH), true);
  assert.equal(nestsDeeperThan('text', 0), false);
});

test('agent tokens: one-to-one, reserved tokens unclaimable, bounded length', () => {
  assert.equal(agentToken('agent:sofia'), 'agent:sofia');
  assert.equal(agentToken('a.b'), 'a%2Eb');
  assert.equal(agentToken(undefined), ANONYMOUS_TOKEN);
  assert.equal(agentToken(''), ANONYMOUS_TOKEN);
  assert.equal(agentToken('anonymous'), '%61nonymous');
  assert.equal(agentToken('unauthenticated'), '%75nauthenticated');
  // U+FFFD and a lone surrogate used to share a token.
  assert.equal(agentToken('\ufffd'), '%EF%BF%BD');
  assert.equal(agentToken('\ud800'), '%uD800');
  const ids = [
    'agent:sofia',
    'a.b',
    'a%2Eb',
    'anonymous',
    '%61nonymous',
    'unauthenticated',
    '\ufffd',
    '\ud800',
    '\udc00',
    '€'.repeat(1_024),
    `${'€'.repeat(1_024)}x`,
    'x'.repeat(200),
    `${'x'.repeat(199)}y`,
    'x'.repeat(128),
    'x'.repeat(129),
    ...Array.from({ length: 200 }, (_, index) => `agent-${index}.${'ü'.repeat(index)}`),
  ];
  const tokens = ids.map((id) => agentToken(id));
  assert.equal(new Set(tokens).size, ids.length, 'no two ids share a token');
  for (const token of tokens) {
    assert.ok(token.length <= MAX_AGENT_TOKEN_LENGTH, token);
    assert.match(token, /^[A-Za-z0-9_:%~-]+$/);
    assert.notEqual(token, ANONYMOUS_TOKEN);
    assert.notEqual(token, UNAUTHENTICATED_TOKEN);
  }
  assert.equal(agentToken('x'.repeat(128)), 'x'.repeat(128));
  assert.match(
    agentToken('€'.repeat(1_024)),
    /^(%E2%82%AC){7}~[0-9a-f]{32}$/,
    'a long id keeps a readable prefix, never half an escape',
  );
});
