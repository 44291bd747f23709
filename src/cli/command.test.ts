import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isPositiveInteger, parseCommandLine, parseNumberFlag, UsageError } from './command.js';

test('numeric flags: absent → undefined; a bad value is a UsageError naming the flag and the value', () => {
  assert.equal(parseNumberFlag('--timeout-ms', undefined, isPositiveInteger, 'a positive integer'), undefined);
  assert.equal(parseNumberFlag('--timeout-ms', '250', isPositiveInteger, 'a positive integer'), 250);
  for (const bad of ['', ' ', '0', '-5', '1.5', 'soon']) {
    assert.throws(
      () => parseNumberFlag('--timeout-ms', bad, isPositiveInteger, 'a positive integer'),
      (error: unknown) => {
        assert.ok(error instanceof UsageError);
        assert.equal(error.message, `--timeout-ms must be a positive integer, got "${bad}"`);
        return true;
      },
    );
  }
});

test('parseCommandLine turns an unknown option into a UsageError', () => {
  assert.throws(() => parseCommandLine({ args: ['--nope'], options: { json: { type: 'boolean' } } }), UsageError);
  assert.equal(parseCommandLine({ args: ['--json'], options: { json: { type: 'boolean' } } }).values.json, true);
});
