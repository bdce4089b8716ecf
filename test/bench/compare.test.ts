/** The comparison's round order with --baseline: each pair alternates which build runs first. */

import assert from 'node:assert/strict';
import { it } from 'node:test';
import { twinsSwapped } from '../../bench/compare';

const live = (...names: string[]) => names.map((name) => ({ target: { name } }));
const names = (xs: Array<{ target: { name: string } }>) => xs.map((x) => x.target.name);

it('every other round runs each --baseline twin before its target, and nothing else moves', () => {
  const order = live('direct', 'mcmux1', 'mcmux1@base', 'twemproxy', 'mcmux2', 'mcmux2@base');
  assert.deepEqual(names(twinsSwapped(order)), ['direct', 'mcmux1@base', 'mcmux1', 'twemproxy', 'mcmux2@base', 'mcmux2']);
  assert.deepEqual(names(order), ['direct', 'mcmux1', 'mcmux1@base', 'twemproxy', 'mcmux2', 'mcmux2@base']);
  assert.deepEqual(names(twinsSwapped(live('direct', 'mcmux1', 'mcmux2'))), ['direct', 'mcmux1', 'mcmux2']);
  // A twin whose target failed to start has no pair: it stays where it is.
  assert.deepEqual(names(twinsSwapped(live('direct', 'mcmux1@base', 'mcmux2'))), ['direct', 'mcmux1@base', 'mcmux2']);
});
