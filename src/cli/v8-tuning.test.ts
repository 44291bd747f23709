import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pretenuringChosenByOperator, tuneV8ForWorker } from './v8-tuning.js';

test('pretenuring: the operator choice on the command line or in NODE_OPTIONS is kept', () => {
  assert.equal(pretenuringChosenByOperator([], undefined), false);
  assert.equal(pretenuringChosenByOperator(['--max-old-space-size=512'], '--enable-source-maps'), false);
  assert.equal(pretenuringChosenByOperator(['--allocation-site-pretenuring'], undefined), true);
  assert.equal(pretenuringChosenByOperator([], '--enable-source-maps --no-allocation_site_pretenuring'), true);
  assert.deepEqual(tuneV8ForWorker(['--allocation-site-pretenuring'], undefined), []);
});

test('pretenuring: switched off otherwise (V8 takes the flag)', () => {
  assert.deepEqual(tuneV8ForWorker([], ''), ['--no-allocation-site-pretenuring']);
});
