/**
 * README stays true: its configuration example is a valid config file, the
 * repo's config.yaml loads, and every CLI command has its row in README.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { loadConfigFile, parseConfigText } from '../src/config/index.js';
import { PROVIDER_ADAPTERS, unknownProviderTypes } from '../src/providers/registry.js';
import { REPO_ROOT } from './helpers/worker.js';

const readme = readFileSync(new URL('README.md', `file://${REPO_ROOT}`), 'utf8');

test("README's configuration example validates, with every section present", () => {
  const match = /## Configuration[\s\S]*?```yaml\n([\s\S]*?)```/.exec(readme);
  assert.ok(match, 'README has a yaml block under "## Configuration"');
  const config = parseConfigText(match[1]!, 'README.md', {});
  for (const section of ['routing', 'limits', 'worker', 'nats', 'cache', 'logging', 'aggregator'] as const) {
    assert.ok(config[section] !== undefined, section);
  }
  assert.equal(config.providers.get('local')?.type, 'ollama');
  assert.equal(config.models.get('llama-70b')?.deployments.length, 2);
});

test('every registered provider type has its row in the provider table; the services example validates', () => {
  const section = /### Providers([\s\S]*?)\n## /.exec(readme)?.[1] ?? '';
  for (const type of Object.keys(PROVIDER_ADAPTERS)) assert.match(section, new RegExp(`\\n\\| \`${type}\` \\|`), type);
  const example = /```yaml\n([\s\S]*?)```/.exec(section);
  assert.ok(example, 'a yaml block of provider entries');
  const config = parseConfigText(example[1]!, 'README.md (providers)', {});
  assert.deepEqual(unknownProviderTypes(config), []);
  for (const [name, base] of [
    ['groq', 'https://api.groq.com/openai/v1'],
    ['mistral', 'https://api.mistral.ai/v1'],
    ['together', 'https://api.together.ai/v1'],
    ['fireworks', 'https://api.fireworks.ai/inference/v1'],
    ['openrouter', 'https://openrouter.ai/api/v1'],
    ['lmstudio', 'http://localhost:1234/v1'],
    ['llamacpp', 'http://localhost:8080/v1'],
  ] as const) {
    assert.equal(config.providers.get(name)?.base_url, base, name);
    assert.equal(config.providers.get(name)?.type, 'openai', name);
  }
  for (const model of config.models.values())
    assert.ok(config.providers.has(model.deployments[0]!.provider), model.name);
});

test("the repo's config.yaml loads and carries OpenAI, DeepSeek (chat and reasoner) and a local Ollama model", () => {
  const config = loadConfigFile(`${REPO_ROOT}config.yaml`, {});
  for (const model of ['gpt-4.1-mini', 'deepseek-chat', 'deepseek-reasoner', 'llama3.2'])
    assert.ok(config.models.has(model), model);
  assert.equal(config.providers.get('local')?.type, 'ollama');
});

test('every CLI command is in README with an example', () => {
  const commands = readdirSync(`${REPO_ROOT}src/cli/commands`)
    .filter((file) => file.endsWith('.ts') && !file.endsWith('.test.ts'))
    .map((file) => file.replace(/\.ts$/, ''));
  assert.ok(commands.length >= 9);
  for (const command of commands) {
    assert.match(
      readme,
      new RegExp(`\\| \`${command}\` \\|[^\\n]*\\| \`[^\`]*llm-proxy ${command}\\b[^\`]*\` \\|`),
      command,
    );
  }
  assert.match(readme, /npm test/);
});
