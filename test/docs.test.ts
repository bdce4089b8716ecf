/** The docs are part of the work: every config key is documented, and the example file loads. */

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { loadConfig } from '../src/cli';
import { SCALAR_KEYS } from '../src/config';

const root = join(__dirname, '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');
const example = readFileSync(join(root, 'config.example.toml'), 'utf8');

it('README and config.example.toml document every key', () => {
  for (const key of Object.keys(SCALAR_KEYS)) {
    assert.ok(readme.includes(`\`--${key}\``), `README lacks --${key}`);
    assert.ok(new RegExp(`^#? ?${key} = `, 'm').test(example), `config.example.toml lacks ${key}`);
  }
});

it('config.example.toml loads, and its documented defaults are the real defaults', () => {
  const { config } = loadConfig(['--config', join(root, 'config.example.toml')]);
  assert.equal(config.upstreams.length, 2);
  const fromDefaults = loadConfig([]).config;
  const { upstreams: _a, ...rest } = config;
  const { upstreams: _b, ...defaults } = fromDefaults;
  assert.deepEqual(rest, defaults);
});
