/** makeDirs: mkdir -p that always returns (Node 20's recursive mkdirSync loops under /proc). */

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { makeDirs } from '../src/make-dirs';

const root = mkdtempSync(join(tmpdir(), 'mcmux-make-dirs-'));
after(() => rmSync(root, { recursive: true, force: true }));

it('makes every missing level with the mode, and accepts one that exists', () => {
  const deep = join(root, 'a', 'b', 'c');
  makeDirs(deep, 0o700);
  for (const d of [join(root, 'a'), join(root, 'a', 'b'), deep]) {
    assert.ok(statSync(d).isDirectory(), d);
    assert.equal(statSync(d).mode & 0o777, 0o700, d); // no umask clears owner bits
  }
  makeDirs(deep, 0o700);
  makeDirs(`${deep}/./../c/`, 0o700);
});

it('fails with the reason: a file in the way, or a place where nothing can be made', () => {
  const file = join(root, 'file');
  writeFileSync(file, '');
  assert.throws(() => makeDirs(file, 0o700), { code: 'EEXIST' });
  assert.throws(() => makeDirs(join(file, 'x', 'y'), 0o700), { code: 'ENOTDIR' });
  // Where mkdirSync(..., { recursive: true }) never returned.
  assert.throws(() => makeDirs('/proc/mcmux-none/x', 0o700), { code: 'ENOENT' });
});
