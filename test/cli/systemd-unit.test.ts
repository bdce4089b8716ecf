/**
 * systemd/mcmux.service: the directives operators rely on, `systemd-analyze verify` without a
 * single warning, and the contract of its ExecReload (SIGHUP reloads, never kills).
 */

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { NODE_FLAGS } from '../../src/node-flags';
import { END, MCMUX_BIN, eventually, rawClient, startMcmux } from '../helpers/mcmux';
import { freePort, requireBinary } from '../helpers/servers';

const UNIT = resolve(MCMUX_BIN, '../../systemd/mcmux.service');
const INSTALLED_BIN = '/opt/mcmux/bin/mcmux';

/** `[Section]` -> key -> values (a key may repeat). */
function parseUnit(text: string): Map<string, Map<string, string[]>> {
  const sections = new Map<string, Map<string, string[]>>();
  let current: Map<string, string[]> | undefined;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[(.+)\]$/.exec(line);
    if (section) {
      current = new Map();
      sections.set(section[1] as string, current);
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(current && eq > 0, `not a unit-file line: ${raw}`);
    const key = line.slice(0, eq).trim();
    current.set(key, [...(current.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return sections;
}

function verify(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((res) => {
    execFile('systemd-analyze', ['verify', file], { timeout: 30_000, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      res({ code, stdout, stderr });
    });
  });
}

test('systemd/mcmux.service has the directives it promises', async () => {
  const unit = parseUnit(await readFile(UNIT, 'utf8'));
  const service = unit.get('Service');
  assert.ok(service, '[Service] section');
  const expected: Record<string, string> = {
    Type: 'simple',
    ExecStart: `/usr/bin/env node ${NODE_FLAGS.join(' ')} ${INSTALLED_BIN} --config /etc/mcmux/config.toml`,
    ExecReload: '/bin/kill -HUP $MAINPID',
    Restart: 'always',
    RestartPreventExitStatus: '2',
    DynamicUser: 'yes',
    StateDirectory: 'mcmux',
    ProtectSystem: 'strict',
    ProtectHome: 'yes',
    NoNewPrivileges: 'yes',
    PrivateTmp: 'yes',
    RestrictAddressFamilies: 'AF_INET AF_INET6 AF_UNIX AF_NETLINK',
    LimitNOFILE: '65536',
  };
  for (const [key, value] of Object.entries(expected)) {
    assert.deepEqual(service.get(key), [value], `[Service] ${key}=`);
  }
  assert.ok(unit.get('Install')?.get('WantedBy')?.includes('multi-user.target'), '[Install] WantedBy=multi-user.target');
});

test('systemd-analyze verify accepts the unit without a warning', async (t) => {
  if (!requireBinary(t, 'systemd-analyze', 'systemd')) return;
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-unit-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const text = await readFile(UNIT, 'utf8');
  assert.ok(text.includes(INSTALLED_BIN));
  // verify checks that ExecStart's program exists: point the copy at this checkout.
  const config = join(dir, 'config.toml');
  await writeFile(config, 'listen = "127.0.0.1:11211"\n');
  const copy = join(dir, 'mcmux.service');
  await writeFile(copy, text.replaceAll(INSTALLED_BIN, MCMUX_BIN).replaceAll('/etc/mcmux/config.toml', config));

  const r = await verify(copy);
  assert.equal(r.code, 0, `systemd-analyze verify: ${r.stderr}`);
  // verify exits 0 for a directive it ignores: any line on stderr is a problem.
  assert.equal(r.stderr.trim(), '', 'systemd-analyze verify printed warnings');

  await t.test('control: verify does report a broken copy', async () => {
    const broken = join(dir, 'broken.service');
    await writeFile(broken, (await readFile(copy, 'utf8')).replace('Restart=always', 'Restart=sometimes'));
    const b = await verify(broken);
    assert.match(b.stderr, /sometimes/);
  });
});

test('ExecReload: SIGHUP reloads the config file and does not stop mcmux', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mcmux-reload-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const port = await freePort();
  const config = join(dir, 'config.toml');
  const write = (allowFlush: boolean): Promise<void> =>
    writeFile(config, `listen = "127.0.0.1:${port}"\nallow-flush = ${allowFlush}\n\n[[upstream]]\nurl = "memory://"\n`);
  await write(false);
  const mux = await startMcmux(['--config', config], { port });
  t.after(() => mux.stop());
  const c = await rawClient(port);
  t.after(() => c.close());
  assert.equal(await c.ask('set k 0 0 1\r\nx\r\n'), 'STORED\r\n');
  assert.match(await c.ask('flush_all\r\n'), /^SERVER_ERROR /);

  await write(true);
  mux.proc.kill('SIGHUP');
  // The reload is asynchronous to us: poll for its effect (flush_all accepted), bounded.
  await eventually('flush_all accepted after the reload', async () => {
    assert.equal(mux.proc.exitCode, null, `mcmux exited on SIGHUP; stderr ${mux.logs().stderr}`);
    const reply = await c.ask('flush_all\r\n');
    return reply === 'OK\r\n';
  });
  // Same process, same client connection, still serving.
  assert.equal(mux.proc.exitCode, null);
  assert.equal(await c.ask('get k\r\n', END), 'END\r\n', 'the flush went through');
  assert.equal(await c.ask('set k 0 0 1\r\ny\r\n'), 'STORED\r\n');
});
