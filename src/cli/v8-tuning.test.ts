import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pretenuringChosenByOperator, tuneV8ForWorker } from './v8-tuning.js';

test('pretenuring: the operator choice on the command line or in NODE_OPTIONS is kept', () => {
  assert.equal(pretenuringChosenByOperator([], undefined), false);
  assert.equal(pretenuringChosenByOperator(['--max-old-space-size=512'], '--enable-source-maps'), false);
  assert.equal(pretenuringChosenByOperator(['--allocation-site-pretenuring'], undefined), true);
  assert.equal(pretenuringChosenByOperator([], '--enable-source-maps --no-allocation_site_pretenuring'), true);
  const given: string[] = [];
  assert.deepEqual(
    tuneV8ForWorker(['--allocation-site-pretenuring'], undefined, (flag) => given.push(flag)),
    [],
  );
  assert.deepEqual(given, [], 'V8 is told nothing');
});

test('pretenuring: switched off otherwise, by telling V8', () => {
  const given: string[] = [];
  assert.deepEqual(
    tuneV8ForWorker([], '', (flag) => given.push(flag)),
    ['--no-allocation-site-pretenuring'],
  );
  assert.deepEqual(given, ['--no-allocation-site-pretenuring']);
  // And V8 itself takes it (an unknown or malformed flag would be reported on stderr, not thrown).
  assert.deepEqual(tuneV8ForWorker([], ''), ['--no-allocation-site-pretenuring']);
});
